"""Throughput and peak memory of the ``synthesize`` stage at 10k, 100k and 1M patients.

Each size runs the real stage (``pipeline.synthesize.main``: params, generation, validation, four files) in its
own subprocess, against a throw-away project root in a temporary folder (never data/), and reports that
process's wall time and peak resident memory.

    .venv/bin/python benchmarks/bench_synthesize.py [--sizes 10000 100000 1000000]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SIZES = (10_000, 100_000, 1_000_000)


def child(n_patients: int, root: Path) -> None:
    """Run the stage once in this process and print its timing and peak memory as JSON."""
    import os  # noqa: PLC0415

    shutil.copytree(REPO_ROOT / "configs", root / "configs")
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["synthesize"]["n_patients"] = n_patients
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    os.environ["TRD_PROJECT_ROOT"] = str(root)

    from pipeline.synthesize import main  # noqa: PLC0415 (imports are part of the child's own cost)

    started = time.perf_counter()
    main()
    seconds = time.perf_counter() - started
    out = root / "data" / "raw" / "synthetic"
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    sizes = {p.name: p.stat().st_size for p in out.iterdir()}
    print(json.dumps({"n": n_patients, "seconds": seconds, "peak_rss_mb": peak_mb, "bytes": sizes}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES))
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.root)
        return

    print(f"{'patients':>10} {'seconds':>8} {'patients/s':>11} {'peak RSS MB':>12} {'output MB':>10}")
    for n in args.sizes:
        with tempfile.TemporaryDirectory(prefix="bench_synthesize_") as tmp:
            run = subprocess.run(
                [sys.executable, __file__, "--child", str(n), "--root", str(Path(tmp) / "project")],
                capture_output=True,
                text=True,
                check=True,
                cwd=REPO_ROOT,
            )
        result = json.loads(run.stdout.strip().splitlines()[-1])
        output_mb = sum(result["bytes"].values()) / 1e6
        print(
            f"{n:>10,} {result['seconds']:>8.1f} {n / result['seconds']:>11,.0f} "
            f"{result['peak_rss_mb']:>12,.0f} {output_mb:>10.1f}"
        )


if __name__ == "__main__":
    main()
