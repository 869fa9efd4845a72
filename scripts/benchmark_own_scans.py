"""Time the own-scans path against the data set's form of the same patient (issue 18's speed goal).

The raw TCIA series of TCGA_FG_6692_20020606 (FLAIR, T1, T1c: reading, two rigid registrations,
resampling, the model grid and back, inference, QC picture, writing) against its Kaggle patient folder
(stacking the TIFFs, inference, writing), both with ``lggseg infer`` in this process, alternating, the model
loaded by each call as a user's command does. Prints the medians and their ratio (goal: at most 1.5).

    python scripts/benchmark_own_scans.py [--rounds 3] [--device cpu] [--tta flip] [--output figures.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from figures import write_figures

from pipeline.model_files import SHIPPED_MODEL
from pipeline.workflows.prediction import infer

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared" / "data"
PATIENT = "TCGA_FG_6692_20020606"


def _time(inputs: list, overrides: dict, device: str) -> float:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        infer(SHIPPED_MODEL, inputs, out, overrides=overrides, device=device)
        return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--tta", default=None, help="test-time augmentation (default: the model's)")
    parser.add_argument("--raw", type=Path, default=SHARED / "external" / "tcia_raw" / PATIENT)
    parser.add_argument("--kaggle", type=Path, default=SHARED / "lgg" / "kaggle_3m" / PATIENT)
    parser.add_argument("--output", type=Path, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    for path in (args.raw, args.kaggle):
        if not path.is_dir():
            print(f"benchmark_own_scans.py: error: {path}: not found", file=sys.stderr)
            return 2
    overrides = {"tta": args.tta} if args.tta else {}
    _time([args.kaggle], overrides, args.device)  # warm-up: imports, first allocations
    raw_s, kaggle_s = [], []
    for _ in range(args.rounds):
        kaggle_s.append(_time([args.kaggle], overrides, args.device))
        raw_s.append(_time([args.raw], overrides, args.device))
    figures = {
        "patient": PATIENT,
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "raw_series_s": round(statistics.median(raw_s), 3),
        "kaggle_folder_s": round(statistics.median(kaggle_s), 3),
        "raw_s_all": [round(t, 3) for t in raw_s],
        "kaggle_s_all": [round(t, 3) for t in kaggle_s],
    }
    figures["ratio_raw_over_kaggle"] = round(figures["raw_series_s"] / figures["kaggle_folder_s"], 2)
    print(
        f"{PATIENT} on {args.device} ({figures['torch_threads']} torch threads), median of {args.rounds}: "
        f"raw series {figures['raw_series_s']:.2f} s, Kaggle folder {figures['kaggle_folder_s']:.2f} s, "
        f"ratio {figures['ratio_raw_over_kaggle']:.2f} (goal <= 1.5)"
    )
    write_figures(figures, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
