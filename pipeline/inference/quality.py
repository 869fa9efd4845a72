"""Say when a mask should not be trusted: a per-case quality estimate and review flags (issue 30).

Every segmented case gets, beside its mask:

- ``qc_score`` (0-1): the tool's estimate of the mask's Dice. It is computed from the tumour probability on
  the model's grid: the mean probability inside the final mask (how sure the network is of what it kept),
  mapped to an expected Dice by a monotone (logistic) calibration fitted on cross-validation predictions
  only (``scripts/fit_qc.py``: every development patient predicted by a fold model that never saw it),
  stored in the model file (:data:`QUALITY_KEY`). A model without one gets the mean probability itself
  (``uncalibrated`` in the flags).
- ``qc_flags``: short codes, ``;``-separated (:data:`FLAGS` says what each means, and whether it asks for a
  review);
- ``review`` (``yes`` / ``no``): ``yes`` when the score is under the calibration's threshold or a flag asks
  for a review;
- the point (world coordinates, RAS mm) of the worst flag, so the QC picture can show that slice.

With flip test-time augmentation (``--tta flip``) the inferer also records how well the masks of the plain
and the flipped inputs agree (:func:`flip_agreement`, in the prediction's metadata under
:data:`TTA_AGREEMENT_KEY`); under :data:`TTA_AGREEMENT_BELOW` the case is flagged ``tta_disagree``.

:class:`QualityEstimated` runs in the post-processing, on the model's grid, before the probability goes back
onto the case's grid; :func:`case_quality` is the same on plain arrays (``scripts/fit_qc.py`` and the
evaluation use it: one rule).
"""

from __future__ import annotations

import math
import re
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.metrics import compute_dice
from monai.transforms import MapTransform
from scipy import ndimage

from pipeline.ingestion.sequences import FLAIR_CHANNEL
from pipeline.preprocessing.scan_chain import SCAN_META

__all__ = [
    "FLAGS",
    "QC_KEY",
    "TTA_AGREEMENT_BELOW",
    "TTA_AGREEMENT_KEY",
    "QUALITY_KEY",
    "CaseQuality",
    "QualityEstimated",
    "case_features",
    "case_quality",
    "calibrated_score",
    "flip_agreement",
]

QUALITY_KEY = "quality"  # where a model file keeps its calibration (scripts/fit_qc.py)
QC_KEY = "qc"  # where the post-processing puts each case's CaseQuality (as a dict)
TTA_AGREEMENT_KEY = "tta_agreement"  # where the inferer records flip_agreement in the prediction's metadata
# flip agreement under this asks for review: on the 80 development patients (each by the fold model that never
# saw it) review or this caught 5 of the 5 under Dice 0.5 and 25% of the others (review alone: 4 of 5, 23%)
TTA_AGREEMENT_BELOW = 0.5
EDGE_SLICES = 2  # a component within this many slices of the top or bottom of the model grid is at the edge
_FULL = np.ones((3, 3, 3), dtype=bool)

#: code -> (asks for a review, what it means); the README lists them
FLAGS: dict[str, tuple[bool, str]] = {
    "empty": (True, "no tumour found (an empty mask is never taken for an answer without a look)"),
    "low_confidence": (True, "the quality score is under the review threshold"),
    "edge": (True, "a component lies only on the outermost slices (vertex or skull base: often an artefact)"),
    "outside_head": (True, "part of the mask lies where the input is background (outside the head)"),
    "head_cover": (True, "on some slice the mask covers most of the head's section"),
    "no_orientation": (True, "the NIfTI header has no qform or sform: the orientation is a guess"),
    "tta_disagree": (True, "(--tta flip) the masks of the plain and flipped inputs disagree (Dice < 0.5)"),
    "volume_range": (False, "the tumour's share of the head is outside the range of the training data"),
    "intensity": (False, "the FLAIR's intensities are unlike the training data's"),
    "fragmented": (False, "the mask has several sizeable pieces (multifocal tumour or false positives)"),
    "stand_in": (False, "a sequence was missing: the FLAIR stood in for it"),
    "plane": (False, "acquired sagittal, coronal or oblique: resampled to the model's axial grid"),
    "resolution": (False, "pixels over 1.3 mm or slices over 7 mm: coarser than the training data"),
    "thin_slices": (False, "slices under 3 mm: averaged to the model's slice thickness"),
    "tilt": (False, "a gantry tilt was corrected"),
    "sheared": (False, "the NIfTI affine is sheared: resampled along the nearest rotation"),
    "registration": (False, "a sequence needed a large registration (over 10 degrees or 10 mm)"),
    "uncalibrated": (False, "the model file carries no quality calibration: the score is the raw confidence"),
}


@dataclass
class CaseQuality:
    """One case's quality estimate (module docstring).

    Args:
        score: the estimate of the mask's Dice (0-1).
        flags: the flag codes raised (:data:`FLAGS`), worst first.
        review: whether the mask should be looked at.
        point: world coordinates (RAS mm) of the worst flag's region (``None``: none).
        features: the measurements the score and flags come from.
    """

    score: float
    flags: list[str] = field(default_factory=list)
    review: bool = False
    point: list[float] | None = None
    features: dict[str, float] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        """The summary table's columns: ``qc_score``, ``review``, ``qc_flags``."""
        return {"qc_score": round(self.score, 4), "review": self.review, "qc_flags": ";".join(self.flags)}

    def as_dict(self) -> dict[str, Any]:
        """Plain values (collate, JSON and MONAI Label's result)."""
        return {
            "qc_score": float(self.score),
            "review": "yes" if self.review else "no",
            "qc_flags": ";".join(self.flags),
            "qc_point": "" if self.point is None else ",".join(f"{v:.2f}" for v in self.point),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CaseQuality:
        """The inverse of :meth:`as_dict` (values may come back as one-item lists from a collated batch)."""

        def one(value: Any) -> Any:
            return value[0] if isinstance(value, (list, tuple)) and len(value) == 1 else value

        point = str(one(data.get("qc_point", "")) or "")
        flags = str(one(data.get("qc_flags", "")) or "")
        return cls(
            score=float(one(data["qc_score"])),
            flags=[f for f in flags.split(";") if f],
            review=str(one(data.get("review", "no"))) == "yes",
            point=[float(v) for v in point.split(",")] if point else None,
        )


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels, count = ndimage.label(mask, structure=_FULL)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    return labels, sizes


def case_features(
    prob: np.ndarray, mask: np.ndarray, head: np.ndarray, flair: np.ndarray | None = None
) -> dict:
    """The measurements of one case on the model's grid (axial slices on the last axis).

    Args:
        prob: the tumour probability ``(H, W, D)``.
        mask: the final binary mask on the same grid.
        head: the input's foreground (any channel non-zero after normalisation).
        flair: the normalised FLAIR (for the intensity statistic), optional.

    Returns:
        ``mean_prob`` (mean probability inside the mask; 0 when empty), ``voxels``, ``volume_share`` (mask /
        head voxels), ``edge_share`` (share of the mask in components confined to the outermost
        :data:`EDGE_SLICES` slices), ``outside_head`` (share of the mask on background), ``head_cover``
        (largest share of a slice's head section covered), ``largest_share`` (share of the mask in its
        largest component), ``flair_bright`` (share of head voxels with a normalised FLAIR over 2.5) and, as
        ``*_index``, where the worst of each lies.
    """
    mask = np.asarray(mask, dtype=bool)
    prob = np.asarray(prob, dtype=np.float32)
    head = np.asarray(head, dtype=bool)
    voxels = int(mask.sum())
    out: dict[str, Any] = {"voxels": voxels, "mean_prob": float(prob[mask].mean()) if voxels else 0.0}
    out["volume_share"] = voxels / max(1, int(head.sum()))
    depth = mask.shape[2]
    labels, sizes = _components(mask)
    edge = np.zeros(len(sizes), dtype=bool)
    for index in range(len(sizes)):
        slices = np.nonzero((labels == index + 1).any(axis=(0, 1)))[0]
        edge[index] = slices.max() < EDGE_SLICES or slices.min() >= depth - EDGE_SLICES
    out["edge_share"] = float(sizes[edge].sum() / voxels) if voxels else 0.0
    out["edge_index"] = int(np.argmax(sizes * edge)) + 1 if edge.any() else 0
    out["largest_share"] = float(sizes.max() / voxels) if voxels else 1.0
    outside = mask & ~head
    out["outside_head"] = float(outside.sum() / voxels) if voxels else 0.0
    area, section = mask.sum(axis=(0, 1)), head.sum(axis=(0, 1))
    cover = np.where(section > 0, area / np.maximum(section, 1), 0.0)
    out["head_cover"] = float(cover.max()) if voxels else 0.0
    out["cover_slice"] = int(np.argmax(cover))
    if flair is not None and head.any():
        out["flair_bright"] = float((np.asarray(flair)[head] > 2.5).mean())
    out["_labels"] = labels
    return out


def calibrated_score(mean_prob: float, calibration: Mapping[str, Any] | None) -> float:
    """The expected Dice for a mean probability: the calibration's logistic map, or the value itself."""
    if not calibration or "slope" not in calibration:
        return float(mean_prob)
    z = float(calibration["slope"]) * float(mean_prob) + float(calibration["intercept"])
    return float(1.0 / (1.0 + math.exp(-z))) if mean_prob > 0 else 0.0


_REGISTRATION = re.compile(r"rigid registration, ([\d.]+) deg, ([\d.]+) mm")


def _input_flags(meta: Mapping[str, Any]) -> list[str]:
    """The flags the input's metadata raises (scans: what was read and how it was brought to the model)."""

    def text(key: str) -> str:
        value = meta.get(key, "")
        if isinstance(value, (list, tuple)):
            value = value[0] if value else ""
        return str(value or "")

    flags = []
    notes = text(SCAN_META["notes"])
    if "no qform or sform" in notes:
        flags.append("no_orientation")
    if text(SCAN_META["stand_ins"]):
        flags.append("stand_in")
    original = meta.get("original_affine")
    if original is not None and bool(meta.get("spacing_known", False)):
        matrix = np.asarray(original.detach().cpu() if hasattr(original, "detach") else original, float)
        matrix = matrix.reshape(-1, 4, 4)[0][:3, :3]
        sizes = np.linalg.norm(matrix, axis=0)
        normal = matrix[:, 2] / max(sizes[2], 1e-9)
        if abs(normal[2]) < math.cos(math.radians(20)):  # slices not within 20 degrees of axial
            flags.append("plane")
        if sizes[:2].max() > 1.3 or sizes[2] > 7.0:
            flags.append("resolution")
        if sizes[2] < 3.0:
            flags.append("thin_slices")
    if "gantry tilt" in notes:
        flags.append("tilt")
    if "sheared" in notes:
        flags.append("sheared")
    for degrees, mm in _REGISTRATION.findall(text(SCAN_META["alignment"])):
        if float(degrees) > 10 or float(mm) > 10:
            flags.append("registration")
            break
    return flags


def case_quality(
    prob: np.ndarray,
    mask: np.ndarray,
    image: np.ndarray,
    calibration: Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
    affine: np.ndarray | None = None,
    tta_agreement: float | None = None,
) -> CaseQuality:
    """The quality estimate of one case (module docstring), on the model's grid.

    Args:
        prob: the tumour probability ``(H, W, D)``.
        mask: the final mask on that grid.
        image: the normalised model input ``(C, H, W, D)`` (its foreground is the head).
        calibration: the model file's :data:`QUALITY_KEY` entry (``slope``, ``intercept``, ``review_below``,
            training ``ranges``); ``None``: uncalibrated.
        meta: the input's metadata (a scan case's: what was read, ``SCAN_META`` of the scan chain).
        affine: the grid's voxel-to-world affine (for :attr:`CaseQuality.point`).
        tta_agreement: the case's :func:`flip_agreement` when the inferer ran flipped variants (``None``: it
            did not; no ``tta_disagree`` flag then).

    Returns:
        the :class:`CaseQuality`.
    """
    image = np.asarray(image, dtype=np.float32)
    head = (image != 0).any(axis=0)
    flair = image[FLAIR_CHANNEL] if image.shape[0] > FLAIR_CHANNEL else None
    feats = case_features(prob, mask, head, flair)
    labels = feats.pop("_labels")
    calibration = dict(calibration or {})
    score = calibrated_score(feats["mean_prob"], calibration)
    flags: list[str] = []
    where: np.ndarray | None = None
    if feats["voxels"] == 0:
        flags.append("empty")
    if feats["edge_share"] >= 0.1:
        flags.append("edge")
        where = labels == feats["edge_index"]
    if feats["outside_head"] >= 0.05:
        flags.append("outside_head")
        where = where if where is not None else (np.asarray(mask, bool) & ~head)
    if feats["head_cover"] >= 0.5:
        flags.append("head_cover")
        if where is None:
            where = np.zeros_like(np.asarray(mask, bool))
            where[..., feats["cover_slice"]] = np.asarray(mask, bool)[..., feats["cover_slice"]]
    ranges = calibration.get("ranges", {})
    if "volume_share" in ranges and feats["voxels"]:
        low, high = ranges["volume_share"]
        if not low / 2 <= feats["volume_share"] <= high * 1.5:
            flags.append("volume_range")
    if "flair_bright" in ranges and "flair_bright" in feats:
        low, high = ranges["flair_bright"]
        if not low / 2 <= feats["flair_bright"] <= high * 1.5:
            flags.append("intensity")
    if feats["voxels"] and feats["largest_share"] < 0.8:
        flags.append("fragmented")
    if tta_agreement is not None:
        feats["tta_agreement"] = float(tta_agreement)
        if tta_agreement < TTA_AGREEMENT_BELOW:
            flags.append("tta_disagree")
    flags += _input_flags(meta or {})
    threshold = float(calibration.get("review_below", 0.9 if not calibration else 0.7))
    if score < threshold and "empty" not in flags:
        flags.insert(0, "low_confidence")
    if "slope" not in calibration:
        flags.append("uncalibrated")
    review = any(FLAGS[f][0] for f in flags)
    order = {code: index for index, code in enumerate(FLAGS)}
    flags.sort(key=lambda code: (not FLAGS[code][0], order[code]))
    point = None
    if where is not None and where.any() and affine is not None:
        centre = np.argwhere(where).mean(axis=0)
        point = (np.asarray(affine, float) @ np.append(centre, 1.0))[:3].tolist()
    features = {k: float(v) for k, v in feats.items() if not k.endswith("_index") and k != "cover_slice"}
    return CaseQuality(score=score, flags=flags, review=review, point=point, features=features)


def flip_agreement(variants: Sequence[torch.Tensor], threshold: float = 0.5) -> torch.Tensor:
    """How well the masks of test-time variants agree: the lowest Dice between the first variant's mask (the
    plain input's) and each other's, per batch item (1 where both masks are empty).

    Args:
        variants: the probability of each variant, mapped back onto the input, ``(B, 1, ...)`` each; the first
            is the plain input's.
        threshold: the mask's probability threshold.

    Returns:
        ``(B,)`` agreements in [0, 1] (all ones with fewer than two variants).
    """
    reference = (variants[0] > threshold).float()
    lowest = torch.ones(reference.shape[0], device=reference.device)
    for variant in variants[1:]:
        # MONAI's Dice per batch item; ignore_empty=False: two empty masks agree (1)
        mask = (variant > threshold).float()
        dice = compute_dice(mask, reference, include_background=True, ignore_empty=False)
        lowest = torch.minimum(lowest, dice[:, 0])
    return lowest


class QualityEstimated(MapTransform):
    """Estimate each case's quality on the model's grid (:func:`case_quality`) and put it under
    :data:`QC_KEY` (a plain dict, :meth:`CaseQuality.as_dict`); run before the probability goes back onto the
    case's grid. Without the model's input (a probability alone) the head is taken as the whole grid.

    Args:
        keys: the probability's key (``"pred"``, ``(1, H, W, D)``).
        image_key: the model input's key.
        threshold: the mask's probability threshold.
        keep_largest: keep the N largest components, as the post-processing does (0: all).
        calibration: the model file's :data:`QUALITY_KEY` entry (``None``: uncalibrated).
        components: the post-processing's :class:`~pipeline.preprocessing.components.FilterComponentsd`
            (its ``keep``), applied to make the mask as the chain will.

    An ensemble's probability is the mean of its members', so its mean inside the mask is the members' mean
    confidence there: the calibration, fitted on single fold models, applies as it is.
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        image_key: str = "image",
        threshold: float = 0.5,
        keep_largest: int = 0,
        calibration: Mapping[str, Any] | None = None,
        components: Any = None,
    ) -> None:
        super().__init__(keys)
        self.image_key, self.threshold, self.keep_largest = image_key, threshold, keep_largest
        self.calibration = dict(calibration or {})
        self.components = components

    def _mask(self, prob: np.ndarray) -> np.ndarray:
        if self.components is not None:  # the component filter that runs next, as it will run
            prob = prob * self.components.keep(prob)
        mask = prob > self.threshold
        if self.keep_largest and mask.any():
            labels, sizes = _components(mask)
            keep = np.argsort(-sizes, kind="stable")[: self.keep_largest] + 1
            mask = np.isin(labels, keep)
        return mask

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            pred = d[key]
            prob = torch.as_tensor(pred).detach().float().cpu().numpy()[0]
            source = d.get(self.image_key)
            image = (
                np.ones((1, *prob.shape), np.float32)
                if source is None
                else np.asarray(torch.as_tensor(source).detach().float().cpu().numpy())
            )
            meta = getattr(source, "meta", None) or getattr(pred, "meta", {}) or {}
            affine = getattr(pred, "affine", None)
            affine = (
                None
                if affine is None
                else np.asarray(torch.as_tensor(affine).cpu(), float).reshape(-1, 4, 4)[0]
            )
            agreement = (getattr(pred, "meta", None) or {}).get(TTA_AGREEMENT_KEY)
            agreement = None if agreement is None else float(torch.as_tensor(agreement).reshape(-1)[0])
            quality = case_quality(prob, self._mask(prob), image, self.calibration, meta, affine, agreement)
            d[QC_KEY] = quality.as_dict()
        return d


def quality_columns() -> Sequence[str]:
    """The summary table's quality columns, in order."""
    return ("qc_score", "review", "qc_flags")
