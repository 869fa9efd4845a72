"""Fit the quality score on cross-validation predictions only, and measure it (issue 30).

Input: the ``.npz`` files of ``scripts/cv_probabilities.py`` (each development patient's tumour probability
from the fold model that never saw it). Each patient's final mask is made with the post-processing given
(the shipped choice), its quality estimated with :func:`pipeline.inference.quality.case_quality` (the same
function the pipeline runs), and:

- the calibration (a logistic map from the mean probability inside the mask to the expected Dice) is fitted
  by least squares, and the review threshold chosen: the lowest score under which at least 80% of the
  patients under Dice 0.5 are flagged while at most 30% of the others are;
- both are measured **nested**: each test fold scored with the calibration and threshold fitted on the other
  four folds (AUROC of the score for "Dice < 0.7", Spearman correlation with Dice, the review's catch and
  false-alarm rates, what each flag caught and missed);
- with the flipped variants of the dumps: the agreement of their masks (:func:`flip_agreement`, the
  ``tta_disagree`` flag of ``--tta flip``), its AUROC and what ``review`` catches with it;
- the calibration fitted on all patients, with the training ranges of the volume share and the FLAIR
  statistic, is written as JSON: ``lggseg ensemble --quality`` puts it into the shipped model file.

    python scripts/fit_qc.py --probabilities runs/unext_r2/cv_prob --edge-components 2 \\
        --min-mass-fraction 0.3 --output runs/unext_r2/qc.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage, optimize, stats

from pipeline.inference.quality import FLAGS, TTA_AGREEMENT_BELOW, case_quality, flip_agreement
from pipeline.preprocessing.components import FilterComponentsd
from pipeline.safety import atomic_write_json

LOW_DICE, BAD_DICE = 0.7, 0.5
NOT_SEVERE = ("low_confidence", "uncalibrated")  # the score's own flags: judged from the nested score here
CATCH, FALSE_ALARMS = 0.8, 0.3


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * float((a & b).sum()) / total


FP_VOXELS, EDGE = 500, 3  # a false-positive component: this many voxels, no overlap with the truth


def failure_classes(mask: np.ndarray, truth: np.ndarray) -> dict[str, int | float]:
    """The failure classes of the model issue for one mask: false-positive components over
    :data:`FP_VOXELS` voxels with no overlap with the truth, of them those within the outermost :data:`EDGE`
    slices; sensitivity and precision."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    depth, fp, edge = mask.shape[2], 0, 0
    for index in range(1, count + 1):
        component = labels == index
        if component.sum() >= FP_VOXELS and not (component & truth).any():
            fp += 1
            slices = np.nonzero(component.any(axis=(0, 1)))[0]
            edge += int(slices.min() < EDGE or slices.max() >= depth - EDGE)
    hit = float((mask & truth).sum())
    return {
        "fp_components": fp,
        "edge_fp_components": edge,
        "sensitivity": hit / max(1.0, float(truth.sum())),
        "precision": hit / max(1.0, float(mask.sum())),
    }


def patient_rows(folder: Path, edge: int, mass: float, threshold: float) -> list[dict]:
    """Per patient: fold, Dice of the post-processed mask (and without post-processing), its failure classes,
    and the uncalibrated quality estimate."""
    keep = FilterComponentsd("pred", threshold, edge, mass)
    rows = []
    for path in sorted(folder.glob("*.npz")):
        data = np.load(path)
        prob = data["prob_none"].astype(np.float32)
        raw = prob > threshold
        prob = prob * keep.keep(prob) if (edge or mass) else prob
        mask = prob > threshold
        brain = data["brain"].astype(np.float32)
        image = np.stack([brain, data["flair"].astype(np.float32), brain])
        quality = case_quality(prob, mask, image)
        truth = data["label"] > 0
        variants = [data[f"prob_{v}"] for v in ("none", "lr", "ud") if f"prob_{v}" in data]
        agreement = (
            float(
                flip_agreement(
                    [torch.from_numpy(v.astype(np.float32))[None, None] for v in variants], threshold
                )
            )
            if len(variants) > 1
            else None
        )
        rows.append(
            {
                "patient": path.stem,
                "fold": int(data["fold"]),
                "dice": dice(mask, truth),
                "dice_raw": dice(raw, truth),
                "truth_voxels": int(truth.sum()),
                **failure_classes(mask, truth),
                "raw_fp_components": failure_classes(raw, truth)["fp_components"],
                "raw_edge_fp_components": failure_classes(raw, truth)["edge_fp_components"],
                "flags": quality.flags,
                "tta_agreement": agreement,
                **quality.features,
            }
        )
    return rows


def fit_calibration(mean_prob: np.ndarray, dice_values: np.ndarray) -> dict[str, float]:
    """Logistic least squares: Dice ~ 1 / (1 + exp(-(slope * mean_prob + intercept)))."""

    def loss(w: np.ndarray) -> float:
        predicted = 1.0 / (1.0 + np.exp(-(w[0] * mean_prob + w[1])))
        return float(((predicted - dice_values) ** 2).sum())

    slope, intercept = optimize.minimize(loss, np.array([5.0, -2.0]), method="Nelder-Mead").x
    return {"slope": float(slope), "intercept": float(intercept)}


def score(mean_prob: np.ndarray, calibration: dict[str, float]) -> np.ndarray:
    z = calibration["slope"] * mean_prob + calibration["intercept"]
    return np.where(mean_prob > 0, 1.0 / (1.0 + np.exp(-z)), 0.0)


def choose_threshold(scores: np.ndarray, dice_values: np.ndarray) -> float:
    """The lowest review threshold that flags >= 80% of the patients under Dice 0.5 with <= 30% of the
    others (the fewest false alarms among those); 0.7 when no patient is under 0.5."""
    bad = dice_values < BAD_DICE
    if not bad.any():
        return LOW_DICE
    best = None
    for threshold in np.round(np.arange(0.30, 0.96, 0.01), 2):
        review = scores < threshold
        catch = (review & bad).sum() / bad.sum()
        alarms = (review & ~bad).sum() / max(1, (~bad).sum())
        if catch >= CATCH and alarms <= FALSE_ALARMS and (best is None or alarms < best[1]):
            best = (float(threshold), alarms)
    return best[0] if best else LOW_DICE


def auroc(values: np.ndarray, positive: np.ndarray) -> float:
    """AUROC of "low value means positive" (Mann-Whitney)."""
    pos, neg = values[positive], values[~positive]
    if not len(pos) or not len(neg):
        return math.nan
    wins = (pos[:, None] < neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (len(pos) * len(neg)))


def flag_table(rows: list[dict], review: np.ndarray, low_score: np.ndarray) -> dict[str, dict[str, int]]:
    """Per flag: patients flagged, of them under Dice 0.7, and patients under 0.7 it missed
    (``low_confidence`` from the nested score, ``review`` the nested review)."""
    low = np.array([r["dice"] < LOW_DICE for r in rows])
    table = {}
    for code in [*(f for f in FLAGS if f != "uncalibrated"), "review"]:
        if code == "review":
            raised = review
        elif code == "tta_disagree":
            raised = np.array(
                [(r["tta_agreement"] is not None and r["tta_agreement"] < TTA_AGREEMENT_BELOW) for r in rows]
            )
        elif code == "low_confidence":
            raised = low_score
        else:
            raised = np.array([code in r["flags"] for r in rows])
        table[code] = {
            "flagged": int(raised.sum()),
            "flagged_under_0.7": int((raised & low).sum()),
            "missed_under_0.7": int((~raised & low).sum()),
        }
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probabilities", type=Path, required=True, help="folder of cv_probabilities.py")
    parser.add_argument("--edge-components", type=int, default=0)
    parser.add_argument("--min-mass-fraction", type=float, default=0.0)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--output", type=Path, required=True, help="the calibration and its figures (JSON)")
    args = parser.parse_args(argv)
    rows = patient_rows(args.probabilities, args.edge_components, args.min_mass_fraction, args.threshold)
    if len(rows) < 10:
        print(
            f"fit_qc.py: error: {args.probabilities}: {len(rows)} patients, too few to fit", file=sys.stderr
        )
        return 2
    folds = np.array([r["fold"] for r in rows])
    dice_values = np.array([r["dice"] for r in rows])
    mean_prob = np.array([r["mean_prob"] for r in rows])
    nested = np.zeros(len(rows))
    review = np.zeros(len(rows), dtype=bool)
    low_score = np.zeros(len(rows), dtype=bool)
    per_fold = {}
    for fold in sorted(set(folds)):
        train, test = folds != fold, folds == fold
        calibration = fit_calibration(mean_prob[train], dice_values[train])
        threshold = choose_threshold(score(mean_prob[train], calibration), dice_values[train])
        nested[test] = score(mean_prob[test], calibration)
        severe = np.array([any(FLAGS[f][0] for f in r["flags"] if f not in NOT_SEVERE) for r in rows])
        low_score[test] = nested[test] < threshold
        review[test] = low_score[test] | severe[test]
        per_fold[int(fold)] = {**calibration, "review_below": threshold}
    bad, low = dice_values < BAD_DICE, dice_values < LOW_DICE
    figures = {
        "patients": len(rows),
        "under_0.7": int(low.sum()),
        "under_0.5": int(bad.sum()),
        "auroc_under_0.7": auroc(nested, low),
        "spearman": float(stats.spearmanr(nested, dice_values).correlation),
        "mean_abs_error": float(np.abs(nested - dice_values).mean()),
        "review_catches_under_0.5": float((review & bad).sum() / max(1, bad.sum())),
        "review_flags_others": float((review & ~bad).sum() / max(1, (~bad).sum())),
        "reviewed": int(review.sum()),
        "per_fold_fit": per_fold,
    }
    if all(r["tta_agreement"] is not None for r in rows):  # the dumps hold the flipped variants
        agreement = np.array([r["tta_agreement"] for r in rows])
        with_tta = review | (agreement < TTA_AGREEMENT_BELOW)
        figures["with_flip_tta"] = {
            "auroc_tta_agreement_under_0.7": auroc(agreement, low),
            "review_catches_under_0.5": float((with_tta & bad).sum() / max(1, bad.sum())),
            "review_flags_others": float((with_tta & ~bad).sum() / max(1, (~bad).sum())),
        }
    for row, value, flagged in zip(rows, nested, review, strict=True):
        row["qc_score_nested"], row["review_nested"] = float(value), bool(flagged)
    calibration = fit_calibration(mean_prob, dice_values)
    calibration["review_below"] = choose_threshold(score(mean_prob, calibration), dice_values)
    voxels = np.array([r["voxels"] for r in rows]) > 0
    calibration["ranges"] = {
        key: [float(np.percentile(values, 1)), float(np.percentile(values, 99))]
        for key, values in (
            ("volume_share", np.array([r["volume_share"] for r in rows])[voxels]),
            ("flair_bright", np.array([r["flair_bright"] for r in rows])),
        )
    }
    calibration["fitted_on"] = (
        f"{len(rows)} development patients, each predicted by the fold model that never saw it "
        f"(post-processing: edge_components {args.edge_components}, "
        f"min_mass_fraction {args.min_mass_fraction})"
    )
    under = [r for r in rows if r["sensitivity"] < 0.65 and r["precision"] >= 0.75]
    over = [r for r in rows if r["precision"] < 0.6 and r["sensitivity"] >= 0.75]
    figures["failure_classes"] = {
        "fp_components_over_500_voxels": sum(r["fp_components"] for r in rows),
        "of_them_on_the_outermost_3_slices": sum(r["edge_fp_components"] for r in rows),
        "without_post_processing": sum(r["raw_fp_components"] for r in rows),
        "without_post_processing_on_the_outermost_3_slices": sum(r["raw_edge_fp_components"] for r in rows),
        "patients_under_0.5": int(bad.sum()),
        "patients_zeroed": sum(r["dice"] < 0.05 for r in rows),
        "under_segmented": len(under),
        "over_segmented": len(over),
        "mean_dice": float(dice_values.mean()),
        "median_dice": float(np.median(dice_values)),
        "mean_dice_without_post_processing": float(np.mean([r["dice_raw"] for r in rows])),
    }
    payload = {
        "calibration": calibration,
        "figures": figures,
        "flags": flag_table(rows, review, low_score),
        "patients": rows,
    }
    atomic_write_json(args.output, payload)
    print(
        f"{len(rows)} patients ({int(low.sum())} under Dice 0.7, {int(bad.sum())} under 0.5), nested: "
        f"AUROC {figures['auroc_under_0.7']:.3f}, Spearman {figures['spearman']:.3f}, "
        f"MAE {figures['mean_abs_error']:.3f}; "
        f"review catches {figures['review_catches_under_0.5']:.0%} of the patients under 0.5 and flags "
        f"{figures['review_flags_others']:.0%} of the others ({figures['reviewed']} reviewed)"
    )
    shown = {k: v for k, v in calibration.items() if k != "fitted_on"}
    print(f"calibration (all patients): {json.dumps(shown)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
