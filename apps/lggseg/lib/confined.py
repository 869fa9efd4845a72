"""Read the studies folder without ever leaving it, whatever changes in it while the server runs.

A study is read from a private copy (a *snapshot*) that this module makes from the studies folder: every
file is opened component by component from the studies folder with ``O_NOFOLLOW``, so a symlink added or
swapped in after the file was checked (a study or a label replaced by a link, a sub-folder of a folder study
replaced by a link to ``/``, a DICOM file that is a link to ``/etc/...``) makes the open fail instead of
reading outside. A symlink is followed only when it resolves inside the studies folder, and then through its
resolved path, opened the same way. The readers of the pipeline (nibabel, SimpleITK, pydicom) then read the
snapshot, which nobody else can change (it lies in the server's private temporary folder, or in the
training's scratch folder).

A folder study's snapshot holds what the pipeline's scan reader looks at
(:mod:`pipeline.ingestion.scan_cases`: the folder's files and those of its sub-folders, one level down),
without hidden entries and without files it never opens (notes, images of other formats:
:data:`pipeline.ingestion.dicom_files.NOT_DICOM_SUFFIXES` other than NIfTI). Named pipes, sockets and
devices are never opened.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import ErrorKind, LGGSegError
from pipeline.ingestion.dicom_files import NOT_DICOM_SUFFIXES
from pipeline.ingestion.errors import LGGDataError
from pipeline.ingestion.sequences import NIFTI_SUFFIXES

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # a named pipe never blocks
SCAN_DEPTH = 2  # a scan case folder is read one level down (DICOM series in sub-folders)
_CHUNK = 1 << 22


class OutsideStudiesError(LGGSegError, PermissionError):
    """A file a request would read leads outside the studies folder, or changed into a link while it was
    read (one line naming it); the server answers 403."""

    kind = ErrorKind.FORBIDDEN


def _relative_inside(root: Path, path: str | os.PathLike) -> Path:
    """``path`` resolved (symlinks followed), relative to ``root``; outside: :class:`OutsideStudiesError`."""
    real = Path(os.path.realpath(path))
    if real != root and root not in real.parents:
        raise OutsideStudiesError(f"{path}: leads outside the studies folder (to {real}); not read")
    return real.relative_to(root)


def _open_inside(root: Path, relative: Path, final_flags: int, shown: str | os.PathLike) -> int:
    """Open ``root / relative`` one component at a time, never following a link (``O_NOFOLLOW``)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        parts = relative.parts
        for index, part in enumerate(parts):
            flags = _DIR_FLAGS if index < len(parts) - 1 else final_flags
            try:
                next_fd = os.open(part, flags, dir_fd=fd)
            except OSError as error:
                raise _changed(error, shown) from None
            os.close(fd)
            fd = next_fd
        return fd
    except BaseException:
        os.close(fd)
        raise


def _changed(error: OSError, shown: str | os.PathLike) -> OSError:
    """The error for an ``open`` that failed on the way: a link met on the way is :class:`OutsideStudiesError`
    (it appeared after the path was resolved), anything else stays what it is (e.g. not found)."""
    if error.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
        return OutsideStudiesError(
            f"{shown}: changed into a link (or another entry) while being read; not read"
        )
    if error.errno == errno.ENOENT:
        return FileNotFoundError(errno.ENOENT, f"{shown}: not found (removed meanwhile?)")
    return error


def _copy_fd(fd: int, target: Path, shown: str | os.PathLike) -> Path:
    """Copy the regular file open as ``fd`` to the new file ``target`` (private: mode 0600)."""
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        raise LGGDataError(f"{shown}: not a regular file (a named pipe, socket or device); not read")
    os.set_blocking(fd, True)
    out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(out, "wb") as sink, os.fdopen(os.dup(fd), "rb") as source:
            shutil.copyfileobj(source, sink, _CHUNK)
    except BaseException:
        target.unlink()  # a copy that failed midway (e.g. a full disk) is not left
        raise
    return target


def copy_file_inside(root: Path, path: str | os.PathLike, target: Path) -> Path:
    """Copy a file of the studies folder to ``target``, never reading outside ``root``.

    Args:
        root: the studies folder (resolved).
        path: the file (a link is followed only when it resolves inside ``root``).
        target: the new file (its folder exists; private to the caller).

    Returns:
        ``target``.

    Raises:
        OutsideStudiesError: ``path`` leads outside ``root``, or became a link while it was read.
        FileNotFoundError: ``path`` is gone.
        pipeline.ingestion.errors.LGGDataError: not a regular file.
    """
    with _closing(_open_inside(root, _relative_inside(root, path), _FILE_FLAGS, path)) as fd:
        return _copy_fd(fd, target, path)


@contextlib.contextmanager
def _closing(fd: int) -> Iterator[int]:
    """``fd`` for the block, closed after it (whatever happens)."""
    try:
        yield fd
    finally:
        os.close(fd)


def _wanted(name: str) -> bool:
    """Whether the scan reader may open a file of this name (NIfTI, or possibly DICOM)."""
    lowered = name.lower()
    return lowered.endswith(NIFTI_SUFFIXES) or not lowered.endswith(NOT_DICOM_SUFFIXES)


def _copy_folder(root: Path, fd: int, shown: Path, target: Path, depth: int) -> None:
    """Copy the entries of the folder open as ``fd`` (its path ``shown``) into the new folder ``target``."""
    target.mkdir(mode=0o700)
    for name in sorted(os.listdir(fd)):
        if name.startswith("."):
            continue
        entry = shown / name
        try:
            info = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            continue  # removed meanwhile
        if stat.S_ISLNK(info.st_mode):
            relative = _relative_inside(root, entry)  # a link is followed only inside the studies folder
            if not os.path.exists(root / relative):
                continue  # a dangling link: nothing to read
            if os.path.isdir(root / relative):
                if depth > 1:
                    with _closing(_open_inside(root, relative, _DIR_FLAGS, entry)) as sub:
                        _copy_folder(root, sub, entry, target / name, depth - 1)
            elif _wanted(name):
                copy_file_inside(root, entry, target / name)
            continue
        if stat.S_ISDIR(info.st_mode):
            if depth > 1:
                with _closing(_open_at(fd, name, _DIR_FLAGS, entry)) as sub:
                    _copy_folder(root, sub, entry, target / name, depth - 1)
        elif stat.S_ISREG(info.st_mode) and _wanted(name):
            with _closing(_open_at(fd, name, _FILE_FLAGS, entry)) as sub:
                _copy_fd(sub, target / name, entry)


def _open_at(fd: int, name: str, flags: int, shown: Path) -> int:
    try:
        return os.open(name, flags, dir_fd=fd)
    except OSError as error:
        raise _changed(error, shown) from None


def snapshot_folder(root: Path, folder: str | os.PathLike, target: Path) -> Path:
    """Copy a folder study (what the scan reader looks at, module docstring) to ``target``, never reading
    outside ``root``.

    Args:
        root: the studies folder (resolved).
        folder: the folder study.
        target: the new folder (its parent exists; private to the caller); name it after the study, the
            pipeline names the case after its folder.

    Returns:
        ``target``.

    Raises:
        OutsideStudiesError: the folder, or an entry the reader would look at, leads outside ``root`` (or
            became a link while it was read).
        FileNotFoundError: the folder is gone.
    """
    fd = _open_inside(root, _relative_inside(root, folder), _DIR_FLAGS, folder)
    try:
        _copy_folder(root, fd, Path(folder), target, SCAN_DEPTH)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)  # nothing half-copied is left
        raise
    finally:
        os.close(fd)
    return target


def snapshot(root: Path, path: str | os.PathLike, folder: Path, name: str) -> Path:
    """A private copy of a study, a file or a folder study, in ``folder`` under ``name``.

    Args:
        root: the studies folder (resolved).
        path: the study's file or folder.
        folder: where the copy goes (exists; private).
        name: the copy's name (keep the study's file name: the pipeline reads the format and the case name
            from it).

    Returns:
        the copy.

    Raises:
        OutsideStudiesError, FileNotFoundError, pipeline.ingestion.errors.LGGDataError: see
            :func:`copy_file_inside` and :func:`snapshot_folder`.
    """
    relative = _relative_inside(root, path)
    if os.path.isdir(root / relative):
        return snapshot_folder(root, path, folder / name)
    return copy_file_inside(root, path, folder / name)
