"""Training time per candidate (the ``train`` stage's tuning + cross-validation) at the default size and at 10x.

For each size and each candidate in params.yaml ``train.candidates``, ``pipeline.train.evaluate_candidate`` runs
with the ``train`` section as it is (search budget, folds, calibration choice, CV bootstrap, ``n_jobs``): random
or grid search by cross-validated log loss, out-of-fold predictions, calibration chosen by CV, CV metrics. The
final refit on the whole split and the MLflow logging of the stage are not included.

Data: the task's training split ``data/processed/<task>/train.parquet`` (written by the default pipeline), and
for the larger sizes that split resampled with replacement to N times its rows (seeded). Resampling keeps the
distribution and the number of features; duplicated rows make cross-validation optimistic, which does not
matter for timing.

    .venv/bin/python benchmarks/bench_train.py                          # 1x and 10x (~5 min on 2 cores)
    .venv/bin/python benchmarks/bench_train.py --multipliers 1 --candidates logreg,xgboost
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="acute")
    parser.add_argument("--multipliers", default="1,10", help="comma-separated multiples of the training split")
    parser.add_argument("--candidates", help="comma-separated subset of train.candidates (default: all)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO_ROOT))
    os.chdir(REPO_ROOT)

    import numpy as np  # noqa: PLC0415
    from joblib import Parallel, delayed  # noqa: PLC0415

    from pipeline.modelling.candidates import evaluate_candidate  # noqa: PLC0415
    from pipeline.modelling.training import load_training_inputs  # noqa: PLC0415
    from pipeline.stage import StageContext  # noqa: PLC0415

    inputs = load_training_inputs(StageContext.open(args.task))
    X, y, params, seed = inputs.X, inputs.y, inputs.params, inputs.seed
    multipliers = [int(m) for m in args.multipliers.split(",") if m.strip()]
    names = [n.strip() for n in args.candidates.split(",")] if args.candidates else list(params.candidates)
    # start the worker processes once, so that the first candidate does not pay for them
    Parallel(n_jobs=params.n_jobs)(delayed(abs)(i) for i in range(params.n_jobs))

    seconds: dict[tuple[str, int], float] = {}
    sizes: dict[int, int] = {}
    for multiplier in multipliers:
        if multiplier == 1:
            Xm, ym = X, y
        else:
            rows = np.random.default_rng(seed).integers(0, len(y), len(y) * multiplier)
            Xm, ym = X.iloc[rows].reset_index(drop=True), y[rows]
        sizes[multiplier] = len(ym)
        for name in names:
            started = time.perf_counter()
            result = evaluate_candidate(name, params.candidates[name], params, Xm, ym, seed=seed)
            seconds[(name, multiplier)] = time.perf_counter() - started
            print(
                f"  {name:<8} n={len(ym):>7,}: {seconds[(name, multiplier)]:7.1f} s "
                f"(CV AUROC {result.cv['cv_auroc']:.3f}, calibration {result.calibration}, {result.best_params})",
                file=sys.stderr,
                flush=True,
            )

    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), platform.processor() or "unknown CPU",
    )  # fmt: skip
    print(
        f"Machine: {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}; task {args.task}, "
        f"{X.shape[1]} features, train.n_jobs={params.n_jobs}, cv_folds={params.cv_folds}, "
        f"calibration_methods={list(params.calibration_methods)}, "
        f"cv_bootstrap_repetitions={params.cv_bootstrap_repetitions}.\n"
    )
    header = " | ".join(f"{sizes[m]:,} rows ({m}×) s" for m in multipliers)
    print(f"| candidate | search budget | {header} |" + (" growth |" if len(multipliers) > 1 else ""))
    print("|---|---:|" + "---:|" * len(multipliers) + ("---:|" if len(multipliers) > 1 else ""))
    for name in [*names, "total"]:
        if name == "total":
            row = [sum(seconds[(n, m)] for n in names) for m in multipliers]
            budget = ""
        else:
            row = [seconds[(name, m)] for m in multipliers]
            budget = str(params.candidates[name].search_iterations)
        growth = f" {row[-1] / row[0]:.1f}× |" if len(multipliers) > 1 else ""
        print(f"| {name} | {budget} | " + " | ".join(f"{s:.1f}" for s in row) + f" |{growth}")


if __name__ == "__main__":
    main()
