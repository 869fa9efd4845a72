"""Dice of a model on the external development scans, each on its own grid (issues 18 and 19).

The cases of ``../shared/data/external`` go through ``lggseg infer`` as a user's scans:

- ``tcia_raw/TCGA_FG_6692_20020606`` (raw TCIA series) against its Kaggle mask carried onto the raw FLAIR
  grid by ``scripts/kaggle_geometry.py``;
- ``brats_style/<patient>`` (BraTS-preprocessed: SRI24, 1 mm, skull-stripped) against the BraTS
  algorithms' fusion (whole tumour: label > 0), a reference, not an expert mask;
- ``brats2023_example/<study>``: no truth; the predicted volume only.

These patients are in the Kaggle training folds of the shipped model: the figures check the path and the
robustness to other pipelines' preprocessing, not generalisation to new patients.

    python scripts/external_dice.py [--checkpoint MODEL] [--tta flip] [--device cpu] [--output figures.json]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
from figures import write_figures

from pipeline.model_files import SHIPPED_MODEL, load_checkpoint
from pipeline.transforms import TransformSettings
from pipeline.workflows.prediction import infer

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared" / "data"
EXTERNAL = SHARED / "external"
RAW_PATIENT = "TCGA_FG_6692_20020606"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two binary volumes (1 when both are empty)."""
    a, b = a > 0, b > 0
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * float((a & b).sum()) / total


def volume_ml(mask: np.ndarray, affine: np.ndarray) -> float:
    return float((mask > 0).sum() * abs(np.linalg.det(affine[:3, :3])) / 1000.0)


def _truths(work: Path) -> dict[Path, Path | None]:
    """Each external case folder and its truth on the case's own FLAIR grid (``None``: no truth)."""
    import kaggle_geometry  # scripts/ is on the path when this script runs

    raw = EXTERNAL / "tcia_raw" / RAW_PATIENT
    truth = work / "kaggle_mask_on_raw.nii.gz"
    flair = next(raw.glob("*_fla.nii.gz"))
    kaggle = SHARED / "lgg" / "kaggle_3m" / RAW_PATIENT
    kaggle_geometry.main(
        ["--raw-flair", str(flair), "--kaggle-patient", str(kaggle), "--output-mask", str(truth)]
    )
    cases: dict[Path, Path | None] = {raw: truth}
    for case in sorted((EXTERNAL / "brats_style").iterdir()):
        cases[case] = EXTERNAL / "brats_style_reference" / f"{case.name}_fusion.nii.gz"
    for case in sorted((EXTERNAL / "brats2023_example").iterdir()):
        cases[case] = None
    return cases


def _quality(summary: Path) -> dict:
    """The case's quality estimate from ``summary.csv`` (``qc_score``, ``review``, ``qc_flags``)."""
    import csv

    with open(summary, newline="") as handle:
        row = next(csv.DictReader(handle))
    if not row.get("qc_score"):
        return {}
    score = round(float(row["qc_score"]), 3)
    return {"qc_score": score, "review": row["review"], "qc_flags": row["qc_flags"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint", type=Path, default=SHIPPED_MODEL, help="model file (default: shipped)"
    )
    parser.add_argument("--tta", default=None, help="test-time augmentation (default: the model's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--output", type=Path, help="also write the figures as JSON")
    parser.add_argument(
        "--thin-below-mm",
        type=float,
        help="resample slices thinner than this to --slice-mm (default: the model's rule; 0 keeps them)",
    )
    parser.add_argument(
        "--slice-mm", type=float, help="the slice spacing of thin slices (default: the model's)"
    )
    parser.add_argument("--pixel-mm", type=float, help="the model grid's pixel size (default: the model's)")
    args = parser.parse_args(argv)
    if not EXTERNAL.is_dir():
        print(f"external_dice.py: error: {EXTERNAL}: not found", file=sys.stderr)
        return 2
    grid = {
        "grid_thin_below_mm": args.thin_below_mm,
        "grid_slice_mm": args.slice_mm,
        "grid_pixel_mm": args.pixel_mm,
    }
    overrides = {"tta": args.tta, **grid}
    defaults = TransformSettings.from_dict(load_checkpoint(args.checkpoint)["config"])
    rule = {k: v if v is not None else getattr(defaults, k) for k, v in grid.items()}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for index, (case, truth_path) in enumerate(_truths(work).items()):
            out = work / f"out{index}"  # one folder each: two cases are one patient (one case name)
            infer(args.checkpoint, [case], out, overrides=overrides, device=args.device)
            seg = nib.load(out / case.name / f"{case.name}_seg.nii.gz")
            pred = np.asarray(seg.dataobj)
            row = {
                "case": f"{case.parent.name}/{case.name}",
                "pred_ml": round(volume_ml(pred, seg.affine), 2),
                **_quality(out / "summary.csv"),
            }
            if truth_path is not None:
                truth = nib.load(truth_path)
                if truth.shape != seg.shape or not np.allclose(truth.affine, seg.affine, atol=1e-3):
                    print(
                        f"external_dice.py: error: {truth_path}: not on the case's FLAIR grid",
                        file=sys.stderr,
                    )
                    return 1
                mask = np.asarray(truth.dataobj)
                row.update(dice=round(dice(pred, mask), 4), truth_ml=round(volume_ml(mask, truth.affine), 2))
            rows.append(row)
            truth_text = f"truth {row['truth_ml']:.1f} mL" if "truth_ml" in row else "(no truth)"
            dice_text = f"Dice {row['dice']:.3f}" if "dice" in row else "Dice   -  "
            quality = f"  QC {row['qc_score']:.2f} review {row['review']}" if "qc_score" in row else ""
            print(f"{row['case']:45s} {dice_text}  predicted {row['pred_ml']:.1f} mL  {truth_text}", quality)
    figures = {"checkpoint": str(args.checkpoint), "tta": args.tta, **rule, "cases": rows}
    write_figures(figures, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
