"""The output guard: refuse, before any work, an output that could destroy data or could not be written."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from pipeline.errors import ErrorKind, LGGSegError
from pipeline.safety.atomic import remove_stale_temporaries
from pipeline.safety.paths import is_inside, nearest_existing, resolve_path

__all__ = ["UnsafeOutputError", "check_output_file", "check_output_location"]


class UnsafeOutputError(LGGSegError, ValueError):
    """An output location or operation that could lose data; the message is one line.

    The message reads ``<path>: <problem>; <what to do>`` (the CLI prefixes ``lggseg: error:``).

    Args:
        path: the file or folder concerned.
        problem: what is wrong, e.g. ``"is inside the input folder data/kaggle_3m"``.
        hint: what the user can do about it (optional).
    """

    kind = ErrorKind.UNSAFE_OUTPUT

    def __init__(self, path: str | os.PathLike, problem: str, hint: str = "") -> None:
        self.path = Path(path)
        self.problem = problem
        self.hint = hint
        super().__init__(f"{path}: {problem}" + (f"; {hint}" if hint else ""))


def _require_writable(folder: Path) -> None:
    """Refuse a folder that cannot be written, tested by creating and removing a probe file in it (so it
    also holds for root and read-only file systems)."""
    try:
        handle, probe = tempfile.mkstemp(prefix=".lggseg-write-test-", dir=folder)
    except OSError as error:
        raise UnsafeOutputError(
            folder,
            f"folder is not writable ({error.strerror or error})",
            "choose another output folder or fix its permissions",
        ) from None
    os.close(handle)
    os.unlink(probe)


def check_output_location(output: str | os.PathLike, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Refuse an output folder that could destroy data or could not be written, before any work starts.

    Checks, in order: the output is not an input, does not contain an input and is not inside one (after
    resolving symlinks and relative or dotted paths, see :func:`is_inside`); the output, if it exists, is a
    folder; no existing ancestor of it is a file; the nearest existing folder (the output itself, or the
    ancestor where it would be created) can be written, tested by creating and removing a probe file
    there (so it also holds for root and read-only file systems). Nothing else is created.

    Args:
        output: the output folder (need not exist).
        inputs: the input files or folders the command reads.

    Returns:
        the output as an absolute, resolved path.

    Raises:
        UnsafeOutputError: with a one-line message naming the path, the problem and what to do.
    """
    resolved = resolve_path(output)
    for source in inputs:
        if not str(source):
            continue
        if resolve_path(source) == resolved:
            raise UnsafeOutputError(
                output, f"is the input folder {source}", "choose an output folder outside the input"
            )
        if is_inside(output, source):
            raise UnsafeOutputError(
                output, f"is inside the input folder {source}", "choose an output folder outside the input"
            )
        if is_inside(source, output):
            raise UnsafeOutputError(
                output, f"contains the input {source}", "choose an output folder outside the input"
            )
    if resolved.exists() and not resolved.is_dir():
        raise UnsafeOutputError(output, "exists and is not a folder", "choose a folder name")
    existing = nearest_existing(resolved)
    if not existing.is_dir():
        raise UnsafeOutputError(
            existing, "is a file, not a folder", f"choose an output folder not under {existing}"
        )
    _require_writable(existing)
    return resolved


def check_output_file(
    output: str | os.PathLike,
    inputs: Iterable[str | os.PathLike] = (),
    overwrite: bool = False,
    replaceable: Callable[[Path], bool] | None = None,
    kind: str = "file",
) -> Path:
    """Refuse, before any work, an output *file* that could destroy data or could not be written.

    Checks: the output is not one of the inputs (nor inside an input folder); it is not a folder; no
    existing ancestor is a file; its folder (or the nearest existing ancestor) can be written; an existing
    output is replaced only with ``overwrite`` and only when ``replaceable(output)`` says lggseg wrote it.
    Temporaries that killed runs left beside it are removed (:func:`remove_stale_temporaries`).

    Args:
        output: the file to write (need not exist).
        inputs: the files or folders the command reads.
        overwrite: the user's ``--overwrite``.
        replaceable: whether an existing file may be replaced (``None``: any file, with ``overwrite``).
        kind: how the message names the file (``"model file"``).

    Returns:
        the output as an absolute, resolved path.

    Raises:
        UnsafeOutputError: with a one-line message naming the path, the problem and what to do.
    """
    resolved = resolve_path(output)
    for source in inputs:
        if not str(source):
            continue
        same = resolve_path(source) == resolved
        with contextlib.suppress(OSError):
            same = same or os.path.samefile(source, output)
        if same:
            raise UnsafeOutputError(output, f"is the input {source}", f"choose a new {kind} name")
        if Path(source).is_dir() and is_inside(output, source):
            raise UnsafeOutputError(output, f"is inside the input folder {source}", "write it elsewhere")
    if resolved.is_dir():
        raise UnsafeOutputError(output, "is a folder", f"give the name of the {kind} to write")
    folder = nearest_existing(resolved.parent)
    if not folder.is_dir():
        raise UnsafeOutputError(folder, "is a file, not a folder", f"choose a {kind} not under {folder}")
    _require_writable(folder)
    if resolved.exists() or resolved.is_symlink():
        if not overwrite:
            raise UnsafeOutputError(output, "exists", "pass --overwrite to replace it, or choose a new name")
        if resolved.is_symlink() or (replaceable is not None and not replaceable(resolved)):
            raise UnsafeOutputError(
                output,
                f"exists and is not a {kind} lggseg wrote",
                "it is never replaced, even with --overwrite: choose a new name",
            )
    remove_stale_temporaries(resolved.parent)
    return resolved
