"""bf16 against float32 inference on the CPU, paired per patient on the cross-validation's test folds.

For every finished fold ``k`` of a cross-validation run, each patient of test fold ``k`` is segmented by the
fold model that never saw it twice: in float32 and under bf16 autocast (``VolumeInferer(cpu_bf16=True)``,
what ``amp`` turns on for inference on CPUs with AVX512-BF16 / AMX). Both masks go through the model's own
threshold and component filter. Printed and written as JSON: the mean and median Dice of each, the paired
difference (Wilcoxon signed-rank test), the agreement of the two masks, the largest probability difference,
and the network time of each (medians over the patients).

    python scripts/benchmark_precision.py --run runs/unext_r2 --data data/lgg --output runs/precision.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from fit_qc import dice  # the CV figures' Dice of boolean masks (1.0 when both are empty)
from scipy import stats

from pipeline.model_files import load_model
from pipeline.preprocessing.components import FilterComponentsd
from pipeline.safety import atomic_write_json
from pipeline.training.autocast import cpu_bf16_supported
from pipeline.transforms import build_transforms
from pipeline.workflows.builders import datalist_entries, make_inferer
from pipeline.workflows.model_selection import finished_folds


def timed_probability(inferer, image: torch.Tensor, network: torch.nn.Module) -> tuple[np.ndarray, float]:
    """The probability ``(H, W, D)`` of one volume and the seconds it took."""
    start = time.perf_counter()
    with torch.no_grad():
        prob = inferer(image, network)
    return prob[0, 0].float().numpy(), time.perf_counter() - start


def fold_rows(model_file: Path, fold: int, data: Path) -> list[dict]:
    """Per patient of test fold ``fold``: Dice in float32 and bf16, their agreement and times."""
    network, cfg, _ = load_model(model_file, {"tta": "none"}, "cpu")
    chain = build_transforms("val", cfg)
    fp32, bf16 = make_inferer(cfg), make_inferer(cfg)
    fp32.cpu_bf16, bf16.cpu_bf16 = False, True
    keep = FilterComponentsd("pred", cfg.threshold, cfg.edge_components, cfg.min_mass_fraction)
    rows = []
    for entry in datalist_entries(data, [fold]):
        item = chain(entry)
        image = torch.as_tensor(item["image"])[None]
        truth = (torch.as_tensor(item["label"])[0] > 0).numpy()
        masks, seconds, probs = {}, {}, {}
        for name, inferer in (("fp32", fp32), ("bf16", bf16)):
            prob, seconds[name] = timed_probability(inferer, image, network)
            probs[name] = prob
            kept = prob * keep.keep(prob) if (cfg.edge_components or cfg.min_mass_fraction) else prob
            masks[name] = kept > cfg.threshold
        rows.append(
            {
                "patient": entry["patient"],
                "fold": fold,
                "dice_fp32": dice(masks["fp32"], truth),
                "dice_bf16": dice(masks["bf16"], truth),
                "mask_agreement": dice(masks["fp32"], masks["bf16"]),
                "voxels_changed": int((masks["fp32"] != masks["bf16"]).sum()),
                "max_prob_difference": float(np.abs(probs["fp32"] - probs["bf16"]).max()),
                "seconds_fp32": seconds["fp32"],
                "seconds_bf16": seconds["bf16"],
            }
        )
        row = rows[-1]
        name = entry["patient"]
        print(f"fold {fold} {name}: Dice {row['dice_fp32']:.4f} float32, {row['dice_bf16']:.4f} bf16")
    return rows


def summarise(rows: list[dict]) -> dict:
    """Means, medians, the paired test and the times of the per-patient rows."""
    fp32 = np.array([r["dice_fp32"] for r in rows])
    bf16 = np.array([r["dice_bf16"] for r in rows])
    differ = fp32 != bf16
    return {
        "patients": len(rows),
        "dice_fp32": {"mean": float(fp32.mean()), "median": float(np.median(fp32)), "min": float(fp32.min())},
        "dice_bf16": {"mean": float(bf16.mean()), "median": float(np.median(bf16)), "min": float(bf16.min())},
        "paired_difference_mean": float((bf16 - fp32).mean()),
        "bf16_better": int((bf16 > fp32).sum()),
        "bf16_worse": int((bf16 < fp32).sum()),
        "wilcoxon_p": float(stats.wilcoxon(bf16[differ], fp32[differ]).pvalue) if differ.sum() > 1 else None,
        "mask_agreement_min": min(r["mask_agreement"] for r in rows),
        "voxels_changed_median": float(np.median([r["voxels_changed"] for r in rows])),
        "max_prob_difference": max(r["max_prob_difference"] for r in rows),
        "seconds_fp32_median": float(np.median([r["seconds_fp32"] for r in rows])),
        "seconds_bf16_median": float(np.median([r["seconds_bf16"] for r in rows])),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="cross-validation run root (fold<k>/ inside)")
    parser.add_argument("--data", type=Path, required=True, help="prepared data folder")
    parser.add_argument("--output", type=Path, help="JSON file of the figures and the per-patient rows")
    parser.add_argument("--folds", type=int, nargs="*", help="only these folds (default: every finished one)")
    args = parser.parse_args(argv)
    if not cpu_bf16_supported():
        print("this CPU has no native bf16 (AVX512-BF16 / AMX): nothing to compare", file=sys.stderr)
        return 2
    folds = finished_folds(args.run)
    if args.folds:
        folds = {k: v for k, v in folds.items() if k in args.folds}
    if not folds:
        print(f"{args.run}: no finished fold", file=sys.stderr)
        return 2
    rows = [row for fold, path in folds.items() for row in fold_rows(path, fold, args.data)]
    summary = {
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        **summarise(rows),
    }
    print(json.dumps(summary, indent=2))
    if args.output:
        atomic_write_json(args.output, {**summary, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
