"""Where the slices of a DICOM series lie, one rule for the reader and the DICOM SEG writer.

:mod:`pipeline.ingestion.scan_reading` decides from it whether a series forms one volume (evenly spaced
slices, a gantry tilt to resample) and :mod:`pipeline.inference.dicom_seg` whether the SEG may state a
slice spacing: both measure the slice positions along the slice normal (:func:`positions_along_normal`)
against the same tolerances (:data:`SPACING_TOLERANCE`, :data:`TILT_TOLERANCE_MM`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "SPACING_TOLERANCE",
    "TILT_TOLERANCE_MM",
    "in_plane_offsets",
    "is_tilted",
    "positions_along_normal",
    "slice_normal",
    "uneven_spacing",
]

SPACING_TOLERANCE = 0.01
"""Slices are evenly spaced when every gap is within this fraction of the median gap."""
TILT_TOLERANCE_MM = 0.01
"""Slice positions off the slice normal by less than this (in-plane, per slice) are not a gantry tilt."""
SAME_POSITION_MM = 1e-4
"""Two slices closer than this along the normal share one position."""


def slice_normal(row: np.ndarray, column: np.ndarray) -> np.ndarray:
    """The unit slice normal of slices with these row and column directions (ImageOrientationPatient).

    Args:
        row: the row direction (the first three numbers of ImageOrientationPatient).
        column: the column direction (the last three).

    Returns:
        ``row x column``, of length 1.
    """
    normal = np.cross(np.asarray(row, dtype=float), np.asarray(column, dtype=float))
    return normal / np.linalg.norm(normal)


def positions_along_normal(
    positions: Sequence[np.ndarray] | np.ndarray, row: np.ndarray, column: np.ndarray
) -> np.ndarray:
    """Each slice's position (ImagePositionPatient, mm) along the slice normal.

    Args:
        positions: ``(n, 3)`` slice positions.
        row: the row direction.
        column: the column direction.

    Returns:
        ``(n,)`` distances in mm along :func:`slice_normal`, in the order given (sort with
        ``np.argsort(..., kind="stable")``).
    """
    return np.asarray(positions, dtype=float).reshape(-1, 3) @ slice_normal(row, column)


def uneven_spacing(along: np.ndarray) -> str | None:
    """Why sorted positions along the normal are not evenly spaced, or ``None`` when they are.

    Args:
        along: :func:`positions_along_normal`, sorted.

    Returns:
        ``"N slices share a position ..."``, ``"slices are not evenly spaced (...): a slice is missing"``
        or ``None`` (also for fewer than two slices).
    """
    gaps = np.diff(np.asarray(along, dtype=float))
    if gaps.size == 0:
        return None
    shared = int(np.sum(gaps < SAME_POSITION_MM))
    if shared:
        return f"{shared} slices share a position (several echoes or time points?)"
    median = float(np.median(gaps))
    worst = int(np.argmax(np.abs(gaps - median)))
    if abs(gaps[worst] - median) > SPACING_TOLERANCE * median:
        return (
            f"slices are not evenly spaced ({gaps[worst]:.3g} mm after slice {worst + 1}, "
            f"{median:.3g} mm elsewhere): a slice is missing"
        )
    return None


def in_plane_offsets(
    positions: Sequence[np.ndarray] | np.ndarray, row: np.ndarray, column: np.ndarray
) -> np.ndarray:
    """``(n, 2)`` in-plane offsets (mm along the row and column directions) of each slice from the first.

    Args:
        positions: ``(n, 3)`` slice positions, in slice order.
        row: the row direction.
        column: the column direction.
    """
    steps = np.asarray(positions, dtype=float).reshape(-1, 3)
    steps = steps - steps[0]
    return np.stack([steps @ np.asarray(row, dtype=float), steps @ np.asarray(column, dtype=float)], axis=1)


def is_tilted(offsets: np.ndarray) -> bool:
    """Whether slices drift in-plane from one to the next (a gantry tilt, or worse).

    Args:
        offsets: :func:`in_plane_offsets` of the slices in slice order.

    Returns:
        ``True`` when some slice lies more than :data:`TILT_TOLERANCE_MM` per slice off the first one's
        normal.
    """
    offsets = np.asarray(offsets, dtype=float)
    return bool(offsets.size) and float(np.max(np.abs(offsets))) > TILT_TOLERANCE_MM * len(offsets)
