"""Per-patient volumetric metrics and slice-level figures for binary tumour segmentation.

Every overlap and distance figure is computed with ``monai.metrics``: ``compute_dice``, ``compute_iou``,
``get_confusion_matrix`` + ``compute_confusion_matrix_metric``; HD95 and ASSD reduce one call of MONAI's
``get_edge_surface_distance`` exactly as ``compute_hausdorff_distance(percentile=95)`` and
``compute_average_surface_distance(symmetric=True)`` do (the two would each compute the same
surface distances; the tests check the numbers against both). Lesion-wise detection uses
``scipy.ndimage.label`` (MONAI has no component matching).

Usage::

    from pipeline.evaluation.metrics import SliceMetricsAccumulator, patient_metrics

    slices = SliceMetricsAccumulator()
    records = []
    for patient_id, pred, truth in cases:           # binary (H, W, D) numpy arrays or tensors
        records.append(patient_metrics(pred, truth, spacing=(1.0, 1.0, 1.0), patient_id=patient_id))
        slices.update(pred, truth)                  # slices along the last axis
    slice_summary = slices.compute()                # pooled and per-slice figures + convention text
    # then pipeline.evaluation.report.write_report(records, slice_summary, output_dir, cases=...)

Speed: all metrics are computed on the bounding box of ``pred | truth`` enlarged by a margin of
:data:`CROP_MARGIN` voxels (clipped to the volume). This gives identical numbers to the whole
volume: every foreground voxel of either mask lies in the box, a surface voxel is a foreground
voxel with a background 6-neighbour (voxels beyond the box or the volume are background either
way), Euclidean distances between surface voxels do not depend on where the box starts, and the
true negatives outside the box are added back to the confusion counts. The small torch work runs on
one intra-op thread. On the 80 shared patients (2 CPU cores) this takes about 0.05 s per patient on
average (``scripts/benchmark_metrics.py``), against about 0.6 s for MONAI on the whole volume.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from monai.metrics import (
    compute_confusion_matrix_metric,
    compute_dice,
    compute_iou,
    get_confusion_matrix,
)
from monai.metrics.utils import get_edge_surface_distance
from scipy import ndimage

from pipeline.ingestion.kaggle import UNKNOWN_INSTITUTION, institution_of

__all__ = [
    "CROP_MARGIN",
    "PATIENT_CONVENTIONS",
    "LESION_COUNT_KEYS",
    "PATIENT_METRIC_KEYS",
    "SUMMARY_METRIC_KEYS",
    "SLICE_CONVENTION",
    "SliceMetricsAccumulator",
    "institution_from_patient_id",
    "patient_metrics",
]

#: margin (voxels) added around the bounding box of ``pred | truth`` before computing metrics.
CROP_MARGIN = 2

#: the edge-case conventions of :func:`patient_metrics`, written into the report verbatim.
PATIENT_CONVENTIONS = (
    "Per-patient metrics are computed on the whole 3D volume, tumour (1) vs background (0). "
    "Dice = 2|P∩G|/(|P|+|G|), IoU = |P∩G|/|P∪G|, sensitivity = TP/(TP+FN), precision = TP/(TP+FP). "
    "HD95 = as MONAI compute_hausdorff_distance(percentile=95): the larger of the two directed 95th "
    "percentiles of the distances from each surface voxel of one mask to the nearest surface voxel of "
    "the other (surface = foreground voxel with a background 6-neighbour); ASSD = as MONAI "
    "compute_average_surface_distance(symmetric=True): the mean of both directions' surface distances "
    "pooled. Distances are Euclidean in the units of the voxel spacing (mm); volumes are voxel counts "
    "times the voxel volume (mm^3). Volume difference = V_pred - V_true (signed), absolute volume "
    "difference = |V_pred - V_true|, relative volume difference = (V_pred - V_true)/V_true (signed). "
    "Edge cases: prediction and truth both empty -> Dice = IoU = sensitivity = precision = 1, "
    "HD95 = ASSD = 0, volume differences 0. Truth empty, prediction not -> Dice = IoU = precision = 0, "
    "sensitivity = NaN, HD95 = ASSD = NaN, relative volume difference = NaN. Prediction empty, truth "
    "not -> Dice = IoU = sensitivity = 0, precision = NaN, HD95 = ASSD = NaN. NaN means undefined: "
    "summaries (mean, median, std) exclude NaN values and report how many were excluded "
    "(n_undefined), so HD95/ASSD statistics cover only patients where both masks are non-empty. "
    "Lesions are connected components of each mask (3D 26-connectivity by default: voxels sharing a "
    "face, edge or corner); a true lesion is detected when at least one of its voxels is predicted; a "
    "predicted component is a false positive when none of its voxels is tumour in the truth; lesion "
    "sensitivity = detected/true lesions "
    "(NaN without true lesions)."
)

#: the edge-case convention of :class:`SliceMetricsAccumulator`, written into the report verbatim.
SLICE_CONVENTION = (
    "Slice-level figures treat each axial slice (last axis of the volume) of every evaluated patient "
    "as a 2D image. Pooled figures (pixel accuracy, IoU, Dice, precision, recall, F1, mIoU, confusion "
    "matrix) sum the pixel confusion counts over all slices of all patients; F1 equals Dice at pixel "
    "level; mIoU is the mean of the tumour IoU and the background IoU. The confusion matrix has rows = "
    "truth and columns = prediction, in the order [background, tumour]: [[TN, FP], [FN, TP]]. "
    "Per-slice means average the Dice/IoU of each slice; a slice whose prediction and truth are both "
    "empty counts as a perfect slice (Dice = IoU = 1); a slice with only one of them empty scores 0. "
    "The *_positive means are over slices whose truth contains tumour only."
)

#: the per-patient figures of :func:`patient_metrics` that are summarised over patients (mean, median, ...).
SUMMARY_METRIC_KEYS = (
    "dice",
    "iou",
    "sensitivity",
    "precision",
    "hd95_mm",
    "assd_mm",
    "volume_true_mm3",
    "volume_pred_mm3",
    "volume_diff_mm3",
    "abs_volume_diff_mm3",
    "rel_volume_diff",
    "lesion_sensitivity",
)
#: the lesion counts of :func:`patient_metrics` (summed over patients).
LESION_COUNT_KEYS = ("lesions_true", "lesions_detected", "lesions_pred", "lesions_false_positive")
#: keys of the dict returned by :func:`patient_metrics`, in CSV column order.
PATIENT_METRIC_KEYS = (
    "patient_id",
    "institution",
    "n_slices",
    *SUMMARY_METRIC_KEYS[:-1],
    "tp",
    "fp",
    "fn",
    "tn",
    *LESION_COUNT_KEYS,
    "lesion_sensitivity",
)

_STRUCTURES = {6: 1, 18: 2, 26: 3}


def institution_from_patient_id(patient_id: str | None) -> str | None:
    """Institution (TCGA tissue source site) code of a Kaggle LGG patient id, for the per-patient records.

    Args:
        patient_id: e.g. ``"TCGA_CS_4941_19960909"``.

    Returns:
        the two-character code (``"CS"``, see :func:`pipeline.ingestion.kaggle.institution_of`), or ``None``
        when the id does not carry one.
    """
    code = institution_of(patient_id)
    return None if code == UNKNOWN_INSTITUTION else code


@contextmanager
def _torch_single_thread() -> Iterator[None]:
    """Run the (small, cropped) torch work on one intra-op thread, then restore the setting.

    On the cropped volumes the work is far too small to split across threads, and on a busy
    2-core machine torch's thread pool made each call up to ten times slower.
    """
    previous = torch.get_num_threads()
    if previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _as_binary_numpy(x: Any, name: str) -> np.ndarray:
    """Convert a binary (H, W, D) array/tensor (or (1, H, W, D)) to a numpy bool array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    if x.dtype != bool:
        if not np.all((x == 0) | (x == 1)):
            raise ValueError(f"{name} must be binary (0/1 or bool); threshold/argmax it first")
        x = x.astype(bool)
    return x


def _bounding_box(mask: np.ndarray, margin: int) -> tuple[slice, ...] | None:
    """Bounding box of ``mask`` enlarged by ``margin`` (clipped), or ``None`` when it is empty."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        if idx.size == 0:
            return None
        box.append(slice(max(int(idx[0]) - margin, 0), min(int(idx[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(box)


def _lesion_counts(pred: np.ndarray, truth: np.ndarray, connectivity: int) -> dict[str, Any]:
    structure = ndimage.generate_binary_structure(pred.ndim, min(_STRUCTURES[connectivity], pred.ndim))
    truth_labels, n_true = ndimage.label(truth, structure=structure)
    pred_labels, n_pred = ndimage.label(pred, structure=structure)
    detected = np.unique(truth_labels[pred & truth])
    n_detected = int(np.count_nonzero(detected))
    pred_hits = np.unique(pred_labels[pred & truth])
    n_pred_true_positive = int(np.count_nonzero(pred_hits))
    return {
        "lesions_true": int(n_true),
        "lesions_detected": n_detected,
        "lesions_pred": int(n_pred),
        "lesions_false_positive": int(n_pred) - n_pred_true_positive,
        "lesion_sensitivity": n_detected / n_true if n_true else math.nan,
    }


def patient_metrics(
    pred: Any,
    truth: Any,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    institution: str | None = None,
    patient_id: str | None = None,
    connectivity: int = 26,
) -> dict[str, Any]:
    """Per-patient 3D metrics of a binary prediction against the binary truth.

    See :data:`PATIENT_CONVENTIONS` for the definitions and edge cases (both empty: Dice = IoU = 1,
    HD95 = ASSD = 0; one empty: Dice = IoU = 0, HD95 = ASSD = NaN). The computation runs on the
    bounding box of ``pred | truth`` plus :data:`CROP_MARGIN` voxels, which gives exactly the
    whole-volume values (see the module docstring) at a fraction of the cost.

    Args:
        pred: binary prediction, shape (H, W, D) or (1, H, W, D); numpy array or torch tensor, bool or
            0/1 values.
        truth: binary ground truth of the same shape.
        spacing: voxel spacing in mm along (H, W, D); used for HD95, ASSD and volumes.
        institution: institution code stored in the record; derived from ``patient_id`` when ``None``.
        patient_id: patient identifier stored in the record.
        connectivity: 6, 18 or 26 (3D neighbourhood) for the lesion-wise connected components.

    Returns:
        a flat dict with the keys of :data:`PATIENT_METRIC_KEYS` (floats, NaN where undefined; ints for
        counts), ready for :func:`pipeline.evaluation.report.write_report`.
    """
    if connectivity not in _STRUCTURES:
        raise ValueError(f"connectivity must be one of {sorted(_STRUCTURES)}, got {connectivity}")
    p = _as_binary_numpy(pred, "pred")
    g = _as_binary_numpy(truth, "truth")
    if p.shape != g.shape:
        raise ValueError(f"pred and truth shapes differ: {p.shape} vs {g.shape}")
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != p.ndim:
        raise ValueError(f"spacing needs {p.ndim} values, got {spacing}")
    voxel_volume = float(np.prod(spacing))
    if institution is None:
        institution = institution_from_patient_id(patient_id)

    record: dict[str, Any] = {
        "patient_id": patient_id,
        "institution": institution,
        "n_slices": int(p.shape[-1]),
    }
    box = _bounding_box(p | g, CROP_MARGIN)
    if box is None:  # both empty: a perfect patient by convention
        record.update(
            dice=1.0, iou=1.0, sensitivity=1.0, precision=1.0, hd95_mm=0.0, assd_mm=0.0,
            volume_true_mm3=0.0, volume_pred_mm3=0.0, volume_diff_mm3=0.0, abs_volume_diff_mm3=0.0,
            rel_volume_diff=0.0, tp=0, fp=0, fn=0, tn=int(p.size),
            lesions_true=0, lesions_detected=0, lesions_pred=0, lesions_false_positive=0,
            lesion_sensitivity=math.nan,
        )  # fmt: skip
        return {key: record[key] for key in PATIENT_METRIC_KEYS}

    pc, gc = p[box], g[box]
    with _torch_single_thread():
        record.update(_overlap_and_distances(pc, gc, spacing, voxel_volume, n_outside=p.size - pc.size))
    record.update(_lesion_counts(pc, gc, connectivity))
    return {key: record[key] for key in PATIENT_METRIC_KEYS}


def _overlap_and_distances(
    pc: np.ndarray, gc: np.ndarray, spacing: tuple[float, ...], voxel_volume: float, n_outside: int
) -> dict[str, Any]:
    """MONAI overlap, confusion and surface-distance metrics of the cropped masks."""
    pt = torch.from_numpy(pc)[None, None].float()
    gt = torch.from_numpy(gc)[None, None].float()
    cm = get_confusion_matrix(pt, gt, include_background=True)  # (1, 1, 4): tp, fp, tn, fn
    tp, fp, tn_box, fn = (int(v) for v in cm[0, 0].tolist())
    tn = tn_box + n_outside
    n_pred, n_true = tp + fp, tp + fn

    dice = float(compute_dice(pt, gt, include_background=True, ignore_empty=False)[0, 0])
    iou = float(compute_iou(pt, gt, include_background=True, ignore_empty=False)[0, 0])
    sensitivity = float(compute_confusion_matrix_metric("sensitivity", cm)[0, 0]) if n_true else math.nan
    precision = float(compute_confusion_matrix_metric("precision", cm)[0, 0]) if n_pred else math.nan
    if n_true and n_pred:
        hd95, assd = _surface_distances(pt[0, 0], gt[0, 0], spacing)
    else:
        hd95 = assd = math.nan

    v_true, v_pred = n_true * voxel_volume, n_pred * voxel_volume
    return dict(
        dice=dice,
        iou=iou,
        sensitivity=sensitivity,
        precision=precision,
        hd95_mm=hd95,
        assd_mm=assd,
        volume_true_mm3=v_true,
        volume_pred_mm3=v_pred,
        volume_diff_mm3=v_pred - v_true,
        abs_volume_diff_mm3=abs(v_pred - v_true),
        rel_volume_diff=(v_pred - v_true) / v_true if n_true else math.nan,
        tp=tp,
        fp=fp,
        fn=fn,
        tn=tn,
    )


def _surface_distances(
    pred: torch.Tensor, truth: torch.Tensor, spacing: tuple[float, ...]
) -> tuple[float, float]:
    """HD95 and ASSD from one MONAI surface-distance computation (both masks non-empty).

    ``compute_hausdorff_distance(percentile=95)`` and ``compute_average_surface_distance(symmetric=True)``
    each run ``get_edge_surface_distance`` (edges + a KD-tree query per direction); computing the
    directed distances once and reducing them exactly as those two functions do halves the cost and
    gives the same numbers (checked against both in the tests).
    """
    with warnings.catch_warnings():  # MONAI 1.5-1.6 warns about its own internal argument
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")
        _, distances, _ = get_edge_surface_distance(pred, truth, spacing=spacing, symmetric=True)
    # as compute_hausdorff_distance: the larger of the two directed 95th percentiles
    hd95 = max(float(torch.quantile(d.float(), 0.95)) for d in distances)
    # as compute_average_surface_distance(symmetric=True): the mean of both directions pooled
    assd = float(torch.cat(distances).float().mean())
    return hd95, assd


def _safe_div(num: float, den: float) -> float:
    return float(num) / float(den) if den else math.nan


class SliceMetricsAccumulator:
    """Accumulate slice-level confusion counts over patients and give the figures the field quotes.

    Each slice along the last axis of a (H, W, D) volume is a 2D image. Pooled figures sum the pixel
    counts of all slices; per-slice means average each slice's Dice/IoU with the convention of
    :data:`SLICE_CONVENTION` (both empty = perfect slice). Per-slice counts come from MONAI's
    ``get_confusion_matrix`` over the slices, computed on the in-plane bounding box of
    ``pred | truth`` (pixels outside it are true negatives, added back).

    Args:
        none: ``SliceMetricsAccumulator()``; call :meth:`update` per patient, then :meth:`compute`.

    Example::

        acc = SliceMetricsAccumulator()
        acc.update(pred_volume, truth_volume)   # (H, W, D), binary
        summary = acc.compute()                 # dict: pixel_accuracy, iou, dice, ..., convention
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self._tp: list[np.ndarray] = []
        self._fp: list[np.ndarray] = []
        self._fn: list[np.ndarray] = []
        self._tn: list[np.ndarray] = []

    def update(self, pred: Any, truth: Any) -> None:
        """Add the slices of one patient volume.

        Args:
            pred: binary prediction (H, W, D) or (1, H, W, D), numpy or torch.
            truth: binary truth of the same shape.
        """
        p = _as_binary_numpy(pred, "pred")
        g = _as_binary_numpy(truth, "truth")
        if p.shape != g.shape:
            raise ValueError(f"pred and truth shapes differ: {p.shape} vs {g.shape}")
        if p.ndim == 2:
            p, g = p[..., None], g[..., None]
        depth = p.shape[-1]
        pixels = int(np.prod(p.shape[:-1]))
        tp = np.zeros(depth, dtype=np.int64)
        fp = np.zeros(depth, dtype=np.int64)
        fn = np.zeros(depth, dtype=np.int64)
        box = _bounding_box(p | g, 0)
        if box is not None:
            inplane = box[:-1]
            zs = box[-1]
            # (D', 1, H', W'): one MONAI batch item per slice
            pt = torch.from_numpy(np.moveaxis(p[inplane + (zs,)], -1, 0))[:, None].float()
            gt = torch.from_numpy(np.moveaxis(g[inplane + (zs,)], -1, 0))[:, None].float()
            with _torch_single_thread():
                cm = get_confusion_matrix(pt, gt, include_background=True)[:, 0].round().long().numpy()
            tp[zs], fp[zs], fn[zs] = cm[:, 0], cm[:, 1], cm[:, 3]
        self._tp.append(tp)
        self._fp.append(fp)
        self._fn.append(fn)
        self._tn.append(pixels - tp - fp - fn)

    def compute(self) -> dict[str, Any]:
        """Slice-level figures over everything added so far.

        Returns:
            a dict with ``convention`` (the text of :data:`SLICE_CONVENTION`), slice counts, pooled
            ``pixel_accuracy``, ``iou``, ``dice``, ``precision``, ``recall``, ``f1``, ``iou_background``,
            ``miou``, ``confusion_matrix`` ([[TN, FP], [FN, TP]], rows = truth) and per-slice means
            ``slice_mean_dice``, ``slice_mean_iou`` (all slices) and ``slice_mean_dice_positive``,
            ``slice_mean_iou_positive`` (slices with tumour in the truth). NaN where undefined.
        """
        if self._tp:
            tp, fp, fn, tn = (np.concatenate(x) for x in (self._tp, self._fp, self._fn, self._tn))
        else:
            tp = fp = fn = tn = np.zeros(0, dtype=np.int64)
        TP, FP, FN, TN = (int(x.sum()) for x in (tp, fp, fn, tn))
        # per-slice Dice/IoU with the empty-slice convention
        denom_dice = 2 * tp + fp + fn
        denom_iou = tp + fp + fn
        empty = denom_iou == 0
        with np.errstate(divide="ignore", invalid="ignore"):
            slice_dice = np.where(empty, 1.0, 2 * tp / np.maximum(denom_dice, 1))
            slice_iou = np.where(empty, 1.0, tp / np.maximum(denom_iou, 1))
        positive = (tp + fn) > 0

        def _mean(x: np.ndarray) -> float:
            return float(x.mean()) if x.size else math.nan

        iou = _safe_div(TP, TP + FP + FN)
        iou_bg = _safe_div(TN, TN + FP + FN)
        dice = _safe_div(2 * TP, 2 * TP + FP + FN)
        precision = _safe_div(TP, TP + FP)
        recall = _safe_div(TP, TP + FN)
        f1 = (
            2 * precision * recall / (precision + recall)
            if not (math.isnan(precision) or math.isnan(recall)) and (precision + recall) > 0
            else (0.0 if not (math.isnan(precision) or math.isnan(recall)) else math.nan)
        )
        return {
            "convention": SLICE_CONVENTION,
            "n_slices": int(tp.size),
            "n_slices_truth_positive": int(positive.sum()),
            "n_slices_pred_positive": int(((tp + fp) > 0).sum()),
            "n_slices_both_empty": int(empty.sum()),
            "pixel_accuracy": _safe_div(TP + TN, TP + TN + FP + FN),
            "iou": iou,
            "dice": dice,
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "iou_background": iou_bg,
            "miou": (iou + iou_bg) / 2,
            "confusion_matrix": [[TN, FP], [FN, TP]],
            "confusion_matrix_labels": ["background", "tumour"],
            "slice_mean_dice": _mean(slice_dice),
            "slice_mean_iou": _mean(slice_iou),
            "slice_mean_dice_positive": _mean(slice_dice[positive]),
            "slice_mean_iou_positive": _mean(slice_iou[positive]),
        }
