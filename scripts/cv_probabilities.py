"""Dump each development patient's tumour probability from the fold model that never saw it (issues 30, 32).

For every finished fold ``k`` of a cross-validation run (``<run>/fold<k>/checkpoints/best_model.pt``), the
patients of test fold ``k`` go through the evaluation chain (``build_transforms("val")``) and the model's
inferer without test-time augmentation, once per flip variant (none, left-right, up-down). Per patient one
compressed ``<output>/<patient>.npz`` holds:

- ``prob_none``, ``prob_lr``, ``prob_ud``: the tumour probability of each variant, float16 ``(H, W, D)``;
- ``label``: the truth, uint8; ``brain``: the voxels any input channel marks (the normaliser's brain), uint8;
- ``flair``: the normalised FLAIR channel, float16;
- ``fold``: the test fold; ``spacing``: the voxel size of the volume (mm).

These are what the quality estimate (``scripts/fit_qc.py``) and the post-processing choice are fitted on:
every figure comes from a model that did not train on the patient.

    python scripts/cv_probabilities.py --run runs/unext_r2 --data data/lgg --output runs/unext_r2/cv_prob
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from pipeline.model_files import load_model
from pipeline.transforms import build_transforms
from pipeline.workflows.builders import datalist_entries, make_inferer
from pipeline.workflows.model_selection import finished_folds

logger = logging.getLogger("cv_probabilities")

VARIANTS = {"none": (), "lr": (3,), "ud": (2,)}  # flips of (B, C, H, W, D)


def dump_fold(model_file: Path, fold: int, data: Path, output: Path, device: str) -> int:
    """Write the npz of every patient of test fold ``fold`` that is not there yet; returns how many."""
    network, cfg, dev = load_model(model_file, {"tta": "none"}, device)
    network.eval()
    chain = build_transforms("val", cfg)
    inferer = make_inferer(cfg)
    written = 0
    for entry in datalist_entries(data, [fold]):
        target = output / f"{entry['patient']}.npz"
        if target.exists():
            continue
        item = chain(entry)
        image = torch.as_tensor(item["image"])[None].to(dev)
        arrays: dict[str, np.ndarray] = {}
        with torch.no_grad():
            for name, dims in VARIANTS.items():
                x = torch.flip(image, dims) if dims else image
                prob = inferer(x, network)
                prob = torch.flip(prob, dims) if dims else prob
                arrays[f"prob_{name}"] = prob[0, 0].cpu().numpy().astype(np.float16)
        normalised = torch.as_tensor(item["image"])
        arrays["label"] = (torch.as_tensor(item["label"])[0] > 0).numpy().astype(np.uint8)
        arrays["brain"] = (normalised != 0).any(dim=0).numpy().astype(np.uint8)
        arrays["flair"] = normalised[1].numpy().astype(np.float16)
        spacing = np.sqrt((np.asarray(item["image"].affine)[:3, :3] ** 2).sum(axis=0))
        partial = output / f".{entry['patient']}.partial.npz"
        np.savez_compressed(partial, fold=fold, spacing=spacing, **arrays)
        partial.replace(target)
        written += 1
        logger.info("fold %d: %s", fold, entry["patient"])
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="cross-validation run root (fold<k>/ inside)")
    parser.add_argument("--data", type=Path, required=True, help="prepared data folder")
    parser.add_argument("--output", type=Path, required=True, help="folder of the npz files")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    folds = finished_folds(args.run)
    if not folds:
        print(f"{args.run}: no finished fold", file=sys.stderr)
        return 2
    args.output.mkdir(parents=True, exist_ok=True)
    total = sum(dump_fold(path, fold, args.data, args.output, args.device) for fold, path in folds.items())
    logger.info("%d patients written to %s", total, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
