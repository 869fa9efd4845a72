"""Plots of the evaluation report: Dice per institution, predicted vs true volumes, overlays of chosen
patients. matplotlib's object API with the Agg canvas (no ``pyplot``, no global backend switch); every
figure is written atomically.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from pipeline.ingestion.kaggle import UNKNOWN_INSTITUTION
from pipeline.visualize.figures import save_png
from pipeline.visualize.overlays import OVERLAY_COLOURS, display_window, draw_outline

__all__ = ["institution_of_record", "plot_dice_per_institution", "plot_overlay", "plot_volumes"]

logger = logging.getLogger(__name__)


_LABELS = {"dice": "Dice", "iou": "IoU", "hd95_mm": "HD95 (mm)", "assd_mm": "ASSD (mm)"}


def institution_of_record(record: Mapping[str, Any]) -> str:
    """The institution a per-patient record is grouped under (``"unknown"`` when it has none)."""
    return str(record.get("institution") or UNKNOWN_INSTITUTION)


def _save_figure(fig: Figure, path: Path, dpi: int = 110) -> Path:
    return save_png(fig, path, dpi, bbox_inches="tight")


# --------------------------------------------------------------------------- serialisation


# --------------------------------------------------------------------------- plots


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def plot_dice_per_institution(
    records: Sequence[Mapping[str, Any]], path: str | Path, metric: str = "dice"
) -> Path:
    """Box plot with the individual patients (jittered strip) of ``metric`` per institution.

    Args:
        records: per-patient dicts with ``institution`` and ``metric``.
        path: the PNG to write (atomically).
        metric: the per-patient key plotted; ``"dice"`` by default.

    Returns:
        the path written.
    """
    groups: dict[str, list[float]] = {}
    for r in records:
        value = r.get(metric)
        if value is not None and not math.isnan(float(value)):
            groups.setdefault(institution_of_record(r), []).append(float(value))
    codes = sorted(groups)
    label = _LABELS.get(metric, metric)
    fig = Figure(figsize=(max(4.0, 1.2 * len(codes) + 2.0), 4.2))
    ax = fig.add_subplot()
    rng = np.random.default_rng(0)
    if codes:
        data = [groups[c] for c in codes]
        positions = np.arange(1, len(codes) + 1)
        ax.boxplot(
            data, positions=positions, widths=0.55, showfliers=False, medianprops={"color": "tab:orange"}
        )
        for pos, values in zip(positions, data, strict=True):
            jitter = rng.uniform(-0.15, 0.15, size=len(values))
            ax.scatter(pos + jitter, values, s=18, alpha=0.75, color="tab:blue", zorder=3)
        ax.set_xticks(positions, [f"{c}\n(n={len(groups[c])})" for c in codes])
        everything = np.concatenate([np.asarray(v) for v in data])
        ax.axhline(float(everything.mean()), color="grey", linestyle="--", linewidth=1, label="overall mean")
        ax.set_title(
            f"{label} per patient by institution: "
            f"mean {everything.mean():.3f}, median {np.median(everything):.3f}"
        )
        ax.legend(loc="lower right", fontsize=8)
    else:
        ax.set_title(f"{label} per institution: no defined values")
    ax.set_xlabel("institution")
    ax.set_ylabel(label)
    if metric in {"dice", "iou", "sensitivity", "precision"}:
        ax.set_ylim(-0.02, 1.02)
    ax.grid(axis="y", alpha=0.3)
    return _save_figure(fig, Path(path))


def plot_volumes(records: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Predicted against true tumour volume per patient (ml), coloured by institution, identity line.

    Args:
        records: per-patient dicts with ``volume_true_mm3``, ``volume_pred_mm3``, ``institution``.
        path: the PNG to write (atomically).

    Returns:
        the path written.
    """
    fig = Figure(figsize=(5.0, 5.0))
    ax = fig.add_subplot()
    by_institution: dict[str, list[tuple[float, float]]] = {}
    for r in records:
        by_institution.setdefault(institution_of_record(r), []).append(
            (float(r["volume_true_mm3"]) / 1000.0, float(r["volume_pred_mm3"]) / 1000.0)
        )
    top = 0.0
    for code in sorted(by_institution):
        xy = np.asarray(by_institution[code])
        ax.scatter(xy[:, 0], xy[:, 1], s=22, alpha=0.8, label=code)
        top = max(top, float(xy.max()))
    top = top * 1.05 if top > 0 else 1.0
    ax.plot([0, top], [0, top], color="grey", linestyle="--", linewidth=1, label="identity")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_aspect("equal")
    ax.set_xlabel("true volume (ml)")
    ax.set_ylabel("predicted volume (ml)")
    ax.set_title("Tumour volume per patient")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    return _save_figure(fig, Path(path))


def _squeeze_mask(mask: Any) -> np.ndarray:
    m = _to_numpy(mask)
    if m.ndim == 4 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 3:
        raise ValueError(f"masks must be (H, W, D) or (1, H, W, D), got shape {m.shape}")
    return m > 0.5


def plot_overlay(
    image: Any,
    truth: Any,
    pred: Any,
    path: str | Path,
    title: str | None = None,
    channel: int = 1,
    slice_index: int | None = None,
) -> int:
    """FLAIR slice with the truth and prediction outlines, on the slice with the largest tumour.

    Args:
        image: (C, H, W, D) channel-first volume (``channel`` is shown; FLAIR is channel 1 in the LGG
            data) or a single-channel (H, W, D) volume; numpy or torch.
        truth: binary truth (H, W, D) or (1, H, W, D).
        pred: binary prediction of the same shape.
        path: the PNG to write (atomically).
        title: the figure title (the slice number is appended).
        channel: which channel of a 4D ``image`` to show.
        slice_index: the slice (last axis) to show; by default the one with the largest truth area
            (the largest predicted area when the truth is empty, the middle slice when both are).

    Returns:
        the slice index shown.
    """
    img = _to_numpy(image).astype(np.float32)
    if img.ndim == 4:
        img = img[channel]
    if img.ndim != 3:
        raise ValueError(f"image must be (C, H, W, D) or (H, W, D), got shape {img.shape}")
    t, p = _squeeze_mask(truth), _squeeze_mask(pred)
    if not (t.shape == p.shape == img.shape):
        raise ValueError(f"image {img.shape}, truth {t.shape} and pred {p.shape} must share (H, W, D)")
    if slice_index is None:
        areas = t.sum(axis=(0, 1))
        if not areas.any():
            areas = p.sum(axis=(0, 1))
        slice_index = int(np.argmax(areas)) if areas.any() else img.shape[-1] // 2
    k = int(slice_index)
    plane = img[..., k]
    low, high = display_window(plane)
    fig = Figure(figsize=(5.0, 5.3))
    ax = fig.add_subplot()
    ax.imshow(plane, cmap="gray", vmin=low, vmax=high)
    colours = OVERLAY_COLOURS
    for name, mask in (("truth", t[..., k]), ("prediction", p[..., k])):
        draw_outline(ax, mask, colours[name])
    handles = [
        Line2D([0], [0], color=colours["truth"], lw=2, label=f"truth ({int(t[..., k].sum())} px)"),
        Line2D([0], [0], color=colours["prediction"], lw=2, label=f"prediction ({int(p[..., k].sum())} px)"),
    ]
    ax.legend(handles=handles, loc="lower right", fontsize=8, framealpha=0.8)
    ax.set_title(f"{title + ' - ' if title else ''}slice {k + 1}/{img.shape[-1]}", fontsize=9)
    ax.set_axis_off()
    _save_figure(fig, Path(path))
    return k


# --------------------------------------------------------------------------- the report
