"""Batch-scoring throughput and peak memory: ``trd score`` against ``mlflow models predict`` and a bare floor.

Three runners, each in its own child process (so imports, model loading and file I/O count), on the same model
(default ``models/acute``) and the same patients:

* ``trd score``: the real CLI (``.venv/bin/trd score INPUT -o OUT [--explain]``), canonical input with text
  codes, harmonisation, validation, duplicate ids, rejects file, atomic outputs;
* ``mlflow models predict -m MODEL -i X.csv -t csv -o out.json --env-manager local``: the same patients as
  the all-float64 FEATURE matrix the pyfunc takes (built with ``pipeline.features.build_features``). MLflow's
  CLI reads CSV or JSON only, so it runs on CSV, at every size unless ``--mlflow-sizes`` says otherwise: it
  loads the whole file into memory and writes one JSON document (several GB at 5M rows);
* ``bare floor``: the least work from the same input file to probabilities: pyarrow reads it chunk by chunk
  (CSV numbers parsed by Arrow), codes mapped through the contract's spellings, ``build_features``,
  ``predict_proba``, patient id + probability written with pyarrow. No validation, no rejects, no duplicate
  check, no atomic rename: a lower bound, not a usable scorer.

Wall time is measured around the child; peak RSS is the child's own ``ru_maxrss`` from ``os.wait4``, taken by a
small launcher process so that this process's memory is not counted (see ``LAUNCHER``; for MLflow, which
predicts in-process with ``--env-manager local``, that is the whole prediction). Rows/s = input rows /
wall seconds, startup included.

Inputs are generated once per size under ``benchmarks/_work/`` (git-ignored) and reused: patients resampled
from the training split ``data/processed/acute/train.parquet`` (realistic values and correlations), written in
the scorer's canonical layout with clinic-style spellings (``female``, ``Yes``, ``1``), ~3 % missing values
per column and ~1 % invalid rows (impossible ages, unknown route codes, unknown yes/no codes, fractional
counts, missing and duplicated patient ids) so that the rejects path is exercised.

    .venv/bin/python benchmarks/bench_score.py                      # 100k, 1M, 5M rows (~15 min on 2 cores)
    .venv/bin/python benchmarks/bench_score.py --sizes 100000,1000000 --formats parquet --no-explain
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
WORK = REPO_ROOT / "benchmarks" / "_work"
BIN = Path(sys.executable).parent
GENERATOR_VERSION = 3  # bump when the generated files change, so cached inputs are rebuilt
GEN_CHUNK = 250_000
MISSING_RATE = 0.03
EXPORT_SPELLINGS = {  # clinic-style spellings of canonical levels, all accepted by the canonical format
    "F": ["F", "female", "f", "Female"],
    "M": ["M", "male", "Male", "m"],
    True: ["yes", "1", "Yes", "true", "Y"],
    False: ["no", "0", "No", "false", "N"],
}


# --------------------------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------------------------


def _input_columns(model: Path) -> list[str]:
    from pipeline.features import FeatureSpec  # noqa: PLC0415

    return FeatureSpec.load(model / "artifacts" / "feature_spec.json").input_columns


def generate_inputs(n: int, model: Path, seed: int, work: Path, *, features: bool) -> dict[str, Path]:
    """Write input_{n}.csv / .parquet (canonical layout) and, if asked, features_{n}.csv (for MLflow)."""
    import numpy as np  # noqa: PLC0415
    import pandas as pd  # noqa: PLC0415
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.csv as pacsv  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415

    from pipeline.contract import load_contract  # noqa: PLC0415
    from pipeline.features import FeatureSpec, build_features  # noqa: PLC0415

    paths = {
        "csv": work / f"input_{n}.csv",
        "parquet": work / f"input_{n}.parquet",
        "features": work / f"features_{n}.csv",
    }
    stamp = work / f"input_{n}.json"
    meta = {"version": GENERATOR_VERSION, "seed": seed, "rows": n, "columns": _input_columns(model)}
    wanted = ["csv", "parquet", *(["features"] if features else [])]
    if stamp.is_file() and json.loads(stamp.read_text()) == meta and all(paths[k].is_file() for k in wanted):
        return paths

    contract = load_contract(REPO_ROOT / "configs" / "cohort_schema.yaml")
    spec = FeatureSpec.load(model / "artifacts" / "feature_spec.json")
    columns = spec.input_columns
    pool = contract.coerce(pd.read_parquet(REPO_ROOT / "data" / "processed" / "acute" / "train.parquet"))
    pool = pool[["site", *columns]].reset_index(drop=True)
    kinds = {c.name: c.kind for c in spec.columns}
    rng = np.random.default_rng(seed)
    writers: dict[str, object] = {}
    started = time.perf_counter()
    try:
        for offset in range(0, n, GEN_CHUNK):
            m = min(GEN_CHUNK, n - offset)
            clean = pool.iloc[rng.integers(0, len(pool), m)].reset_index(drop=True)
            for col in columns:  # a few % more missing values than the training data has
                clean[col] = clean[col].mask(rng.random(m) < MISSING_RATE)
            ids = pd.Series(np.arange(offset, offset + m)).map("P{:09d}".format).to_numpy(dtype=object, copy=True)
            export = {"patient_id": ids, "site": clean["site"].to_numpy(dtype=object)}
            for col in columns:
                values = clean[col]
                if kinds[col] == "numeric":
                    export[col] = values.to_numpy(dtype="float64", na_value=np.nan, copy=True)
                elif kinds[col] == "binary" or col == "sex":
                    # spelling variety: each row picks one of its level's accepted spellings
                    choice = rng.integers(0, 5, m)
                    out = np.full(m, None, dtype=object)
                    for level, spellings in EXPORT_SPELLINGS.items():
                        if (col == "sex") != isinstance(level, str):
                            continue
                        hit = (values == level).fillna(False).to_numpy()
                        out[hit] = np.asarray(spellings, dtype=object)[choice[hit] % len(spellings)]
                    export[col] = out
                else:  # canonical levels, occasionally in capitals (matching ignores case)
                    out = values.astype(object).where(values.notna(), None).to_numpy(dtype=object, copy=True)
                    upper = (rng.random(m) < 0.05) & values.notna().to_numpy()
                    out[upper] = np.char.upper(out[upper].astype(str)).astype(object)
                    export[col] = out
            # ~1 % invalid rows, each with one problem
            bad = rng.random(m)
            cut = np.cumsum([0.002, 0.002, 0.002, 0.001, 0.001, 0.002])
            problems = np.searchsorted(cut, bad, side="right")  # 0..5 a problem, 6 none
            export["age"][problems == 0] = 250.0  # impossible_value
            export["route"][problems == 1] = "Spravto"  # unknown_code
            export["prior_ect"][problems == 2] = "maybe"  # unknown_code (yes/no)
            export["n_failed_trials"][problems == 3] = 2.5  # wrong_type (not a whole number)
            export["patient_id"][problems == 4] = None  # missing_id
            dup = np.flatnonzero(problems == 5)
            dup = dup[dup > 0]
            export["patient_id"][dup] = export["patient_id"][dup - 1]  # duplicate_record (or a missing id)
            table = pa.Table.from_pandas(pd.DataFrame(export), preserve_index=False)  # NaN and None -> null
            for kind in ("csv", "parquet"):
                if kind not in writers:
                    writers[kind] = (
                        pacsv.CSVWriter(paths["csv"].with_suffix(".csv.tmp"), table.schema)
                        if kind == "csv"
                        else pq.ParquetWriter(paths["parquet"].with_suffix(".parquet.tmp"), table.schema)
                    )
                writers[kind].write_table(table)
            if features:
                X = build_features(clean, spec)
                xt = pa.Table.from_pandas(X, preserve_index=False)
                if "features" not in writers:
                    writers["features"] = pacsv.CSVWriter(paths["features"].with_suffix(".csv.tmp"), xt.schema)
                writers["features"].write_table(xt)
    finally:
        for writer in writers.values():
            writer.close()
    for kind in writers:
        paths[kind].with_suffix(paths[kind].suffix + ".tmp").replace(paths[kind])
    stamp.write_text(json.dumps(meta))
    sizes = ", ".join(f"{paths[k].name} {paths[k].stat().st_size / 1e6:,.0f} MB" for k in writers)
    print(f"  generated {n:,} rows in {time.perf_counter() - started:.0f} s: {sizes}", file=sys.stderr, flush=True)
    return paths


# --------------------------------------------------------------------------------------------------------------
# the bare floor (runs in a child process)
# --------------------------------------------------------------------------------------------------------------


def floor(input_path: Path, output_path: Path, model: Path, chunk_size: int) -> None:
    """Read with pyarrow, map codes, build features, predict, write: nothing else."""
    import numpy as np  # noqa: PLC0415
    import pandas as pd  # noqa: PLC0415
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.csv as pacsv  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415

    from pipeline.contract import load_contract  # noqa: PLC0415
    from pipeline.features import build_features  # noqa: PLC0415
    from pipeline.modelling.bundle import load_bundle  # noqa: PLC0415

    bundle = load_bundle(model)
    spec = bundle.feature_spec
    contract = load_contract(REPO_ROOT / "configs" / "cohort_schema.yaml")
    lookups: dict[str, dict] = {}
    yes_no = {s.casefold(): level for level in (True, False) for s in EXPORT_SPELLINGS[level]}
    for col in spec.columns:
        if col.kind == "categorical":
            codes = contract.column(col.name).accepted_codes()
            lookups[col.name] = {c.casefold(): level for level, cs in codes.items() for c in cs}
        elif col.kind == "binary":
            lookups[col.name] = yes_no
    if input_path.suffix == ".parquet":
        batches = pq.ParquetFile(input_path).iter_batches(batch_size=chunk_size, columns=["patient_id", *lookups, *[
            c.name for c in spec.columns if c.kind == "numeric"]])  # fmt: skip
    else:
        types = {"patient_id": pa.string(), **{c.name: pa.float64() for c in spec.columns if c.kind == "numeric"}}
        types |= dict.fromkeys(lookups, pa.string())
        batches = pacsv.open_csv(
            input_path,
            read_options=pacsv.ReadOptions(block_size=max(1 << 20, chunk_size * 256)),
            convert_options=pacsv.ConvertOptions(column_types=types, include_columns=list(types)),
        )
    writer = None
    for batch in batches:
        cohort = {}
        for col in spec.columns:
            array = batch.column(col.name)
            if col.name in lookups:  # map each distinct code once
                encoded = array.dictionary_encode()
                uniques = encoded.dictionary.to_pylist()
                mapped = np.array([lookups[col.name].get(u.strip().casefold()) for u in uniques] + [None], dtype=object)
                idx = encoded.indices.to_numpy(zero_copy_only=False)
                idx = np.where(np.isnan(idx), len(uniques), idx).astype("int64") if idx.dtype.kind == "f" else idx
                values = mapped[idx]
                cohort[col.name] = pd.array(values, dtype="boolean" if col.kind == "binary" else "string")
            else:
                cohort[col.name] = array.to_numpy(zero_copy_only=False).astype("float64")
        X = build_features(pd.DataFrame(cohort), spec)
        p = bundle.estimator.predict_proba(X)[:, 1]
        out = pa.table({"patient_id": batch.column("patient_id"), "p_response": pa.array(p)})
        if writer is None:
            writer = (
                pq.ParquetWriter(output_path, out.schema, compression="zstd")
                if output_path.suffix == ".parquet"
                else pacsv.CSVWriter(output_path, out.schema)
            )
        writer.write_table(out)
    if writer is not None:
        writer.close()


# --------------------------------------------------------------------------------------------------------------
# running children
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Run:
    runner: str
    rows: int
    fmt: str
    explain: bool
    seconds: float
    cpu_seconds: float
    peak_mb: float
    exit_code: int
    note: str = ""

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds


def snapshot_model(model: Path) -> Path:
    """A private copy of the model for the whole run, so a concurrent `dvc repro` cannot swap it mid-way."""
    info = json.loads((model / "artifacts" / "model_info.json").read_text())
    copy = WORK / f"model_{info['estimator_sha256'][:12]}"
    # copied afresh every run: the same estimator may come with newer model code or metadata
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(model, copy)
    return copy


# Linux carries a process's peak RSS across exec (the new program starts from the peak of the one it replaced),
# so a child spawned straight from this process would report at least this process's own peak (large after
# generating inputs). This launcher, a fresh small interpreter, forks and execs the command and reports the
# command's own rusage: the figures are the command's alone (plus the launcher's ~10 MB start).
LAUNCHER = """
import json, os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    json.dump({"maxrss_kb": usage.ru_maxrss, "cpu_s": usage.ru_utime + usage.ru_stime}, out)
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def run_child(
    command: list[str], ok_codes: tuple[int, ...] = (0,), *, cwd: Path = REPO_ROOT, env: dict | None = None
) -> tuple[float, float, float, int, str]:
    """Run a command; return (wall seconds, CPU seconds, peak RSS MB of the command, exit code, stderr tail)."""
    err_file, usage_file = WORK / "child.stderr", WORK / "child.usage.json"
    usage_file.unlink(missing_ok=True)
    with err_file.open("wb") as err:
        started = time.perf_counter()
        child = subprocess.run(
            [sys.executable, "-c", LAUNCHER, str(usage_file), *command],
            cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=err, check=False,
        )  # fmt: skip
        seconds = time.perf_counter() - started
    tail = err_file.read_text(errors="replace").strip().splitlines()[-3:]
    if child.returncode not in ok_codes:
        raise RuntimeError(f"{command} exited {child.returncode}:\n" + "\n".join(tail))
    usage = json.loads(usage_file.read_text())
    return seconds, usage["cpu_s"], usage["maxrss_kb"] / 1024, child.returncode, tail[-1] if tail else ""


def bench_trd(
    n: int, source: Path, model: Path, explain: bool, chunk_size: int, out_dir: Path, baseline: Path | None = None
) -> Run:
    """``trd score``; with ``baseline``, the scorer of another checkout (``python -m pipeline`` run there)."""
    out = out_dir / f"trd_{n}{source.suffix}"
    if baseline is None:
        command, cwd, env, runner = [str(BIN / "trd")], REPO_ROOT, None, "trd score"
    else:
        command, cwd, runner = [sys.executable, "-m", "pipeline"], baseline, f"trd score @ {baseline.name}"
        env = {**os.environ, "PYTHONPATH": str(baseline)}
    command += ["score", str(source), "-o", str(out), "--model", str(model)]
    command += ["--chunk-size", str(chunk_size), "--explain" if explain else "--no-explain"]
    # exit code 5: some rows rejected (expected: the inputs have invalid rows)
    seconds, cpu, peak, code, summary = run_child(command, ok_codes=(0, 5), cwd=cwd, env=env)
    return Run(runner, n, source.suffix[1:], explain, seconds, cpu, peak, code, summary)


def bench_mlflow(n: int, features: Path, model: Path, out_dir: Path) -> Run:
    out = out_dir / f"mlflow_{n}.json"
    command = [str(BIN / "mlflow"), "models", "predict", "-m", str(model), "-i", str(features), "-t", "csv"]
    command += ["-o", str(out), "--env-manager", "local"]
    seconds, cpu, peak, code, _ = run_child(command)
    return Run("mlflow models predict", n, "csv", False, seconds, cpu, peak, code, "feature matrix input")


def bench_floor(n: int, source: Path, model: Path, chunk_size: int, out_dir: Path) -> Run:
    out = out_dir / f"floor_{n}{source.suffix}"
    command = [sys.executable, __file__, "--floor", str(source), str(out), "--model", str(model)]
    command += ["--chunk-size", str(chunk_size)]
    seconds, cpu, peak, code, _ = run_child(command)
    return Run("bare floor", n, source.suffix[1:], False, seconds, cpu, peak, code)


# --------------------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------------------


def markdown(runs: list[Run]) -> str:
    lines = [
        "| rows | input | runner | explain | seconds | rows/s | CPU s | peak RSS (MB) |",
        "|---:|---|---|---|---:|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(
            f"| {r.rows:,} | {r.fmt} | {r.runner} | {'yes' if r.explain else 'no'} | {r.seconds:.1f} | "
            f"{r.rows_per_s:,.0f} | {r.cpu_seconds:.1f} | {r.peak_mb:,.0f} |"
        )
    return "\n".join(lines)


def targets(runs: list[Run]) -> str:
    """The issue's three targets, checked on the runs made."""

    def find(runner: str, n: int, fmt: str, explain: bool = False) -> Run | None:
        return next((r for r in runs if (r.runner, r.rows, r.fmt, r.explain) == (runner, n, fmt, explain)), None)

    lines = ["| target | rows | input | explain | value | met |", "|---|---:|---|---|---:|---|"]
    sizes = sorted({r.rows for r in runs})
    for n in sizes:
        trd, mlf = find("trd score", n, "csv"), find("mlflow models predict", n, "csv")
        if trd and mlf:
            ratio = trd.rows_per_s / mlf.rows_per_s
            lines.append(f"| ≥ 5× mlflow models predict throughput | {n:,} | csv | no | {ratio:.1f}× | "
                         f"{'yes' if ratio >= 5 else 'NO'} |")  # fmt: skip
    for n in sizes:
        for fmt in ("csv", "parquet"):
            trd, flo = find("trd score", n, fmt), find("bare floor", n, fmt)
            if trd and flo:
                ratio = trd.seconds / flo.seconds
                lines.append(f"| ≤ 2× the bare floor's time | {n:,} | {fmt} | no | {ratio:.2f}× | "
                             f"{'yes' if ratio <= 2 else 'NO'} |")  # fmt: skip
    if len(sizes) > 1:
        small, large = sizes[0], sizes[-1]
        for fmt in ("csv", "parquet"):
            for explain in (False, True):
                a, b = find("trd score", small, fmt, explain), find("trd score", large, fmt, explain)
                if a and b:
                    ratio = b.peak_mb / a.peak_mb
                    lines.append(
                        f"| peak RSS at {large:,} ≤ 1.3× at {small:,} | {large:,} | {fmt} | "
                        f"{'yes' if explain else 'no'} | {ratio:.2f}× | {'yes' if ratio <= 1.3 else 'NO'} |"
                    )
    return "\n".join(lines)


def machine() -> str:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), platform.processor() or "unknown CPU",
    )  # fmt: skip
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if "MemTotal" in line)
    import pyarrow  # noqa: PLC0415
    import sklearn  # noqa: PLC0415

    return (
        f"{os.cpu_count()} cores ({cpu}), {mem_kb / 1024**2:.0f} GB RAM, Linux {platform.release()}, "
        f"Python {platform.python_version()}, pyarrow {pyarrow.__version__}, scikit-learn {sklearn.__version__}"
    )


# --------------------------------------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    return [int(float(x)) for x in text.split(",") if x.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=_ints, default=[100_000, 1_000_000, 5_000_000], help="comma-separated")
    parser.add_argument(
        "--mlflow-sizes", type=_ints, default=[100_000, 1_000_000, 5_000_000],
        help="sizes MLflow runs at (it holds the whole file in memory: several GB at 5M rows); '' for none",
    )  # fmt: skip
    parser.add_argument("--formats", default="csv,parquet", help="comma-separated: csv, parquet")
    parser.add_argument("--no-explain", action="store_true", help="skip the --explain runs")
    parser.add_argument("--no-floor", action="store_true", help="skip the bare-floor runs")
    parser.add_argument("--model", type=Path, default=REPO_ROOT / "models" / "acute")
    parser.add_argument("--chunk-size", type=int, default=50_000, help="for trd score and the floor (trd default)")
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--keep-outputs", action="store_true", help="keep the scored files in benchmarks/_work/")
    parser.add_argument("--json", type=Path, help="also write the runs as JSON here")
    parser.add_argument(
        "--baseline", type=Path,
        help="also run `trd score` from another checkout of the project (e.g. a git worktree of main) for "
        "before/after numbers",
    )  # fmt: skip
    parser.add_argument("--floor", nargs=2, type=Path, metavar=("INPUT", "OUTPUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO_ROOT))
    if args.floor:
        floor(args.floor[0], args.floor[1], args.model, args.chunk_size)
        return

    WORK.mkdir(parents=True, exist_ok=True)
    model = snapshot_model(args.model)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    out_dir = WORK / "out"
    runs: list[Run] = []
    print(f"machine: {machine()}", file=sys.stderr)
    for n in args.sizes:
        with_mlflow = n in args.mlflow_sizes
        inputs = generate_inputs(n, model, args.seed, WORK, features=with_mlflow)
        out_dir.mkdir(exist_ok=True)
        plan: list[tuple[str, str, bool]] = []
        for fmt in formats:
            plan.append(("trd", fmt, False))
            if args.baseline:
                plan.append(("baseline", fmt, False))
            if not args.no_explain:
                plan.append(("trd", fmt, True))
                if args.baseline:
                    plan.append(("baseline", fmt, True))
            if not args.no_floor:
                plan.append(("floor", fmt, False))
        if with_mlflow and "csv" in formats:
            plan.append(("mlflow", "csv", False))
        for runner, fmt, explain in plan:
            if runner in ("trd", "baseline"):
                baseline = args.baseline.resolve() if runner == "baseline" else None
                run = bench_trd(n, inputs[fmt], model, explain, args.chunk_size, out_dir, baseline)
            elif runner == "floor":
                run = bench_floor(n, inputs[fmt], model, args.chunk_size, out_dir)
            else:
                run = bench_mlflow(n, inputs["features"], model, out_dir)
            runs.append(run)
            print(
                f"  {run.rows:>9,} {run.fmt:<7} {run.runner:<22} explain={'yes' if run.explain else 'no ':<3} "
                f"{run.seconds:7.1f} s {run.rows_per_s:>10,.0f} rows/s {run.cpu_seconds:7.1f} CPU s "
                f"{run.peak_mb:>7,.0f} MB  {run.note}",
                file=sys.stderr,
                flush=True,
            )
        if not args.keep_outputs:
            shutil.rmtree(out_dir, ignore_errors=True)
    skipped = [n for n in args.sizes if n not in args.mlflow_sizes]
    info = json.loads((model / "artifacts" / "model_info.json").read_text())
    print(f"Machine: {machine()}.")
    print(f"Model: {args.model} ({info['candidate']}, calibration {info['calibration']}, "
          f"estimator sha256 {info['estimator_sha256'][:12]}); chunk size {args.chunk_size:,}.\n")  # fmt: skip
    print(markdown(runs))
    print()
    if skipped:
        print(
            f"`mlflow models predict` was not run at {', '.join(f'{n:,}' for n in skipped)} rows "
            "(it reads the whole CSV into memory and writes one JSON document; use --mlflow-sizes to run it).\n"
        )
    print(targets(runs))
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in runs], indent=2))


if __name__ == "__main__":
    main()
