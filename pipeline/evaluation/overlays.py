"""Overlay drawing and its colours, the one home of both (floor 1): truth in green, prediction in red,
in TensorBoard's validation images and in the report's best / median / worst figures alike."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from pipeline.ingestion.sequences import FLAIR_CHANNEL as FLAIR_CHANNEL  # its home; imported here too

# RGB in [0, 1] (matplotlib accepts the tuples as colours too)
OVERLAY_COLOURS: dict[str, tuple[float, float, float]] = {
    "truth": (0.0, 1.0, 0.0),
    "prediction": (1.0, 0.0, 0.0),
}


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
    low, high = np.percentile(image, [1, 99]) if image.size else (0.0, 1.0)
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
