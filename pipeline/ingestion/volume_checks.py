"""Checks of the input volumes at load time, each failing in one line that names the file.

What :class:`pipeline.transforms.LoadVolumed` refuses before a case reaches the model (the own-scans path has
its own, :func:`pipeline.ingestion.scan_reading.read_scan`):

- anything but a regular file (a named pipe would block the reader forever; a socket, a device):
  :func:`check_regular_file`, also used wherever input files are listed;
- a NIfTI file whose header cannot be read (empty, not gzip-compressed though named ``.gz``, not NIfTI):
  :func:`check_nifti_header`; data that cannot be read (truncated, corrupt): :func:`unreadable_data`;
- an image whose channels are not the model's (the data set's three,
  :data:`pipeline.ingestion.sequences.CHANNEL_NAMES`), a volume of fewer than 2 slices, NaN or Inf voxels
  (they make the normalisation give an empty mask): :func:`check_image_volume`.

NaN or Inf voxels are counted and refused by one rule wherever an image is read (:func:`count_non_finite`,
:func:`check_finite`): here, in the own-scans reader and in the MONAI Label app.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.ingestion.errors import LGGDataError

MIN_SLICES = 2
_GZIP_MAGIC = b"\x1f\x8b"


def is_regular_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a regular file (symlinks followed); ``False`` for pipes, sockets, devices, folders.

    Unlike ``open``, this never blocks on a named pipe.
    """
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def check_regular_file(path: str | os.PathLike, what: str = "file") -> Path:
    """Refuse a path that is missing or is not a regular file, before anything opens it.

    Args:
        path: the input file.
        what: how the message names it (``"image file"``, ``"label file"``).

    Returns:
        ``path`` as a ``Path``.

    Raises:
        LGGDataError: ``"<path>: not found"`` or ``"<path>: not a regular file (...)"``.
    """
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise LGGDataError(f"{path}: {what} not found") from None
    except OSError as error:
        raise LGGDataError(f"{path}: cannot read the {what} ({error.strerror or error})") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a named pipe, socket or device"
        raise LGGDataError(f"{path}: not a regular file ({kind}); give the {what} itself")
    return path


def _gzip_hint(path: Path) -> str:
    """What the first bytes say about a name ending in ``.gz`` or not (empty when they agree)."""
    try:
        with open(path, "rb") as handle:
            compressed = handle.read(2) == _GZIP_MAGIC
    except OSError:
        return ""
    if path.name.lower().endswith(".gz") and not compressed:
        return "; it is not gzip-compressed although named .gz: rename it to .nii"
    if path.name.lower().endswith(".nii") and compressed:
        return "; it is gzip-compressed although named .nii: rename it to .nii.gz"
    return ""


def _reason(error: BaseException, path: Path) -> str:
    """An exception's message on one line, without the file name the caller already shows."""
    text = " ".join(str(error).replace(f"'{path}'", "").replace(str(path), "").split()).strip(" :")
    return text or type(error).__name__


def check_nifti_header(path: str | os.PathLike) -> Any:
    """Refuse a file that is not a NIfTI image nibabel can open (reads the header only).

    Args:
        path: a regular ``.nii`` / ``.nii.gz`` file (:func:`check_regular_file` first).

    Returns:
        the nibabel image (its data not read yet).

    Raises:
        LGGDataError: an empty file, a wrong compression for its name, an unreadable header.
    """
    import nibabel as nib

    path = Path(path)
    if path.stat().st_size == 0:
        raise LGGDataError(f"{path}: empty file (0 bytes), not a NIfTI image")
    try:
        return nib.load(path)
    except Exception as error:  # nibabel raises several types for a broken header
        raise LGGDataError(
            f"{path}: not a readable NIfTI file ({_reason(error, path)}){_gzip_hint(path)}"
        ) from None


def unreadable_data(path: str | os.PathLike, error: BaseException) -> LGGDataError:
    """The one-line error for a NIfTI file whose header was read but whose data could not be.

    Args:
        path: the file.
        error: what the reader raised.

    Returns:
        the :class:`LGGDataError` to raise (``"<path>: truncated or corrupt file (...)"``).
    """
    path = Path(path)
    return LGGDataError(f"{path}: truncated or corrupt file ({_reason(error, path)})")


def count_non_finite(array: Any) -> int:
    """How many values of an image are NaN or Inf (0 for integer data).

    Args:
        array: a NumPy array, a PyTorch tensor (a MONAI ``MetaTensor``) or a SimpleITK image.

    Returns:
        the number of NaN and infinite values.
    """
    image = array  # a SimpleITK image must outlive the view of its voxels
    if type(image).__module__.startswith("SimpleITK"):
        import SimpleITK as sitk

        array = sitk.GetArrayViewFromImage(image)
    if isinstance(array, torch.Tensor):
        if not (array.is_floating_point() or array.is_complex()):
            return 0
        return int((~torch.isfinite(array)).sum())
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.inexact):
        return 0
    return int(array.size - np.count_nonzero(np.isfinite(array)))


def check_finite(array: Any, where: str | os.PathLike, what: str = "the scan") -> None:
    """Refuse an image with NaN or Inf values: they spread through the normalisation to the whole volume,
    which gives an empty mask.

    Args:
        array: the image (see :func:`count_non_finite`).
        where: the file or folder it was read from (named in the message).
        what: how the message names it (``"the scan"``, ``"the image"``).

    Raises:
        LGGDataError: ``"<where>: N voxels are NaN or Inf; <what> cannot be segmented"``.
    """
    bad = count_non_finite(array)
    if bad:
        raise LGGDataError(f"{where}: {bad} voxels are NaN or Inf; {what} cannot be segmented")


def check_image_volume(
    image: np.ndarray | torch.Tensor,
    where: str | os.PathLike,
    channels: Sequence[str],
) -> None:
    """Refuse an image the model cannot segment: wrong channels, fewer than 2 slices, NaN or Inf voxels.

    Args:
        image: channel-first ``(C, H, W, D)`` (as loaded with ``ensure_channel_first``).
        where: the file or folder it was read from (named in the message).
        channels: the model's input channels, by name (e.g. ``CHANNEL_NAMES``).

    Raises:
        LGGDataError: e.g. ``"<where>: 2 channels, the model needs 3 (pre-contrast, FLAIR, post-contrast)"``.
    """
    shape = tuple(image.shape)
    if len(shape) != 4:
        spatial = shape[1:] if len(shape) > 1 else shape
        raise LGGDataError(
            f"{where}: a {len(spatial)}D image of shape {spatial}; the model needs a 3D volume of "
            f"{len(channels)} channels (H, W, D, {len(channels)})"
        )
    if shape[0] != len(channels):
        raise LGGDataError(
            f"{where}: {shape[0]} channel{'s' if shape[0] != 1 else ''}, the model needs {len(channels)} "
            f"({', '.join(channels)})"
        )
    if shape[-1] < MIN_SLICES:
        count = f"{shape[-1]} slice" + ("" if shape[-1] == 1 else "s")
        raise LGGDataError(
            f"{where}: {count} of {shape[1]}x{shape[2]}; a volume needs at least {MIN_SLICES} slices"
        )
    check_finite(image, where, what="the image")
