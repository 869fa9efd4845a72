#!/usr/bin/env python
"""Time :func:`pipeline.evaluation.metrics.patient_metrics` (and the slice accumulator) on the real LGG masks.

Each patient's truth is read with ``tifffile`` from ``<root>/<patient>/*_mask.tif`` (slices sorted
numerically, stacked along the last axis); the "prediction" is a perturbed copy of it (dilated once,
shifted by 3 voxels along the first axis and with a slice eroded, so every metric is non-trivial).
Loading is timed separately and excluded from the metric figures.

    .venv/bin/python scripts/benchmark_metrics.py [--root ../shared/data/lgg/kaggle_3m] [--output bench.json]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from figures import write_figures  # noqa: E402

from pipeline.evaluation.metrics import SliceMetricsAccumulator, patient_metrics  # noqa: E402

DEFAULT_ROOT = REPO_ROOT.parent / "shared" / "data" / "lgg" / "kaggle_3m"
_SLICE_RE = re.compile(r"_(\d+)_mask\.tif$")


def load_truth(folder: Path) -> np.ndarray:
    """The (H, W, D) boolean mask volume of one patient folder."""
    files = [p for p in folder.glob("*_mask.tif") if _SLICE_RE.search(p.name)]
    files.sort(key=lambda p: int(_SLICE_RE.search(p.name).group(1)))
    return np.stack([tifffile.imread(p) > 0 for p in files], axis=-1)


def perturb(truth: np.ndarray) -> np.ndarray:
    """A plausible imperfect prediction: dilated, shifted, one tumour slice eroded."""
    pred = np.roll(ndimage.binary_dilation(truth, iterations=1), 3, axis=0)
    areas = pred.sum(axis=(0, 1))
    if areas.any():
        k = int(np.argmax(areas))
        pred[..., k] = ndimage.binary_erosion(pred[..., k], iterations=4)
    return pred


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="kaggle_3m folder")
    parser.add_argument("--spacing", type=float, nargs=3, default=(1.0, 1.0, 1.0), help="voxel spacing (mm)")
    parser.add_argument("--limit", type=int, default=0, help="first N patients only (0 = all)")
    parser.add_argument("--output", type=Path, help="write the timings as JSON here")
    args = parser.parse_args(argv)

    folders = sorted(p for p in args.root.iterdir() if p.is_dir())
    if args.limit:
        folders = folders[: args.limit]
    if not folders:
        parser.error(f"no patient folders under {args.root}")

    # warm-up (imports, first-call overheads) on a small case, not timed
    warm = np.zeros((32, 32, 8), dtype=bool)
    warm[8:16, 8:16, 2:5] = True
    patient_metrics(np.roll(warm, 2, axis=0), warm)

    acc = SliceMetricsAccumulator()
    rows = []
    for folder in folders:
        t0 = time.perf_counter()
        truth = load_truth(folder)
        pred = perturb(truth)
        t1 = time.perf_counter()
        record = patient_metrics(pred, truth, spacing=args.spacing, patient_id=folder.name)
        t2 = time.perf_counter()
        acc.update(pred, truth)
        t3 = time.perf_counter()
        rows.append(
            {
                "patient_id": folder.name,
                "shape": list(truth.shape),
                "load_s": t1 - t0,
                "patient_metrics_s": t2 - t1,
                "slice_update_s": t3 - t2,
                "dice": record["dice"],
                "hd95_mm": record["hd95_mm"],
            }
        )
    metric_s = [r["patient_metrics_s"] for r in rows]
    total_s = [r["patient_metrics_s"] + r["slice_update_s"] for r in rows]
    result = {
        "n_patients": len(rows),
        "patient_metrics_mean_s": statistics.fmean(metric_s),
        "patient_metrics_median_s": statistics.median(metric_s),
        "patient_metrics_max_s": max(metric_s),
        "with_slice_update_mean_s": statistics.fmean(total_s),
        "with_slice_update_max_s": max(total_s),
        "load_mean_s": statistics.fmean(r["load_s"] for r in rows),
        "mean_dice_of_perturbed": statistics.fmean(r["dice"] for r in rows),
        "slice_level_dice": acc.compute()["dice"],
        "patients": rows,
    }
    print(
        f"{len(rows)} patients: patient_metrics mean {result['patient_metrics_mean_s']:.3f} s, "
        f"median {result['patient_metrics_median_s']:.3f} s, max {result['patient_metrics_max_s']:.3f} s; "
        f"with slice accumulator mean {result['with_slice_update_mean_s']:.3f} s, "
        f"max {result['with_slice_update_max_s']:.3f} s; "
        f"loading (excluded) mean {result['load_mean_s']:.3f} s"
    )
    write_figures(result, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
