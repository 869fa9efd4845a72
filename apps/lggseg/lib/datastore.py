"""MONAI Label's local datastore with the checks it lacks: safe names, valid files, atomic writes.

MONAI Label 0.8.5's ``LocalDatastore`` copies an upload to ``<studies>/<id><ext>`` with the client's ``id``
as given (``../x`` lands outside the studies folder), replaces an existing study of the same id (its labels
then belong to another image), stores labels under the client's ``tag`` as a path, never looks inside the
files, writes them in place (a crash leaves a half-written file) and answers its own errors (unknown image)
with HTTP 500. :class:`CheckedDatastore` answers instead:

- 400: an image id or label tag that is not a plain name (letters, digits, ``.``, ``_``, ``-``);
- 403: a removal whose file lies outside the studies folder (a ``labels/<tag>`` folder that is a link);
- 404: an unknown image (saving a label, removing, updating its info);
- 409: an upload whose id is already a study (remove it first; nothing is replaced); a removal whose entry
  is a folder, among them a folder study (below);
- 413: an upload larger than the server's ``max_upload_mb``, or a volume of more voxels than its
  ``max_voxels`` (read from the header, before anything is decompressed: a gzip bomb is never unpacked);
- 415: a file that is not NIfTI (``.nii.gz`` / ``.nii``);
- 422: an image that cannot be read completely, holds NaN or infinite values or is neither ``(H, W, D)``
  nor ``(H, W, D, 3)``; a label that cannot be read, whose shape differs from its image's ``(H, W, D)``,
  whose values are not 0/1, or whose geometry (affine) differs from its image's; info that is not a JSON
  object.

Files are written to a hidden temporary name in the destination folder (one that the datastore's file
patterns never match), with the usual permissions (``0666`` less the umask, as ``lggseg studies`` writes
them), and renamed into place; a label is always stored as ``labels/<tag>/<id>.nii.gz``, so it can only
ever replace the label of the same image and tag. An upload the datastore refuses is removed from the
server's temporary folder (:func:`lib.server.discard_upload`).

Removing a study or a label removes its entry in the studies folder and nothing else: a symlink is
removed itself, never its target (MONAI Label's ``LocalDatastore`` resolves the path first, so it deletes
the target, and a whole folder when the link points to one).

A study is a NIfTI file (a prepared ``(H, W, D, 3)`` volume or a FLAIR alone) or a folder of a user's own
scans (:mod:`lib.scan_studies`: a scan case folder, id = its name, listed when the server starts and at each
listing of the datastore). A folder study's label is checked against its FLAIR's grid and stored like any
other (``labels/<tag>/<id>.nii.gz``); the server never writes into the folder nor removes it (409: remove
the folder yourself; its labels are removed with ``DELETE /datastore/label``).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import os
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from fastapi import HTTPException
from filelock import FileLock
from monailabel.datastore.local import DataModel, ImageLabelModel, LocalDatastore

from lib.scan_studies import (
    FOLDER_EXT,
    flair_file,
    flair_grid,
    folder_studies,
    is_folder_study,
    write_flair_nifti,
)
from lib.server import ServerLimits, discard_upload
from pipeline.ingestion.errors import LGGDataError
from pipeline.ingestion.scans import SCAN_KIND, CaseError
from pipeline.ingestion.studies import STUDY_ID
from pipeline.safety import atomic_write_text, is_inside

logger = logging.getLogger(__name__)

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


def _read_nifti(
    path: str | os.PathLike, what: str, limits: ServerLimits | None = None
) -> tuple[np.ndarray, np.ndarray]:
    if nifti_ext(os.path.basename(path)) is None:
        raise HTTPException(
            status_code=415,
            detail=f"the {what} must be a NIfTI file (.nii.gz or .nii), got {Path(path).name}",
        )
    limits = limits or ServerLimits()
    try:
        image = nib.load(path)  # the header only
    except Exception as error:  # noqa: BLE001 - nibabel raises many types for damaged files
        raise HTTPException(
            status_code=422,
            detail=f"the {what} is not a readable NIfTI file ({type(error).__name__}: {error})",
        ) from None
    limits.check_voxels(image.shape, what)
    try:
        data = np.asanyarray(image.dataobj)  # reads everything: a truncated file fails here
    except Exception as error:  # noqa: BLE001 - nibabel raises many types for damaged files
        raise HTTPException(
            status_code=422,
            detail=f"the {what} is not a readable NIfTI file ({type(error).__name__}: {error})",
        ) from None
    return data, image.affine


def check_image_file(
    path: str | os.PathLike, limits: ServerLimits | None = None
) -> tuple[tuple[int, ...], np.ndarray]:
    """Read a study image completely; it must be ``(H, W, D, 3)`` (a prepared study) or ``(H, W, D)`` (a FLAIR
    alone, as 3D Slicer uploads a user's own scan; the other sequences then take the FLAIR's place).

    Args:
        path: the image file.
        limits: the voxel budget (default: :class:`lib.server.ServerLimits`'s).

    Returns:
        its spatial shape ``(H, W, D)`` and affine.

    Raises:
        HTTPException: 413 over the voxel budget, 415 not NIfTI, 422 unreadable, another shape, or NaN or
            infinite values (they would give an empty mask).
    """
    data, affine = _read_nifti(path, "image", limits)
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    prepared = data.ndim == 4 and data.shape[-1] == 3
    if not (prepared or data.ndim == 3) or min(data.shape) < 2:
        raise HTTPException(
            status_code=422,
            detail=f"the image has shape {data.shape}; expected a FLAIR volume (H, W, D) or a prepared study "
            "(H, W, D, 3) with the channels pre-contrast, FLAIR, post-contrast (see `lggseg studies`)",
        )
    if data.dtype.kind in "fc":
        bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        if bad:
            raise HTTPException(
                status_code=422,
                detail=f"the image holds {bad} NaN or infinite values; the model needs numbers",
            )
    return data.shape[:3], affine


def check_label_file(
    path: str | os.PathLike,
    image_path: str | os.PathLike | None,
    limits: ServerLimits | None = None,
    grid: tuple[tuple[int, ...], np.ndarray] | None = None,
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
    data, affine = _read_nifti(path, "label", limits)
    if grid is None:
        image = nib.load(image_path)
        grid = tuple(image.shape[:3]), image.affine
    shape, image_affine = tuple(grid[0]), grid[1]
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
    """Copy ``source`` to ``target`` through a hidden ``.partial`` file in the same folder, then rename; the
    file gets the usual permissions (``0666`` less the umask), not ``mkstemp``'s ``0600``."""
    tmp = target.with_name(f".{target.name}.{os.urandom(6).hex()}.partial")
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


def _info(info: Any, field: str) -> dict[str, Any]:
    """Client-supplied info (``params`` of an upload, ``info`` of an update) must be a JSON object (422)."""
    if info is None:
        return {}
    if not isinstance(info, dict):
        kind = type(info).__name__
        raise HTTPException(status_code=422, detail=f"{field} must be a JSON object, got {kind}")
    return info


class CheckedDatastore(LocalDatastore):
    """``LocalDatastore`` that validates names and files and writes atomically (module docstring).

    Args:
        datastore_path: the studies folder.
        limits: upload size and voxel budget (default: :class:`lib.server.ServerLimits`'s).
        kwargs: as ``LocalDatastore`` (``extensions``, ``auto_reload``, ``read_only``).
    """

    def __init__(self, datastore_path: str, limits: ServerLimits | None = None, **kwargs: Any) -> None:
        self._root = Path(os.path.realpath(datastore_path))
        self._relist = bool(kwargs.get("auto_reload")) and not kwargs.get("read_only")
        # one reconciliation at a time: the file watcher's thread and the requests' both refresh, and
        # LocalDatastore's passes iterate over the objects that another pass changes
        self._reconcile_lock = threading.RLock()
        self.limits = limits or ServerLimits()
        super().__init__(datastore_path, **kwargs)

    def _inside(self, path: Path, folder: Path) -> Path:
        if not is_inside(path, folder):
            raise HTTPException(status_code=400, detail=f"{path.name}: would be written outside the studies")
        return path

    def is_folder_study(self, image_id: str) -> bool:
        """Whether ``image_id`` is a folder study (a user's scan case folder, :mod:`lib.scan_studies`)."""
        obj = self._datastore.objects.get(image_id)
        return obj is not None and obj.image.ext == FOLDER_EXT

    def study_folder(self, image_id: str) -> Path:
        """The folder of a folder study (404 unknown, 409 a file study)."""
        self._image(image_id)
        if not self.is_folder_study(image_id):
            raise HTTPException(status_code=409, detail=f"image {image_id!r} is a file, not a folder study")
        return self._root / image_id

    def _add_non_existing_images(self) -> int:
        """LocalDatastore's NIfTI files, then the folder studies (:func:`lib.scan_studies.folder_studies`);
        a file study keeps its id when a folder has the same name."""
        invalidate = super()._add_non_existing_images()
        objects = self._datastore.objects
        for image_id, folder in folder_studies(self._root, {self._datastore.labels_dir}).items():
            if image_id in objects:
                if objects[image_id].image.ext != FOLDER_EXT:
                    logger.warning("%s: the study %r is a file already: folder not listed", folder, image_id)
                continue
            logger.info("Adding folder study: %s => %s", image_id, folder)
            info = {"ts": int(time.time()), "name": image_id, "kind": SCAN_KIND}
            objects[image_id] = ImageLabelModel(image=DataModel(info=info, ext=FOLDER_EXT))
            invalidate += 1
        return invalidate

    def _remove_non_existing(self) -> int:
        """LocalDatastore's check, plus: a folder study that is gone, became a link, lost its FLAIR-like
        files or gained a link out of the studies folder is no longer listed (its files stay)."""
        invalidate = super()._remove_non_existing()
        objects = self._datastore.objects
        for image_id in [k for k, v in objects.items() if v.image.ext == FOLDER_EXT]:
            if not is_folder_study(self._root, self._root / image_id):
                logger.info("Removing folder study no longer valid: %s", image_id)
                del objects[image_id]
                invalidate += 1
        return invalidate

    def _reconcile_datastore(self) -> None:
        """LocalDatastore's reconciliation of the object list with the files, one at a time."""
        with self._reconcile_lock:
            super()._reconcile_datastore()

    def json(self) -> dict[str, Any]:
        """The datastore (``GET /datastore/?output=all``), after looking for folders copied in meanwhile
        (the file watcher sees only files directly in the studies folder)."""
        with self._reconcile_lock:
            if self._relist:
                self.refresh()
            return super().json()

    def status(self) -> dict[str, Any]:
        """Counts of studies and labels (``GET /datastore/``, ``/info/``), after looking for new folders."""
        with self._reconcile_lock:
            if self._relist:
                self.refresh()
            return super().status()

    def _image(self, image_id: str) -> ImageLabelModel:
        obj = self._datastore.objects.get(image_id)
        if obj is None:
            raise HTTPException(status_code=404, detail=f"image {image_id!r} is not in the datastore")
        return obj

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        """Add an uploaded study: checked id (400), new id (409), size (413), NIfTI (415), readable
        ``(H, W, D)`` or ``(H, W, D, 3)`` (422). The uploaded file is removed from the server's temporary
        folder whatever the answer."""
        try:
            return self._add_image(image_id, image_filename, image_info)
        finally:
            discard_upload(image_filename)

    def _add_image(self, image_id: str, image_filename: str, image_info: Any) -> str:
        check_id(image_id)
        info = _info(image_info, "params")
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
        self.limits.check_size(image_filename, "image")
        check_image_file(image_filename, self.limits)
        dest = self._inside(images / f"{image_id}{ext}", self._root)
        with FileLock(self._lock_file):
            if dest.exists():
                raise HTTPException(status_code=409, detail=f"image {image_id!r} exists already")
            _atomic_copy(image_filename, dest)
            info = {**info, "ts": int(time.time()), "name": dest.name}
            self._datastore.objects[image_id] = ImageLabelModel(image=DataModel(info=info, ext=ext))
            self._update_datastore_file(lock=False)
        return image_id

    def save_label(
        self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]
    ) -> str:
        """Save a label as ``labels/<tag>/<id>.nii.gz`` after checking it against its image. The uploaded
        file is removed from the server's temporary folder whatever the answer."""
        try:
            return self._save_label(image_id, label_filename, label_tag, label_info)
        finally:
            discard_upload(label_filename)

    def _save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: Any) -> str:
        obj = self._image(image_id)
        check_tag(label_tag)
        info = _info(label_info, "params")
        self.limits.check_size(label_filename, "label")
        if obj.image.ext == FOLDER_EXT:
            check_label_file(label_filename, None, self.limits, grid=self._folder_grid(image_id))
        else:
            check_label_file(label_filename, self.get_image_uri(image_id), self.limits)
        folder = Path(self._datastore.label_path(label_tag))
        dest = self._inside(folder / f"{image_id}{LABEL_EXT}", self._root / self._datastore.labels_dir)
        with FileLock(self._lock_file):
            folder.mkdir(parents=True, exist_ok=True)
            _atomic_copy(label_filename, dest, compress=nifti_ext(os.path.basename(label_filename)) == ".nii")
            info = {**info, "ts": int(time.time()), "name": dest.name}
            obj.labels[label_tag] = DataModel(info=info, ext=LABEL_EXT)
            self._update_datastore_file(lock=False)
        return image_id

    def get_image_info(self, image_id: str) -> dict[str, Any]:
        """The image's info; for a folder study ``path`` and ``name`` are its FLAIR file's (3D Slicer's Next
        Sample opens ``path`` when it exists on its machine), or empty and ``<id>.nii.gz`` for a DICOM
        FLAIR or one that cannot be found (Slicer then downloads ``/datastore/image``)."""
        info = super().get_image_info(image_id)
        if self.is_folder_study(image_id):
            try:
                flair = flair_file(self._root / image_id)
            except CaseError:
                flair = None
            info["path"] = str(flair) if flair is not None else ""
            info["name"] = flair.name if flair is not None else f"{image_id}{LABEL_EXT}"
        return info

    def viewable_flair(self, image_id: str, scratch: Path) -> tuple[Path, bool]:
        """A NIfTI file a viewer (3D Slicer) can open for a folder study: its FLAIR file, or for a DICOM
        FLAIR a NIfTI copy written into ``scratch`` (the server's private temporary folder).

        Returns:
            the file and whether it is a temporary copy (the caller removes it).

        Raises:
            HTTPException: 404 unknown, 409 a file study, 422 no readable FLAIR.
        """
        folder = self.study_folder(image_id)
        try:
            flair = flair_file(folder)
            if flair is not None:
                return flair, False
            target = scratch / f"{image_id}.{os.urandom(6).hex()}.nii.gz"
            return write_flair_nifti(folder, target), True
        except (CaseError, LGGDataError) as error:
            raise HTTPException(status_code=422, detail=f"study {image_id!r}: {error}") from None

    def _folder_grid(self, image_id: str) -> tuple[tuple[int, ...], np.ndarray]:
        """A folder study's FLAIR grid; a folder whose FLAIR cannot be found or read is 422."""
        try:
            return flair_grid(self.study_folder(image_id))
        except (CaseError, LGGDataError) as error:
            raise HTTPException(status_code=422, detail=f"study {image_id!r}: {error}") from None

    def _entry(self, folder: str, name: str) -> Path:
        """The entry ``name`` of a folder of the studies, for removal: the folder must resolve inside the
        studies folder (403) and the entry must not be a folder (409); a symlink is the link itself."""
        parent = Path(os.path.realpath(folder))
        if not is_inside(parent, self._root):
            raise HTTPException(
                status_code=403,
                detail=f"{name}: its folder {parent} is outside the studies folder; the server removes "
                "nothing there",
            )
        entry = parent / name
        if entry.is_dir() and not entry.is_symlink():
            raise HTTPException(status_code=409, detail=f"{name} is a folder, not a study file: not removed")
        return entry

    def _remove_entries(self, entries: list[Path]) -> None:
        for entry in entries:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()  # a symlink: the link, never its target
        self.refresh()

    def _label_entries(self, image_id: str, tags: list[str]) -> list[Path]:
        obj = self._image(image_id)
        return [
            self._entry(self._datastore.label_path(tag), f"{image_id}{obj.labels[tag].ext}") for tag in tags
        ]

    def remove_image(self, image_id: str) -> None:
        """Remove a study and its labels (their entries in the studies folder, never a link's target);
        unknown image: 404; a folder study: 409; nothing is removed when any entry is refused (403, 409)."""
        obj = self._image(image_id)
        if obj.image.ext == FOLDER_EXT:
            raise HTTPException(
                status_code=409,
                detail=f"image {image_id!r} is a folder of your scans: the server removes no folder it did "
                "not write; nothing was removed (remove the folder yourself; its labels with "
                "DELETE /datastore/label)",
            )
        entries = self._label_entries(image_id, list(obj.labels))
        entries.append(self._entry(self._datastore.image_path(), f"{image_id}{obj.image.ext}"))
        self._remove_entries(entries)

    def remove_label(self, label_id: str, label_tag: str) -> None:
        """Remove one label (its entry, never a link's target); unknown image or tag: 404."""
        if not self._datastore.label(label_id, label_tag):
            raise HTTPException(status_code=404, detail=f"no label {label_tag!r} for image {label_id!r}")
        self._remove_entries(self._label_entries(label_id, [label_tag]))

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> None:
        """Update an image's info; unknown image: 404, info not a JSON object: 422."""
        self._image(image_id)
        super().update_image_info(image_id, _info(info, "info"))

    def update_label_info(self, label_id: str, label_tag: str, info: dict[str, Any]) -> None:
        """Update a label's info; unknown image or tag: 404, info not a JSON object: 422."""
        if not self._datastore.label(label_id, label_tag):
            raise HTTPException(status_code=404, detail=f"no label {label_tag!r} for image {label_id!r}")
        super().update_label_info(label_id, label_tag, _info(info, "info"))

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
