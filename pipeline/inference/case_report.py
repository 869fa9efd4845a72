"""What a user gets per case beside the mask: the tumour volume, a QC picture and the summary table.

- :func:`tumour_volume_ml`: the mask's volume in mL from its affine (or spacing);
- :func:`write_qc_png`: the FLAIR with the mask's outline on the axial slices with the most tumour, shown as
  the project shows every slice (radiological convention: anterior up, the patient's right on the left of
  the picture; see :mod:`pipeline.ingestion.kaggle`), outline colour from :mod:`pipeline.visualize.overlays`;
- :func:`write_summary_csv`: one row per case, columns :data:`SUMMARY_COLUMNS` in that order.

Every file is written atomically (:func:`pipeline.safety.atomic_path`); figures use matplotlib's object API
with the Agg canvas (no ``pyplot``) and :mod:`pipeline.visualize`, as :mod:`pipeline.evaluation.plots` does.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from pipeline.inference.quality import CaseQuality
from pipeline.inference.writer import case_output_paths
from pipeline.ingestion.forms import summary_of
from pipeline.ingestion.kaggle import ORIENTATION
from pipeline.ingestion.sequences import FLAIR_CHANNEL
from pipeline.preprocessing.scan_chain import SCAN_META
from pipeline.safety import atomic_write_text
from pipeline.visualize.figures import save_png
from pipeline.visualize.overlays import OVERLAY_COLOURS, display_window, draw_outline

logger = logging.getLogger(__name__)

__all__ = [
    "SUMMARY_COLUMNS",
    "tumour_volume_ml",
    "voxel_volume_mm3",
    "read_summary_rows",
    "write_case_outputs",
    "write_qc_png",
    "write_summary_csv",
]

#: the summary table's columns, in order (``sequences``: the sequences read, e.g. ``flair+t1``; ``t1`` /
#: ``t1c``: the file used or the stand-in taken in its place; ``qc_score`` / ``review`` / ``qc_flags``: the
#: quality estimate of :mod:`pipeline.inference.quality`)
SUMMARY_COLUMNS: tuple[str, ...] = (
    "case",
    "flair",
    "sequences",
    "t1",
    "t1c",
    "tumour_voxels",
    "tumour_volume_ml",
    "qc_score",
    "review",
    "qc_flags",
    "seg_nifti",
    "seg_dicom",
    "qc_png",
)
_QC_SLICES = 3


def _array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensors and MONAI MetaTensors
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _volume3d(x: Any, name: str) -> np.ndarray:
    """A 3D array; a leading channel of size 1 (MONAI's channel-first) is dropped."""
    array = _array(x)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3:
        raise ValueError(f"{name} must be 3D (H, W, D) or (1, H, W, D), got shape {tuple(array.shape)}")
    return array


def voxel_volume_mm3(affine_or_spacing: Any) -> float:
    """The volume of one voxel in mm^3.

    Args:
        affine_or_spacing: a 4x4 (or 3x3) voxel-to-world matrix in mm, or three voxel sizes in mm.

    Returns:
        the voxel volume: the absolute determinant of the matrix's 3x3 part (the product of its column norms
        when the axes are orthogonal, as in every scanner grid), or the product of the sizes.

    Raises:
        ValueError: anything else, or a zero / non-finite volume.
    """
    a = np.asarray(_array(affine_or_spacing), dtype=float)
    if a.shape in {(4, 4), (3, 3)}:
        volume = abs(float(np.linalg.det(a[:3, :3])))
    elif a.shape == (3,):
        volume = abs(float(np.prod(a)))
    else:
        raise ValueError(f"expected a 4x4 affine or three voxel sizes, got an array of shape {a.shape}")
    if not math.isfinite(volume) or volume <= 0:
        raise ValueError(f"the voxel volume is {volume} mm^3; the affine or spacing is degenerate")
    return volume


def tumour_volume_ml(mask: Any, affine_or_spacing: Any) -> float:
    """The volume of the mask's foreground (voxels > 0) in mL (1 mL = 1000 mm^3).

    Args:
        mask: binary mask, any shape (numpy, torch or MONAI MetaTensor).
        affine_or_spacing: the mask's 4x4 voxel-to-world affine in mm, or its three voxel sizes in mm.

    Returns:
        the volume in mL.
    """
    return int(np.count_nonzero(_array(mask) > 0)) * voxel_volume_mm3(affine_or_spacing) / 1000.0


def _to_project_orientation(
    flair: np.ndarray, mask: np.ndarray, affine: np.ndarray
) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """Both volumes turned to the project's axes (P, L, S: axial slices on the last axis, shown as the Kaggle
    slices are) and the in-plane voxel sizes (rows, columns) in mm."""
    current = nib.orientations.io_orientation(affine)
    transform = nib.orientations.ornt_transform(current, nib.orientations.axcodes2ornt(ORIENTATION))
    sizes = np.sqrt((np.asarray(affine, dtype=float)[:3, :3] ** 2).sum(axis=0))
    sizes = sizes[np.argsort(transform[:, 0])]  # voxel sizes along the new axes
    return (
        nib.orientations.apply_orientation(flair, transform),
        nib.orientations.apply_orientation(mask, transform),
        (float(sizes[0]), float(sizes[1])),
    )


def write_qc_png(
    flair: Any,
    mask: Any,
    path: str | os.PathLike,
    spacing: Sequence[float] | None = None,
    *,
    affine: Any = None,
    title: str | None = None,
    n_slices: int = _QC_SLICES,
    quality: Any = None,
) -> Path:
    """Write a PNG of the FLAIR with the mask's outline on the axial slices with the most tumour.

    The intensities are windowed on the 1st-99th percentile of the whole FLAIR, the same window on every
    panel. Slices are shown in radiological convention (anterior up, the patient's right on the left).

    Args:
        flair: the FLAIR volume ``(H, W, D)`` or ``(1, H, W, D)`` (numpy, torch or MONAI MetaTensor).
        mask: the binary mask on the FLAIR's grid (same shape).
        path: the PNG to write (atomically); its folder is created when missing.
        spacing: the voxel sizes (mm) along the array's axes, used when ``affine`` is not given; the arrays
            are then taken as already in the project's orientation (P, L, S, as the prepared Kaggle volumes).
        affine: the voxel-to-world (RAS, mm) affine of the arrays (nibabel's, or a MetaTensor's ``affine``):
            the volumes are turned to the project's orientation first, so any scan shows axial slices.
        title: the case name, put at the head of the figure.
        n_slices: how many slices to show (fewer when fewer slices hold tumour); the middle slice when the
            mask is empty, said in the title.
        quality: the case's :class:`pipeline.inference.quality.CaseQuality`: its score, review and flags go in
            the title, and the slice of its worst flag is shown (framed in red) with the others.

    Returns:
        the path written.

    Raises:
        ValueError: the FLAIR and the mask differ in shape or are not 3D.
    """
    image = _volume3d(flair, "flair").astype(np.float32)
    seg = _volume3d(mask, "mask") > 0
    if image.shape != seg.shape:
        raise ValueError(f"flair {image.shape} and mask {seg.shape} must have the same shape")
    if affine is not None:
        affine = np.asarray(_array(affine), dtype=float)
        volume_mm3 = voxel_volume_mm3(affine)
        image, seg, (row_mm, col_mm) = _to_project_orientation(image, seg, affine)
    else:
        sizes = (1.0, 1.0, 1.0) if spacing is None else tuple(float(s) for s in spacing)
        volume_mm3 = voxel_volume_mm3(sizes)
        row_mm, col_mm = sizes[0], sizes[1]
    areas = seg.sum(axis=(0, 1))
    if areas.any():
        chosen = np.argsort(-areas, kind="stable")[: max(1, min(n_slices, int(np.count_nonzero(areas))))]
        shown = sorted(int(k) for k in chosen)
        what = f"tumour {int(seg.sum())} voxels, {seg.sum() * volume_mm3 / 1000.0:.2f} mL"
    else:
        shown = [image.shape[2] // 2]
        what = "no tumour found: middle slice shown"
    flagged = _flagged_slice(quality, affine, image.shape) if affine is not None else None
    if flagged is not None and flagged not in shown:
        shown = sorted([*shown[: max(1, n_slices - 1)], flagged])
    low, high = display_window(image[np.isfinite(image)])
    colour = OVERLAY_COLOURS["prediction"]
    fig = Figure(figsize=(3.4 * len(shown), 3.9))
    for i, k in enumerate(shown):
        ax = fig.add_subplot(1, len(shown), i + 1)
        ax.imshow(image[..., k], cmap="gray", vmin=low, vmax=high, aspect=row_mm / col_mm)
        plane = seg[..., k]
        draw_outline(ax, plane, colour)
        ax.set_title(f"slice {k + 1}/{image.shape[2]}: {int(plane.sum())} px", fontsize=9)
        if k == flagged:
            where = [f for f in ("edge", "outside_head", "head_cover") if f in quality.flags] or quality.flags
            ax.set_title(f"slice {k + 1}: flagged ({where[0]})", fontsize=9, color="red")
            for spine in ax.spines.values():
                spine.set_visible(True)
                spine.set_edgecolor("red")
                spine.set_linewidth(3)
            ax.set_xticks([])
            ax.set_yticks([])
        ax.text(0.02, 0.5, "R", color="yellow", fontsize=9, transform=ax.transAxes, va="center")
        ax.text(0.98, 0.5, "L", color="yellow", fontsize=9, transform=ax.transAxes, va="center", ha="right")
        if k != flagged:
            ax.set_axis_off()
    handle = Line2D([0], [0], color=colour, lw=2, label="predicted FLAIR abnormality")
    fig.legend(handles=[handle], loc="lower center", fontsize=8, frameon=False)
    heading = f"{title + ': ' if title else ''}{what}"
    if quality is not None:
        review = "REVIEW" if quality.review else "no review needed"
        flags = ", ".join(quality.flags) or "no flags"
        heading += f"\nQC score {quality.score:.2f} ({review}); {flags}"
    size = 10 if quality is None else (9 if len(shown) > 1 else 7)  # two lines over one panel: smaller
    fig.suptitle(heading, fontsize=size, color="red" if quality is not None and quality.review else "black")
    if quality is not None:
        fig.subplots_adjust(top=0.80)  # room for the title's second line
    return save_png(fig, path, 100)


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet would run such a text cell as a formula


def _flagged_slice(quality: Any, affine: np.ndarray, shape: Sequence[int]) -> int | None:
    """The displayed slice (project orientation) holding the quality estimate's worst-flag point."""
    if quality is None or not getattr(quality, "point", None):
        return None
    voxel = np.linalg.solve(np.asarray(affine, float), np.append(np.asarray(quality.point, float), 1.0))[:3]
    current = nib.orientations.io_orientation(affine)
    transform = nib.orientations.ornt_transform(current, nib.orientations.axcodes2ornt(ORIENTATION))
    axis = int(np.argwhere(transform[:, 0] == 2)[0][0])  # the input axis that becomes the slice axis
    index, size = int(round(voxel[axis])), int(shape[2])
    index = size - 1 - index if transform[axis, 1] < 0 else index
    return index if 0 <= index < size else None


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4f}"
    if isinstance(value, int):
        return str(value)
    text = "+".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text  # OWASP's CSV-injection rule


def write_summary_csv(rows: Iterable[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Write the per-case summary table (atomically): columns :data:`SUMMARY_COLUMNS` in that order.

    Args:
        rows: one mapping per case with keys among :data:`SUMMARY_COLUMNS` (a missing key or ``None`` is an
            empty cell; floats are written with 4 decimals, booleans as yes/no, lists and tuples joined with
            ``+``, paths as given; a text starting with ``=``, ``+``, ``-`` or ``@`` gets a leading ``'`` so
            that a spreadsheet shows it instead of running it).
        path: the CSV to write; its folder is created when missing.

    Returns:
        the path written.

    Raises:
        ValueError: a row with a key that is not a summary column.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(SUMMARY_COLUMNS)
    for row in rows:
        unknown = sorted(set(row) - set(SUMMARY_COLUMNS))
        if unknown:
            raise ValueError(
                f"summary row has unknown columns {unknown}; known: {', '.join(SUMMARY_COLUMNS)}"
            )
        writer.writerow([_cell(row.get(column)) for column in SUMMARY_COLUMNS])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, buffer.getvalue())


def read_summary_rows(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of an earlier ``summary.csv`` (its own columns; empty when it is missing or unreadable)."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            return [dict(row) for row in csv.DictReader(handle)]
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def _reoriented(volume: np.ndarray, affine: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``volume`` (on the grid of ``affine``) with its axes permuted and flipped to the orientation of
    ``target`` (no interpolation)."""
    transform = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(np.asarray(affine, dtype=float)),
        nib.orientations.io_orientation(np.asarray(target, dtype=float)),
    )
    return nib.orientations.apply_orientation(volume, transform)


def _meta_text(meta: Any, key: str) -> str:
    value = (meta or {}).get(key, "")
    if isinstance(value, (list, tuple)):  # a batch of one not decollated
        value = value[0] if value else ""
    return str(value or "")


def _flair_on(
    image: Any, mask: np.ndarray, affine: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The FLAIR channel of the model's input and the mask on one grid, for the QC picture: the input as
    inverted onto the mask's grid (``infer``), or on the model's grid in other axes (the mask turned alike);
    ``None`` when they cannot be put on one grid."""
    if image is None:
        return None
    array = _array(image)
    if array.ndim != 4:
        return None
    flair = array[FLAIR_CHANNEL if array.shape[0] > FLAIR_CHANNEL else 0]
    grid = _array(image.affine) if hasattr(image, "affine") else affine
    if flair.shape == mask.shape and np.allclose(grid, affine, atol=1e-3):
        return flair, mask, affine
    turned = _reoriented(mask, affine, grid)
    return (flair, turned, grid) if turned.shape == flair.shape else None


def write_case_outputs(
    case: Mapping[str, Any],
    pred: Any,
    output_dir: str | os.PathLike,
    image: Any = None,
    qc: Any = None,
    algorithm_version: str | None = None,
) -> dict:
    """The files of one segmented case beside its NIfTI mask, and its row of the summary table.

    Everything comes from what the loaders carried forward in the prediction's metadata (nothing is read
    again): the QC picture from the model's input (its FLAIR channel), the DICOM SEG from the FLAIR's DICOM
    files (skipped, with one warning naming the attribute, where highdicom cannot make one: the NIfTI mask,
    the QC picture and the summary row are the result).

    Args:
        case: the case dict (:func:`pipeline.ingestion.cases.find_cases`).
        pred: the binary prediction on the case's own grid (``MetaTensor`` ``(1, H, W, D)`` with its affine).
        output_dir: the output folder (``<case>/`` holds the files).
        image: the model's input (channel 1 the FLAIR), on the prediction's grid (inverted with it) or on
            the model's grid.
        qc: the case's quality estimate (:class:`pipeline.inference.quality.CaseQuality`, or its dict): in
            the summary row, the QC picture and the DICOM SEG's series description.
        algorithm_version: the model's version (:func:`pipeline.model_files.model_version`), the DICOM SEG's
            algorithm version; ``None``: the package's.

    Returns:
        the summary row (:data:`SUMMARY_COLUMNS`).
    """
    name = str(case["case"])
    paths = case_output_paths(output_dir, name)
    mask = (_array(pred)[0] > 0).astype(np.uint8)
    affine = _array(pred.affine) if hasattr(pred, "affine") else np.eye(4)
    meta = getattr(pred, "meta", {}) or {}
    row: dict[str, Any] = {"case": name, "seg_nifti": paths["seg_nifti"], **summary_of(case)}
    quality = CaseQuality.from_dict(qc) if isinstance(qc, Mapping) else qc
    if quality is not None:
        row.update(quality.row())
    shown = _flair_on(image, mask, affine)
    if shown is not None:
        write_qc_png(shown[0], shown[1], paths["qc_png"], affine=shown[2], title=name, quality=quality)
    else:
        logger.warning("%s: the QC picture is left out (the model's input is not on the mask's grid)", name)
    files = [f for f in _meta_text(meta, SCAN_META["source_files"]).split("\n") if f]
    if files:
        # imported here: highdicom and pydicom's code dictionaries (about 0.3 s) serve DICOM input only
        from pipeline.inference.dicom_seg import try_write_dicom_seg

        description = "lggseg FLAIR abnormality"
        if quality is not None:  # the score where a PACS user sees it
            description += f" QC {quality.score:.2f}{' REVIEW' if quality.review else ''}"
        versions = {"algorithm_version": algorithm_version} if algorithm_version else {}
        written, reason = try_write_dicom_seg(
            mask, files, paths["seg_dicom"], affine=affine, series_description=description[:64], **versions
        )
        if written is not None:
            row["seg_dicom"] = str(written)
        else:
            logger.warning("%s: no DICOM SEG: %s", name, reason)
    row["qc_png"] = paths["qc_png"] if os.path.exists(paths["qc_png"]) else ""
    row["tumour_voxels"] = int(mask.sum())
    row["tumour_volume_ml"] = tumour_volume_ml(mask, affine)
    return row
