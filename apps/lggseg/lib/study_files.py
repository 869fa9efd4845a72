"""The files a client sends: names, images and labels checked before the datastore takes them, and the
atomic copy that puts them in place.

The checks read through the pipeline's own (:mod:`pipeline.ingestion.volume_checks`: the NIfTI header, data
that cannot be read, the slices and NaN or infinite values; the NIfTI suffixes of
:data:`pipeline.ingestion.sequences.NIFTI_SUFFIXES`) and answer with an ``HTTPException`` of one line: 400 a
name that is not plain, 413 over the voxel budget (read from the header, before anything is decompressed),
415 not NIfTI, 422 unreadable or wrong content.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import HTTPException

from lib.server import ServerLimits
from pipeline.ingestion.errors import LGGDataError
from pipeline.ingestion.sequences import CHANNEL_NAMES, FLAIR_CHANNEL, NIFTI_SUFFIXES, NUM_CHANNELS
from pipeline.ingestion.studies import STUDY_ID
from pipeline.ingestion.volume_checks import check_image_volume, check_nifti_header, unreadable_data
from pipeline.safety import partial_postfix

LABEL_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
AFFINE_TOLERANCE_MM = 1e-3
Grid = tuple[tuple[int, ...], np.ndarray]  # a study's (H, W, D) and 4 x 4 affine


def nifti_ext(filename: str) -> str | None:
    """``".nii.gz"`` or ``".nii"`` (:data:`pipeline.ingestion.sequences.NIFTI_SUFFIXES`) when ``filename``
    ends with it (any case), else ``None``."""
    lowered = filename.lower()
    return next((ext for ext in NIFTI_SUFFIXES if lowered.endswith(ext)), None)


def check_id(image_id: Any) -> str:
    """Refuse (400) an image id that is not a plain file-name stem
    (:data:`pipeline.ingestion.studies.STUDY_ID`)."""
    if not isinstance(image_id, str) or not STUDY_ID.match(image_id):
        raise HTTPException(
            status_code=400,
            detail=f"image id {image_id!r} is not allowed: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
        )
    return image_id


def check_tag(tag: Any) -> str:
    """Refuse (400) a label tag that is not a plain folder name."""
    if not isinstance(tag, str) or not LABEL_TAG.match(tag):
        raise HTTPException(
            status_code=400,
            detail=f"label tag {tag!r} is not allowed: use 1-64 letters, digits, '_' or '-' (e.g. final)",
        )
    return tag


def read_nifti(
    path: str | os.PathLike, what: str, limits: ServerLimits | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI file completely: its header first (the pipeline's
    :func:`pipeline.ingestion.volume_checks.check_nifti_header`), the voxel budget, then the data.

    Args:
        path: the file.
        what: how the message names it (``"image"``, ``"label"``).
        limits: the voxel budget (default: :class:`lib.server.ServerLimits`'s).

    Returns:
        the data and the affine.

    Raises:
        HTTPException: 415 not named as NIfTI, 413 over the voxel budget, 422 unreadable header or data.
    """
    if nifti_ext(os.path.basename(path)) is None:
        raise HTTPException(
            status_code=415,
            detail=f"the {what} must be a NIfTI file (.nii.gz or .nii), got {Path(path).name}",
        )
    try:
        image = check_nifti_header(path)  # the header only
    except LGGDataError as error:
        raise HTTPException(status_code=422, detail=f"the {what}: {error}") from None
    (limits or ServerLimits()).check_voxels(image.shape, what)
    try:
        data = np.asanyarray(image.dataobj)  # reads everything: a truncated file fails here
    except Exception as error:  # noqa: BLE001 - nibabel raises many types for damaged files
        raise HTTPException(status_code=422, detail=f"the {what}: {unreadable_data(path, error)}") from None
    return data, image.affine


def check_image_file(path: str | os.PathLike, limits: ServerLimits | None = None) -> Grid:
    """Read a study image completely; it must be ``(H, W, D, 3)`` (a prepared study) or ``(H, W, D)`` (a FLAIR
    alone, as 3D Slicer uploads a user's own scan; the other sequences then take the FLAIR's place).

    Args:
        path: the image file.
        limits: the voxel budget (default: :class:`lib.server.ServerLimits`'s).

    Returns:
        its spatial shape ``(H, W, D)`` and affine.

    Raises:
        HTTPException: 413 over the voxel budget, 415 not NIfTI, 422 unreadable, another shape, fewer than 2
            slices, or NaN or infinite values (they would give an empty mask).
    """
    data, affine = read_nifti(path, "image", limits)
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    prepared = data.ndim == 4 and data.shape[-1] == NUM_CHANNELS
    if not (prepared or data.ndim == 3) or min(data.shape) < 2:
        raise HTTPException(
            status_code=422,
            detail=f"the image has shape {data.shape}; expected a FLAIR volume (H, W, D) or a prepared study "
            f"(H, W, D, {NUM_CHANNELS}) with the channels {', '.join(CHANNEL_NAMES)} "
            "(see `lggseg studies`)",
        )
    channels_first = np.moveaxis(data, -1, 0) if prepared else data[None]
    channels = CHANNEL_NAMES if prepared else (CHANNEL_NAMES[FLAIR_CHANNEL],)
    try:
        check_image_volume(channels_first, Path(path).name, channels)
    except LGGDataError as error:
        raise HTTPException(status_code=422, detail=f"the image {error}") from None
    return data.shape[:3], affine


def check_label_file(
    path: str | os.PathLike,
    image_path: str | os.PathLike | None,
    limits: ServerLimits | None = None,
    grid: Grid | None = None,
) -> None:
    """Check a submitted label against its image: same ``(H, W, D)``, same affine, values 0/1 only.

    Trailing axes of size 1 are accepted (``(H, W, D, 1)``).

    Args:
        path: the label file.
        image_path: the study's NIfTI file (its header gives the grid), or ``None`` when ``grid`` is given.
        limits: the voxel budget.
        grid: the study's ``(H, W, D)`` and affine (a folder study: its FLAIR's,
            :func:`lib.scan_studies.flair_grid`).

    Raises:
        HTTPException: 413 over the voxel budget, 415 not NIfTI, 422 unreadable, wrong shape, values or
            geometry.
    """
    data, affine = read_nifti(path, "label", limits)
    if grid is None:
        image = check_nifti_header(image_path)
        grid = tuple(image.shape[:3]), image.affine
    shape, image_affine = tuple(grid[0]), np.asarray(grid[1])
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.shape != shape:
        raise HTTPException(
            status_code=422, detail=f"the label has shape {data.shape}; its image has (H, W, D) = {shape}"
        )
    values = np.unique(data)
    if not np.isin(values, (0, 1)).all():
        shown = ", ".join(f"{v:g}" for v in values[:8].tolist())
        raise HTTPException(
            status_code=422,
            detail=f"the label holds the values {{{shown}}}; only 0 (background) and 1 (flair_abnormality) "
            "are allowed",
        )
    if not np.allclose(affine, image_affine, atol=AFFINE_TOLERANCE_MM):
        raise HTTPException(
            status_code=422,
            detail="the label's geometry (affine) differs from its image's: export it on the image's grid",
        )


def atomic_copy(source: str | os.PathLike, target: Path, compress: bool = False) -> None:
    """Copy ``source`` to ``target`` through a hidden temporary file in the same folder, then rename.

    The temporary name is the pipeline's (:func:`pipeline.safety.partial_postfix`: recognised and removed by
    :func:`pipeline.safety.remove_stale_temporaries` after a crash) and does not end in ``.nii.gz``, so
    MONAI Label's listing (``fnmatch`` on ``*.nii.gz``, hidden names included) never takes it for a study;
    :func:`pipeline.safety.atomic_path` keeps the extension and cannot be used here. The file gets the usual
    permissions (``0666`` less the umask), not ``mkstemp``'s ``0600``.

    Args:
        source: the file to copy.
        target: the final file.
        compress: gzip the content (a ``.nii`` label stored as ``.nii.gz``).
    """
    tmp = target.with_name(f".{target.name}{partial_postfix('')}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            if compress:
                out.write(gzip.compress(src.read()))
            else:
                shutil.copyfileobj(src, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def info_object(info: Any, field: str) -> dict[str, Any]:
    """Client-supplied info (``params`` of an upload, ``info`` of an update) must be a JSON object (422).

    Returns:
        the object (``{}`` for ``None``).
    """
    if info is None:
        return {}
    if not isinstance(info, dict):
        kind = type(info).__name__
        raise HTTPException(status_code=422, detail=f"{field} must be a JSON object, got {kind}")
    return info
