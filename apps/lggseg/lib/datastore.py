"""MONAI Label's local datastore with the checks it lacks: safe names, valid files, atomic writes.

MONAI Label 0.8.5's ``LocalDatastore`` copies an upload to ``<studies>/<id><ext>`` with the client's ``id``
as given (``../x`` lands outside the studies folder), replaces an existing study of the same id (its labels
then belong to another image), stores labels under the client's ``tag`` as a path, never looks inside the
files, writes them in place (a crash leaves a half-written file) and answers its own errors (unknown image)
with HTTP 500. :class:`CheckedDatastore` answers instead:

- 400: an image id or label tag that is not a plain name (letters, digits, ``.``, ``_``, ``-``);
- 404: an unknown image (saving a label, removing);
- 409: an upload whose id is already a study (remove it first; nothing is replaced);
- 415: a file that is not NIfTI (``.nii.gz`` / ``.nii``);
- 422: an image that cannot be read completely or is not ``(H, W, D, 3)``; a label that cannot be read,
  whose shape differs from its image's ``(H, W, D)``, whose values are not 0/1, or whose geometry (affine)
  differs from its image's.

Files are written to a hidden temporary name in the destination folder (one that the datastore's file
patterns never match) and renamed into place; a label is always stored as ``labels/<tag>/<id>.nii.gz``, so
it can only ever replace the label of the same image and tag.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from fastapi import HTTPException
from filelock import FileLock
from monailabel.datastore.local import DataModel, ImageLabelModel, LocalDatastore

from pipeline.ingestion.studies import STUDY_ID
from pipeline.safety import atomic_write_text, is_inside

LABEL_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
NIFTI_EXTENSIONS = (".nii.gz", ".nii")
LABEL_EXT = ".nii.gz"
AFFINE_TOLERANCE_MM = 1e-3


def nifti_ext(filename: str) -> str | None:
    """``".nii.gz"`` or ``".nii"`` when ``filename`` ends with it, else ``None``."""
    lowered = filename.lower()
    return next((ext for ext in NIFTI_EXTENSIONS if lowered.endswith(ext)), None)


def check_id(image_id: Any) -> str:
    """Refuse (400) an image id that is not a plain file-name stem."""
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


def _read_nifti(path: str | os.PathLike, what: str) -> tuple[np.ndarray, np.ndarray]:
    if nifti_ext(os.path.basename(path)) is None:
        raise HTTPException(
            status_code=415,
            detail=f"the {what} must be a NIfTI file (.nii.gz or .nii), got {Path(path).name}",
        )
    try:
        image = nib.load(path)
        data = np.asanyarray(image.dataobj)  # reads everything: a truncated file fails here
    except Exception as error:  # noqa: BLE001 - nibabel raises many types for damaged files
        raise HTTPException(
            status_code=422,
            detail=f"the {what} is not a readable NIfTI file ({type(error).__name__}: {error})",
        ) from None
    return data, image.affine


def check_image_file(path: str | os.PathLike) -> tuple[tuple[int, ...], np.ndarray]:
    """Read a study image completely; it must be ``(H, W, D, 3)`` (a prepared study) or ``(H, W, D)`` (a FLAIR
    alone, as 3D Slicer uploads a user's own scan; the other sequences then take the FLAIR's place).

    Args:
        path: the image file.

    Returns:
        its spatial shape ``(H, W, D)`` and affine.

    Raises:
        HTTPException: 415 not NIfTI, 422 unreadable or another shape.
    """
    data, affine = _read_nifti(path, "image")
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    prepared = data.ndim == 4 and data.shape[-1] == 3
    if not (prepared or data.ndim == 3) or min(data.shape) < 2:
        raise HTTPException(
            status_code=422,
            detail=f"the image has shape {data.shape}; expected a FLAIR volume (H, W, D) or a prepared study "
            "(H, W, D, 3) with the channels pre-contrast, FLAIR, post-contrast (see `lggseg studies`)",
        )
    return data.shape[:3], affine


def check_label_file(path: str | os.PathLike, image_path: str | os.PathLike) -> None:
    """Check a submitted label against its image: same ``(H, W, D)``, same affine, values 0/1 only.

    Trailing axes of size 1 are accepted (``(H, W, D, 1)``).

    Raises:
        HTTPException: 415 not NIfTI, 422 unreadable, wrong shape, values or geometry.
    """
    data, affine = _read_nifti(path, "label")
    image = nib.load(image_path)
    shape, image_affine = tuple(image.shape[:3]), image.affine
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


def _atomic_copy(source: str | os.PathLike, target: Path, compress: bool = False) -> None:
    """Copy ``source`` to ``target`` through a hidden ``.partial`` file in the same folder, then rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
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


class CheckedDatastore(LocalDatastore):
    """``LocalDatastore`` that validates names and files and writes atomically (module docstring).

    Args:
        datastore_path: the studies folder.
        kwargs: as ``LocalDatastore`` (``extensions``, ``auto_reload``, ``read_only``).
    """

    def __init__(self, datastore_path: str, **kwargs: Any) -> None:
        super().__init__(datastore_path, **kwargs)
        self._root = Path(os.path.realpath(datastore_path))

    def _inside(self, path: Path, folder: Path) -> Path:
        if not is_inside(path, folder):
            raise HTTPException(status_code=400, detail=f"{path.name}: would be written outside the studies")
        return path

    def _image(self, image_id: str) -> ImageLabelModel:
        obj = self._datastore.objects.get(image_id)
        if obj is None:
            raise HTTPException(status_code=404, detail=f"image {image_id!r} is not in the datastore")
        return obj

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        """Add an uploaded study: checked id (400), new id (409), NIfTI (415), readable (H, W, D, 3) (422)."""
        check_id(image_id)
        ext = nifti_ext(os.path.basename(image_filename))
        if ext is None:
            raise HTTPException(
                status_code=415,
                detail=f"upload {image_id!r}: the image must be a NIfTI file (.nii.gz or .nii)",
            )
        images = Path(self._datastore.image_path())
        clash = [images / f"{image_id}{e}" for e in NIFTI_EXTENSIONS if (images / f"{image_id}{e}").exists()]
        if image_id in self._datastore.objects or clash:
            raise HTTPException(
                status_code=409,
                detail=f"image {image_id!r} exists already; remove it first or upload under another id",
            )
        check_image_file(image_filename)
        dest = self._inside(images / f"{image_id}{ext}", self._root)
        with FileLock(self._lock_file):
            if dest.exists():
                raise HTTPException(status_code=409, detail=f"image {image_id!r} exists already")
            _atomic_copy(image_filename, dest)
            info = {**(image_info or {}), "ts": int(time.time()), "name": dest.name}
            self._datastore.objects[image_id] = ImageLabelModel(image=DataModel(info=info, ext=ext))
            self._update_datastore_file(lock=False)
        return image_id

    def save_label(
        self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]
    ) -> str:
        """Save a label as ``labels/<tag>/<id>.nii.gz`` after checking it against its image."""
        obj = self._image(image_id)
        check_tag(label_tag)
        image_path = Path(self.get_image_uri(image_id))
        check_label_file(label_filename, image_path)
        folder = Path(self._datastore.label_path(label_tag))
        dest = self._inside(folder / f"{image_id}{LABEL_EXT}", self._root / self._datastore.labels_dir)
        with FileLock(self._lock_file):
            folder.mkdir(parents=True, exist_ok=True)
            _atomic_copy(label_filename, dest, compress=nifti_ext(os.path.basename(label_filename)) == ".nii")
            info = {**(label_info or {}), "ts": int(time.time()), "name": dest.name}
            obj.labels[label_tag] = DataModel(info=info, ext=LABEL_EXT)
            self._update_datastore_file(lock=False)
        return image_id

    def remove_image(self, image_id: str) -> None:
        """Remove a study and its labels; unknown image: 404."""
        self._image(image_id)
        super().remove_image(image_id)

    def remove_label(self, label_id: str, label_tag: str) -> None:
        """Remove one label; unknown image or tag: 404."""
        if not self._datastore.label(label_id, label_tag):
            raise HTTPException(status_code=404, detail=f"no label {label_tag!r} for image {label_id!r}")
        super().remove_label(label_id, label_tag)

    def _update_datastore_file(self, lock: bool = True) -> None:
        """Write ``datastore_v2.json`` atomically (a crash never leaves it half-written)."""

        def write() -> None:
            self._ignore_event_config = True
            text = json.dumps(self._datastore.model_dump(exclude={"base_path"}), indent=2, default=str)
            atomic_write_text(self._datastore_config_path, text)
            self._config_ts = os.stat(self._datastore_config_path).st_mtime

        if lock:
            with FileLock(self._lock_file):
                write()
        else:
            write()
