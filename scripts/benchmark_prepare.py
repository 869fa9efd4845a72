"""Benchmark ``lggseg prepare``: wall time to stack every patient of a Kaggle folder into NIfTI volumes.

Usage::

    .venv/bin/python scripts/benchmark_prepare.py          # ../shared/data/lgg/kaggle_3m, all CPUs
    .venv/bin/python scripts/benchmark_prepare.py --workers 1 2 --repeats 2 --output prepare.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from pipeline.ingestion.kaggle import discover_patients  # noqa: E402
from pipeline.ingestion.prepare import prepare_dataset  # noqa: E402

DEFAULT_INPUT = REPO_ROOT.parent / "shared" / "data" / "lgg" / "kaggle_3m"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--input", type=Path, default=DEFAULT_INPUT, help="kaggle_3m folder")
    parser.add_argument("--workers", type=int, nargs="+", default=[os.cpu_count() or 1], help="worker counts")
    parser.add_argument("--repeats", type=int, default=1, help="runs per worker count (best and mean shown)")
    parser.add_argument("--output", type=Path, default=None, help="write the figures as JSON")
    args = parser.parse_args()

    folders = discover_patients(args.input)
    slices = sum(len(list(f.glob("*_mask.tif"))) for f in folders)
    results = []
    print(f"prepare: {len(folders)} patients, {slices} slices, {os.cpu_count()} CPUs, {platform.processor()}")
    print("| workers | best s | mean s | slices/s |")
    print("|---|---|---|---|")
    for workers in args.workers:
        times = []
        for _ in range(args.repeats):
            work = Path(tempfile.mkdtemp(prefix="bench-prepare-"))
            try:
                start = time.perf_counter()
                prepare_dataset(args.input, work / "out", workers=workers)
                times.append(time.perf_counter() - start)
            finally:
                shutil.rmtree(work, ignore_errors=True)
        best, mean = min(times), sum(times) / len(times)
        results.append({"workers": workers, "best_s": best, "mean_s": mean, "slices_per_s": slices / best})
        print(f"| {workers} | {best:.1f} | {mean:.1f} | {slices / best:.0f} |")
    if args.output:
        payload = {"patients": len(folders), "slices": slices, "cpus": os.cpu_count(), "results": results}
        args.output.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
