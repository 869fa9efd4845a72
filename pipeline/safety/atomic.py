"""Atomic writes: a temporary sibling renamed into place on success, removed on failure; a full disk is one
clear error (:class:`NoSpaceLeftError`); temporaries of killed runs are recognised and removed."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.errors import ErrorKind, LGGSegError
from pipeline.safety.paths import nearest_existing, resolve_path
from pipeline.safety.processes import process_alive, process_tag

__all__ = [
    "NoSpaceLeftError",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "is_temporary",
    "no_space_left",
    "partial_postfix",
    "remove_stale_temporaries",
    "temporary_name",
]


class NoSpaceLeftError(LGGSegError, OSError):
    """The disk (or quota) is full while writing ``path``; the message is one line naming the file system.

    The message reads ``<path>: no space left on the device of <mount point> (<free> free); ...``; what was
    being written is removed (nothing half-written is left).

    Args:
        path: the file being written.
    """

    kind = ErrorKind.DISK_FULL

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        mount = _mount_point(self.path)
        try:
            free = f"{shutil.disk_usage(mount).free / 2**20:.0f} MB free"
        except OSError:
            free = "free space unknown"
        super().__init__(
            errno.ENOSPC,
            f"{path}: no space left on the device of {mount} ({free}); nothing half-written was kept: "
            "free some space (or choose an output on another disk) and run again",
        )

    def __str__(self) -> str:
        return str(self.strerror)


def _mount_point(path: Path) -> Path:
    """The mount point of the file system that holds ``path`` (or would hold it)."""
    candidate = nearest_existing(resolve_path(path))
    while not os.path.ismount(candidate) and candidate != candidate.parent:
        candidate = candidate.parent
    return candidate


# torch.save reports a failed write of its zip container as a RuntimeError, not an OSError
_TORCH_WRITE_FAILED = ("inline_container", "file write failed", "PytorchStreamWriter failed")
_LOW_SPACE = 64 * 2**20  # a torch write failure with less free space than this is a full disk


def no_space_left(error: BaseException, path: str | os.PathLike) -> NoSpaceLeftError | None:
    """The :class:`NoSpaceLeftError` that ``error`` (or an exception it was raised from) means, if any.

    ``OSError`` with ``ENOSPC`` or ``EDQUOT`` anywhere in the chain of causes counts, and so does a torch
    write failure (``[enforce fail at inline_container.cc]``, ``file write failed``) when the file system
    of ``path`` has less than 64 MB free.

    Args:
        error: what a write raised.
        path: the file being written.

    Returns:
        the error to raise instead, or ``None`` when ``error`` is not about a full disk.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, NoSpaceLeftError):
            return current
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return NoSpaceLeftError(current.filename or path)
        if isinstance(current, RuntimeError) and any(m in str(current) for m in _TORCH_WRITE_FAILED):
            with contextlib.suppress(OSError):
                if shutil.disk_usage(_mount_point(Path(path))).free < _LOW_SPACE:
                    return NoSpaceLeftError(path)
        current = current.__cause__ or current.__context__
    return None


# ------------------------------------------------------------------------------------------ atomic writes
# temporary names carry the writer's pid and start time: ``<...>.tmp-<pid>-<start>-<8 hex>[.ext]``
_TEMP_INFIX = ".tmp-"
_TEMP_PATTERN = re.compile(r"\.(?:tmp|partial)-(\d+)-(\d+)-[0-9a-f]{8}(?:\.|$)")


def temporary_name(path: str | os.PathLike) -> Path:
    """A hidden, unique temporary name beside ``path`` that keeps its extensions (``.nii.gz``) and names
    this process: ``.<name>.tmp-<pid>-<start time>-<random>.<ext>``. :func:`remove_stale_temporaries`
    removes such files once their process is gone (a run killed with ``kill -9``).

    Args:
        path: the final file name.

    Returns:
        the temporary path.
    """
    path = Path(path)
    unique = f"{process_tag()}-{os.urandom(4).hex()}"
    return path.with_name(f".{path.name}{_TEMP_INFIX}{unique}{''.join(path.suffixes)}")


def partial_postfix(postfix: str) -> str:
    """``<postfix>.partial-<pid>-<start>-<random>``: a file-name postfix for writers that choose the name
    themselves (MONAI ``SaveImaged``), recognised by :func:`remove_stale_temporaries` like
    :func:`temporary_name`."""
    return f"{postfix}.partial-{process_tag()}-{os.urandom(4).hex()}"


def is_temporary(name: str) -> bool:
    """Whether a file name is a temporary name of :func:`temporary_name` or :func:`partial_postfix`."""
    return _TEMP_PATTERN.search(name) is not None


def remove_stale_temporaries(folder: str | os.PathLike, depth: int = 0) -> list[Path]:
    """Remove the temporary files that runs killed meanwhile left in ``folder``.

    Only files whose name carries the temporary marker of :func:`temporary_name` (or
    :func:`partial_postfix`) *and* names a process that is no longer running (pid and start time) are
    removed; temporaries of running commands and every other file are left alone.

    Args:
        folder: the folder to clean (need not exist).
        depth: sub-folder levels to look into as well (0: ``folder`` only).

    Returns:
        the files removed.
    """
    root = Path(folder)
    removed: list[Path] = []
    if not root.is_dir() or root.is_symlink():
        return removed
    with contextlib.suppress(OSError):
        for entry in root.iterdir():
            if entry.is_symlink():
                continue
            if entry.is_dir():
                if depth > 0:
                    removed += remove_stale_temporaries(entry, depth - 1)
                continue
            match = _TEMP_PATTERN.search(entry.name)
            if match is None or not entry.is_file():
                continue
            pid, start = int(match.group(1)), match.group(2)
            if process_alive(pid, None if start == "0" else start):
                continue
            with contextlib.suppress(OSError):
                entry.unlink()
                removed.append(entry)
    return removed


def _fsync(path: Path) -> None:
    with contextlib.suppress(OSError), open(path, "rb") as handle:
        os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path``: write to it; on success it is renamed to ``path`` in one step.

    The temporary file is in the same folder (so the rename is atomic) and keeps the extensions, so
    writers that choose the format by name (``nibabel.save``, ``tifffile.imwrite``) work unchanged. If the
    block raises, the temporary file is removed and ``path`` is untouched. Replacing an existing ``path``
    is the caller's decision: check it is yours first (:func:`owned_files`).

    Args:
        path: the final file name; its folder must exist.

    Yields:
        the temporary path to write.

    Raises:
        NoSpaceLeftError: the disk is full (see :func:`no_space_left`).
        whatever the block raises; ``OSError`` when the rename fails.
    """
    path = Path(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as error:
        full = no_space_left(error, path)
        if full is None or full is error:
            raise
        raise NoSpaceLeftError(full.path) from error  # a new one: raising ``full`` again could close a cycle
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary sibling, fsync, rename).

    Args:
        path: the file to write; its folder must exist.
        data: the content.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (temporary sibling, fsync, rename).

    Args:
        path: the file to write; its folder must exist.
        text: the content.
        encoding: text encoding (default UTF-8).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    if not isinstance(text, str):
        raise TypeError(f"{path}: expected text to write, got {type(text).__name__}")
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | os.PathLike, payload: Any, indent: int | None = 2) -> Path:
    """Write ``payload`` as JSON (values it cannot encode as their text) atomically, see
    :func:`atomic_write_text`.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    return atomic_write_text(path, json.dumps(payload, indent=indent, default=str) + "\n")
