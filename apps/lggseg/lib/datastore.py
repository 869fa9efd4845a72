"""MONAI Label's local datastore with the checks it lacks: safe names, valid files, atomic writes.

MONAI Label 0.8.5's ``LocalDatastore`` copies an upload to ``<studies>/<id><ext>`` with the client's ``id``
as given (``../x`` lands outside the studies folder), replaces an existing study of the same id (its labels
then belong to another image), stores labels under the client's ``tag`` as a path, never looks inside the
files, writes them in place (a crash leaves a half-written file) and answers its own errors (unknown image)
with HTTP 500. :class:`CheckedDatastore` answers instead:

- 400: an image id or label tag that is not a plain name (letters, digits, ``.``, ``_``, ``-``);
- 403: a removal whose file lies outside the studies folder (a ``labels/<tag>`` folder that is a link); a
  read of a study or a label that leads outside the studies folder (below);
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

Every read of a study or a label (inference, the downloads, the dataset archive, fine-tuning, the grid a
submitted label is checked against) reads a private copy made by :mod:`lib.confined`
(:meth:`CheckedDatastore.readable_study`, :meth:`CheckedDatastore.readable_label`): a file that leads
outside the studies folder, through a link there at start or added or swapped in later (a study, a label, a
sub-folder or a DICOM file of a folder study), is refused with 403 and never read.

MONAI Label's private state is reached only through :class:`lib.monailabel_adapter.LocalDatastoreAdapter`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import HTTPException
from monailabel.datastore.local import ImageLabelModel
from monailabel.interfaces.datastore import DefaultLabelTag

from lib.confined import OutsideStudiesError, snapshot
from lib.monailabel_adapter import LocalDatastoreAdapter, new_image_entry, new_label_entry
from lib.scan_studies import (
    FOLDER_EXT,
    flair_file,
    flair_grid,
    folder_studies,
    is_folder_study,
    write_flair_nifti,
)
from lib.server import ServerLimits, discard_upload, temp_folder
from lib.study_files import (
    Grid,
    atomic_copy,
    check_id,
    check_image_file,
    check_label_file,
    check_tag,
    info_object,
    nifti_ext,
)
from pipeline.ingestion.errors import CaseError, LGGDataError
from pipeline.ingestion.scan_cases import SCAN_KIND
from pipeline.ingestion.sequences import NIFTI_SUFFIXES
from pipeline.ingestion.studies import STUDY_SUFFIX
from pipeline.ingestion.volume_checks import check_nifti_header
from pipeline.safety import is_inside

__all__ = [
    "CheckedDatastore",
    "check_id",
    "check_image_file",
    "check_label_file",
    "check_tag",
    "read_errors",
    "scratch_folder",
]

logger = logging.getLogger(__name__)

LABEL_EXT = STUDY_SUFFIX  # labels are stored as lggseg studies writes them


@contextlib.contextmanager
def read_errors(what: str) -> Iterator[None]:
    """Answer the errors of a confined read (:mod:`lib.confined`) in one line: 403 a file leading outside
    the studies folder, 404 a file that is gone, 422 one that cannot be read.

    Args:
        what: the study or label named in the message (``"study 'x'"``).
    """
    try:
        yield
    except OutsideStudiesError as error:
        raise HTTPException(status_code=403, detail=f"{what}: {error}") from None
    except FileNotFoundError as error:
        raise HTTPException(status_code=404, detail=f"{what}: {error.strerror or error}") from None
    except (LGGDataError, CaseError) as error:
        raise HTTPException(status_code=422, detail=f"{what}: {' '.join(str(error).split())}") from None


@contextlib.contextmanager
def scratch_folder() -> Iterator[Path]:
    """A new private folder in the server's temporary folder (:func:`lib.server.temp_folder`), removed
    with everything in it at the end."""
    folder = Path(tempfile.mkdtemp(prefix="read-", dir=temp_folder()))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _inside_or_400(path: Path, folder: Path) -> Path:
    if not is_inside(path, folder):
        raise HTTPException(status_code=400, detail=f"{path.name}: would be written outside the studies")
    return path


def _removable_entry(root: Path, folder: Path, name: str) -> Path:
    """The entry ``name`` of a folder of the studies, for removal: the folder must resolve inside the
    studies folder (403) and the entry must not be a folder (409); a symlink is the link itself."""
    parent = Path(os.path.realpath(folder))
    if not is_inside(parent, root):
        raise HTTPException(
            status_code=403,
            detail=f"{name}: its folder {parent} is outside the studies folder; the server removes "
            "nothing there",
        )
    entry = parent / name
    if entry.is_dir() and not entry.is_symlink():
        raise HTTPException(status_code=409, detail=f"{name} is a folder, not a study file: not removed")
    return entry


class CheckedDatastore(LocalDatastoreAdapter):
    """``LocalDatastore`` that validates names and files, writes atomically and reads only inside the studies
    folder (module docstring).

    Args:
        datastore_path: the studies folder.
        limits: upload size and voxel budget (default: :class:`lib.server.ServerLimits`'s).
        kwargs: as ``LocalDatastore`` (``extensions``, ``auto_reload``, ``read_only``).
    """

    def __init__(self, datastore_path: str, limits: ServerLimits | None = None, **kwargs: Any) -> None:
        self.root = Path(os.path.realpath(datastore_path))
        self.relist = bool(kwargs.get("auto_reload")) and not kwargs.get("read_only")
        self.limits = limits or ServerLimits()
        super().__init__(datastore_path, **kwargs)

    # ------------------------------------------------------------------------------------------ listing
    def is_folder_study(self, image_id: str) -> bool:
        """Whether ``image_id`` is a folder study (a user's scan case folder, :mod:`lib.scan_studies`)."""
        obj = self.objects.get(image_id)
        return obj is not None and obj.image.ext == FOLDER_EXT

    def study_folder(self, image_id: str) -> Path:
        """The folder of a folder study (404 unknown, 409 a file study)."""
        self.entry(image_id)
        if not self.is_folder_study(image_id):
            raise HTTPException(status_code=409, detail=f"image {image_id!r} is a file, not a folder study")
        return self.root / image_id

    def add_extra_images(self) -> int:
        """The folder studies (:func:`lib.scan_studies.folder_studies`), after MONAI Label's NIfTI files; a
        file study keeps its id when a folder has the same name."""
        invalidate = 0
        objects = self.objects
        for image_id, folder in folder_studies(self.root, {self.labels_dir_name()}).items():
            if image_id in objects:
                if objects[image_id].image.ext != FOLDER_EXT:
                    logger.warning("%s: the study %r is a file already: folder not listed", folder, image_id)
                continue
            logger.info("Adding folder study: %s => %s", image_id, folder)
            info = {"ts": int(time.time()), "name": image_id, "kind": SCAN_KIND}
            objects[image_id] = new_image_entry(info, FOLDER_EXT)
            invalidate += 1
        return invalidate

    def remove_invalid_images(self) -> int:
        """After MONAI Label's check: a folder study that is gone, became a link, lost its FLAIR-like files or
        gained a link out of the studies folder is no longer listed (its files stay)."""
        invalidate = 0
        objects = self.objects
        for image_id in [k for k, v in objects.items() if v.image.ext == FOLDER_EXT]:
            if not is_folder_study(self.root, self.root / image_id):
                logger.info("Removing folder study no longer valid: %s", image_id)
                del objects[image_id]
                invalidate += 1
        return invalidate

    def json(self) -> dict[str, Any]:
        """The datastore (``GET /datastore/?output=all``), after looking for folders copied in meanwhile
        (the file watcher sees only files directly in the studies folder)."""
        with self.reconcile_lock:
            if self.relist:
                self.refresh()
            return super().json()

    def status(self) -> dict[str, Any]:
        """Counts of studies and labels (``GET /datastore/``, ``/info/``), after looking for new folders."""
        with self.reconcile_lock:
            if self.relist:
                self.refresh()
            return super().status()

    def entry(self, image_id: str) -> ImageLabelModel:
        """The table entry of a study; 404 when unknown."""
        obj = self.objects.get(image_id)
        if obj is None:
            raise HTTPException(status_code=404, detail=f"image {image_id!r} is not in the datastore")
        return obj

    # -------------------------------------------------------------------------------------- reading
    def readable_study(self, image_id: str, scratch: Path) -> Path:
        """A private copy of a study in ``scratch``, made without ever reading outside the studies folder
        (:func:`lib.confined.snapshot`): ``<id><ext>`` for a file study, the folder ``<id>`` (what the scan
        reader looks at) for a folder study.

        Args:
            image_id: the study.
            scratch: a private folder of the caller (:func:`scratch_folder`).

        Returns:
            the copy.

        Raises:
            HTTPException: 404 unknown or gone, 403 a file leading outside the studies folder, 422 not a
                regular file.
        """
        obj = self.entry(image_id)
        name = f"{image_id}{obj.image.ext}"
        with read_errors(f"study {image_id!r}"):
            return snapshot(self.root, self.images_folder() / name, scratch, name)

    def readable_label(self, image_id: str, tag: str, scratch: Path) -> Path:
        """A private copy of a study's label in ``scratch`` (as :meth:`readable_study`).

        Returns:
            the copy, ``<scratch>/<tag>-<id><ext>``.

        Raises:
            HTTPException: 404 no such label or gone, 403 leading outside, 422 not a regular file.
        """
        label = self.entry(image_id).labels.get(tag) if isinstance(tag, str) else None
        if label is None:
            raise HTTPException(status_code=404, detail=f"no label {tag!r} for image {image_id!r}")
        name = f"{image_id}{label.ext}"
        with read_errors(f"label {tag!r} of {image_id!r}"):
            return snapshot(self.root, self.label_folder(tag) / name, scratch, f"{tag}-{name}")

    def viewable_image(self, image_id: str, scratch: Path) -> Path:
        """The NIfTI file a viewer (3D Slicer) opens for a study, in ``scratch``: a file study's copy; a
        folder study's FLAIR (its file, or a NIfTI copy of a DICOM series).

        Raises:
            HTTPException: 404 unknown, 403 leading outside the studies folder, 422 no readable FLAIR.
        """
        copy = self.readable_study(image_id, scratch)
        if not self.is_folder_study(image_id):
            return copy
        with read_errors(f"study {image_id!r}"):
            flair = flair_file(copy)
            if flair is not None:
                return flair
            return write_flair_nifti(copy, scratch / f"{image_id}{LABEL_EXT}")

    def study_grid(self, image_id: str) -> Grid:
        """The grid a study's label lies on: the image's ``(H, W, D)`` and affine (a folder study: its
        FLAIR's, :func:`lib.scan_studies.flair_grid`).

        Raises:
            HTTPException: 404 unknown, 403 leading outside the studies folder, 422 unreadable.
        """
        with scratch_folder() as scratch:
            copy = self.readable_study(image_id, scratch)
            with read_errors(f"study {image_id!r}"):
                if self.is_folder_study(image_id):
                    return flair_grid(copy)
                image = check_nifti_header(copy)
                return tuple(int(n) for n in image.shape[:3]), np.asarray(image.affine)

    def get_image_info(self, image_id: str) -> dict[str, Any]:
        """The image's info; for a folder study ``path`` and ``name`` are its FLAIR file's (3D Slicer's Next
        Sample opens ``path`` when it exists on its machine), or empty and ``<id>.nii.gz`` for a DICOM
        FLAIR or one that cannot be found or read inside the studies folder (Slicer then downloads
        ``/datastore/image``)."""
        info = super().get_image_info(image_id)
        if self.is_folder_study(image_id):
            flair = None
            with scratch_folder() as scratch:
                try:
                    copy = self.readable_study(image_id, scratch)
                    found = flair_file(copy)
                    flair = self.root / image_id / found.relative_to(copy) if found is not None else None
                except (HTTPException, CaseError, LGGDataError) as error:
                    reason = getattr(error, "detail", error)
                    logger.warning("study %r: no FLAIR file to show (%s)", image_id, reason)
            info["path"] = str(flair) if flair is not None else ""
            info["name"] = flair.name if flair is not None else f"{image_id}{LABEL_EXT}"
        return info

    def get_image(self, image_id: str, params: Any = None) -> bytes | None:
        """A study file's bytes, read inside the studies folder (a folder study: ``None``)."""
        if image_id not in self.objects or self.is_folder_study(image_id):
            return None
        with scratch_folder() as scratch:
            return self.readable_study(image_id, scratch).read_bytes()

    def get_label(self, label_id: str, label_tag: str, params: Any = None) -> bytes | None:
        """A label's bytes, read inside the studies folder."""
        if not self.has_label(label_id, label_tag):
            return None
        with scratch_folder() as scratch:
            return self.readable_label(label_id, label_tag, scratch).read_bytes()

    def get_dataset_archive(self, limit_cases: int | None) -> str:
        """``GET /datastore/dataset``: a ZIP of the studies with a final label and their labels (a folder
        study: its files that the scan reader looks at), read inside the studies folder (403 otherwise).

        Returns:
            the archive, a temporary file the endpoint sends.
        """
        ids = sorted(self.get_labeled_images())
        if not ids:
            raise HTTPException(
                status_code=409, detail="no study has a final label: the archive would be empty"
            )
        if limit_cases and 0 < limit_cases < len(ids):
            ids = ids[:limit_cases]
        handle, archive_path = tempfile.mkstemp(suffix=".zip", dir=temp_folder())
        os.close(handle)
        try:
            with scratch_folder() as scratch, zipfile.ZipFile(archive_path, mode="w") as archive:
                for image_id in ids:
                    image = self.readable_study(image_id, scratch)
                    label = self.readable_label(image_id, DefaultLabelTag.FINAL, scratch)
                    files = sorted(p for p in image.rglob("*") if p.is_file()) if image.is_dir() else [image]
                    for path in files:
                        archive.write(path, arcname=os.path.join("image", path.relative_to(scratch)))
                    archive.write(label, arcname=os.path.join("label", f"{image_id}{LABEL_EXT}"))
                archive.writestr("metadata.json", self.json_text())
        except BaseException:
            os.unlink(archive_path)
            raise
        return archive_path

    def json_text(self) -> str:
        """The datastore table as JSON text (what ``datastore_v2.json`` holds)."""
        return json.dumps(super().json(), indent=2, default=str)

    # -------------------------------------------------------------------------------------- writing
    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        """Add an uploaded study: checked id (400), new id (409), size (413), NIfTI (415), readable
        ``(H, W, D)`` or ``(H, W, D, 3)`` (422). The uploaded file is removed from the server's temporary
        folder whatever the answer."""
        try:
            return self.store_image(image_id, image_filename, image_info)
        finally:
            discard_upload(image_filename)

    def store_image(self, image_id: str, image_filename: str, image_info: Any) -> str:
        """:meth:`add_image` without removing the upload."""
        check_id(image_id)
        info = info_object(image_info, "params")
        ext = nifti_ext(os.path.basename(image_filename))
        if ext is None:
            raise HTTPException(
                status_code=415,
                detail=f"upload {image_id!r}: the image must be a NIfTI file (.nii.gz or .nii)",
            )
        images = self.images_folder()
        clash = [images / f"{image_id}{e}" for e in NIFTI_SUFFIXES if (images / f"{image_id}{e}").exists()]
        if image_id in self.objects or clash:
            raise HTTPException(
                status_code=409,
                detail=f"image {image_id!r} exists already; remove it first or upload under another id",
            )
        self.limits.check_size(image_filename, "image")
        check_image_file(image_filename, self.limits)
        dest = _inside_or_400(images / f"{image_id}{ext}", self.root)
        with self.table_lock():
            if dest.exists():
                raise HTTPException(status_code=409, detail=f"image {image_id!r} exists already")
            atomic_copy(image_filename, dest)
            info = {**info, "ts": int(time.time()), "name": dest.name}
            self.objects[image_id] = new_image_entry(info, ext)
            self.save_table(lock=False)
        return image_id

    def save_label(
        self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]
    ) -> str:
        """Save a label as ``labels/<tag>/<id>.nii.gz`` after checking it against its image. The uploaded
        file is removed from the server's temporary folder whatever the answer."""
        try:
            return self.store_label(image_id, label_filename, label_tag, label_info)
        finally:
            discard_upload(label_filename)

    def store_label(self, image_id: str, label_filename: str, label_tag: str, label_info: Any) -> str:
        """:meth:`save_label` without removing the upload."""
        obj = self.entry(image_id)
        check_tag(label_tag)
        info = info_object(label_info, "params")
        self.limits.check_size(label_filename, "label")
        check_label_file(label_filename, None, self.limits, grid=self.study_grid(image_id))
        folder = self.label_folder(label_tag)
        dest = _inside_or_400(folder / f"{image_id}{LABEL_EXT}", self.root / self.labels_dir_name())
        with self.table_lock():
            folder.mkdir(parents=True, exist_ok=True)
            atomic_copy(label_filename, dest, compress=nifti_ext(os.path.basename(label_filename)) == ".nii")
            info = {**info, "ts": int(time.time()), "name": dest.name}
            obj.labels[label_tag] = new_label_entry(info, LABEL_EXT)
            self.save_table(lock=False)
        return image_id

    # ------------------------------------------------------------------------------------- removing
    def remove_entries(self, entries: list[Path]) -> None:
        """Remove these entries of the studies folder (a symlink: the link, never its target), then
        refresh."""
        for entry in entries:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
        self.refresh()

    def label_entries(self, image_id: str, tags: list[str]) -> list[Path]:
        """The label entries of a study for ``tags`` (checked as :func:`_removable_entry`)."""
        obj = self.entry(image_id)
        return [
            _removable_entry(self.root, self.label_folder(tag), f"{image_id}{obj.labels[tag].ext}")
            for tag in tags
        ]

    def remove_image(self, image_id: str) -> None:
        """Remove a study and its labels (their entries in the studies folder, never a link's target);
        unknown image: 404; a folder study: 409; nothing is removed when any entry is refused (403, 409)."""
        obj = self.entry(image_id)
        if obj.image.ext == FOLDER_EXT:
            raise HTTPException(
                status_code=409,
                detail=f"image {image_id!r} is a folder of your scans: the server removes no folder it did "
                "not write; nothing was removed (remove the folder yourself; its labels with "
                "DELETE /datastore/label)",
            )
        entries = self.label_entries(image_id, list(obj.labels))
        entries.append(_removable_entry(self.root, self.images_folder(), f"{image_id}{obj.image.ext}"))
        self.remove_entries(entries)

    def remove_label(self, label_id: str, label_tag: str) -> None:
        """Remove one label (its entry, never a link's target); unknown image or tag: 404."""
        if not self.has_label(label_id, label_tag):
            raise HTTPException(status_code=404, detail=f"no label {label_tag!r} for image {label_id!r}")
        self.remove_entries(self.label_entries(label_id, [label_tag]))

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> None:
        """Update an image's info; unknown image: 404, info not a JSON object: 422."""
        self.entry(image_id)
        super().update_image_info(image_id, info_object(info, "info"))

    def update_label_info(self, label_id: str, label_tag: str, info: dict[str, Any]) -> None:
        """Update a label's info; unknown image or tag: 404, info not a JSON object: 422."""
        if not self.has_label(label_id, label_tag):
            raise HTTPException(status_code=404, detail=f"no label {label_tag!r} for image {label_id!r}")
        super().update_label_info(label_id, label_tag, info_object(info, "info"))
