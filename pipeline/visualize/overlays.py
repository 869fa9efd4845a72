"""Overlay drawing and its colours, the one home of both: truth in green, prediction in red, in TensorBoard's
validation images, the report's best / median / worst figures and the QC picture of every case alike."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

# RGB in [0, 1] (matplotlib accepts the tuples as colours too)
OVERLAY_COLOURS: dict[str, tuple[float, float, float]] = {
    "truth": (0.0, 1.0, 0.0),
    "prediction": (1.0, 0.0, 0.0),
}

DISPLAY_PERCENTILES = (1, 99)
"""The grey window of a slice: its 1st to 99th intensity percentile."""


def display_window(
    values: np.ndarray, percentiles: Sequence[float] = DISPLAY_PERCENTILES
) -> tuple[float, float]:
    """The grey window ``(low, high)`` of ``values``: their ``percentiles``, ``high`` at least ``low + 1``
    where they coincide, ``(0, 1)`` for no values (matplotlib's ``vmin`` / ``vmax``)."""
    low, high = np.percentile(values, percentiles) if values.size else (0.0, 1.0)
    return float(low), float(high) if high > low else float(low) + 1.0


def overlay_rgb(image: np.ndarray, truth: np.ndarray | None, pred: np.ndarray) -> np.ndarray:
    """RGB ``(3, H, W)`` float image: a grey slice with the outlines of the truth and the prediction in
    :data:`OVERLAY_COLOURS`.

    Args:
        image: the grey slice ``(H, W)`` (any range; scaled to its 1st-99th percentile).
        truth: binary truth ``(H, W)`` or ``None``.
        pred: binary prediction ``(H, W)``.

    Returns:
        the ``(3, H, W)`` float32 image in [0, 1].
    """
    low, high = np.percentile(image, DISPLAY_PERCENTILES) if image.size else (0.0, 1.0)
    grey = np.clip((image - low) / (high - low if high > low else 1.0), 0, 1)
    rgb = np.stack([grey, grey, grey])
    for mask, colour in ((truth, OVERLAY_COLOURS["truth"]), (pred, OVERLAY_COLOURS["prediction"])):
        if mask is None:
            continue
        mask = mask > 0
        outline = mask & ~ndimage.binary_erosion(mask)
        for c in range(3):
            rgb[c][outline] = colour[c]
    return rgb.astype(np.float32)


def draw_outline(ax: Any, mask: np.ndarray, colour: Sequence[float]) -> None:
    """The outline of a binary 2D ``mask`` as a contour on the matplotlib axis ``ax`` (nothing for an empty or
    a full mask: it has no outline)."""
    if mask.any() and not mask.all():
        ax.contour(mask.astype(np.float32), levels=[0.5], colors=[colour], linewidths=1.2)
