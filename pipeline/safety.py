"""Never lose a user's data: atomic writes, the output guard, the manifest of written files, staging folders.

The project rule: **no command deletes or overwrites a file it did not write.** This module is the one home
of the pieces every command uses to keep it (floor 1: it imports no other project module):

- atomic writes: :func:`atomic_write_text`, :func:`atomic_write_bytes` and :func:`atomic_path` (a temporary
  sibling renamed into place on success, removed on failure), so a crash never leaves a half-written file
  under the final name;
- the output guard: :func:`check_output_location` refuses an output that equals, contains or lies inside
  an input, that is a file, or whose folder cannot be written, before any long work starts; it raises
  :class:`UnsafeOutputError`, whose message is one line ``<path>: <problem>; <what to do>``;
- the manifest ``<folder>/.lggseg-manifest.json``: the relative paths a command wrote into a folder
  (:func:`write_manifest`, :func:`read_manifest`, :func:`owned_files`, :func:`foreign_files`); only those
  files may later be replaced or removed (:func:`remove_owned`), everything else is left alone;
- staging folders ``.<name>.lggseg-staging-<pid>-<random>`` beside an output, holding a marker file with
  the creating process id: :func:`staging_folder` makes one (removing it at the end) and
  :func:`remove_stale_staging` removes those left by a killed run (their process is gone). Only folders
  with the name pattern *and* the marker are ever removed.

Commands put these together through :class:`OutputTransaction` (check -> stage -> claim -> move), the
one home of that sequence::

    transaction = OutputTransaction(args.output, "prepare", args.overwrite, inputs=[args.input])
    transaction.check(planned)                                 # before any work
    with transaction.staging() as staging:                     # cleans up stale staging folders first
        ...write into staging...
        transaction.commit(staging, written)                   # claim, re-check, rename into place
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

__all__ = [
    "MANIFEST_FILENAME",
    "STAGING_MARKER",
    "OutputTransaction",
    "NoSpaceLeftError",
    "UnsafeOutputError",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_output_file",
    "check_output_location",
    "no_space_left",
    "foreign_files",
    "is_inside",
    "is_temporary",
    "owned_files",
    "partial_postfix",
    "process_alive",
    "read_manifest",
    "remove_owned",
    "remove_stale_staging",
    "remove_stale_temporaries",
    "staging_folder",
    "temporary_name",
    "write_manifest",
]

MANIFEST_FILENAME = ".lggseg-manifest.json"
STAGING_MARKER = ".lggseg-staging.json"
_STAGING_INFIX = ".lggseg-staging-"
_MANIFEST_FORMAT = 1


class UnsafeOutputError(ValueError):
    """An output location or operation that could lose data; the message is one line.

    The message reads ``<path>: <problem>; <what to do>`` (the CLI prefixes ``lggseg: error:``).

    Args:
        path: the file or folder concerned.
        problem: what is wrong, e.g. ``"is inside the input folder data/kaggle_3m"``.
        hint: what the user can do about it (optional).
    """

    def __init__(self, path: str | os.PathLike, problem: str, hint: str = "") -> None:
        self.path = Path(path)
        self.problem = problem
        self.hint = hint
        super().__init__(f"{path}: {problem}" + (f"; {hint}" if hint else ""))


class NoSpaceLeftError(OSError):
    """The disk (or quota) is full while writing ``path``; the message is one line naming the file system.

    The message reads ``<path>: no space left on the device of <mount point> (<free> free); ...``; what was
    being written is removed (nothing half-written is left).

    Args:
        path: the file being written.
    """

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
    candidate = _nearest_existing(_resolve(path))
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


def _process_tag() -> str:
    """``<pid>-<start>`` of this process (start 0 where ``/proc`` is missing)."""
    return f"{os.getpid()}-{_process_start(os.getpid()) or 0}"


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
    unique = f"{_process_tag()}-{os.urandom(4).hex()}"
    return path.with_name(f".{path.name}{_TEMP_INFIX}{unique}{''.join(path.suffixes)}")


def partial_postfix(postfix: str) -> str:
    """``<postfix>.partial-<pid>-<start>-<random>``: a file-name postfix for writers that choose the name
    themselves (MONAI ``SaveImaged``), recognised by :func:`remove_stale_temporaries` like
    :func:`temporary_name`."""
    return f"{postfix}.partial-{_process_tag()}-{os.urandom(4).hex()}"


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


# ------------------------------------------------------------------------------------------ output guard
def _resolve(path: str | os.PathLike) -> Path:
    return Path(os.path.abspath(os.path.expanduser(path))).resolve()


def is_inside(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether ``a`` is ``b`` or lies inside it, after resolving symlinks, ``~``, ``.`` and ``..``.

    Paths need not exist. When ``b`` exists, ``a``'s existing ancestors are also compared with it by
    device and inode, which catches bind mounts and other aliases that resolving cannot see.

    Args:
        a: the candidate path.
        b: the folder.

    Returns:
        ``True`` when ``a`` equals ``b`` or is below it.
    """
    ra, rb = _resolve(a), _resolve(b)
    if ra == rb or rb in ra.parents:
        return True
    try:
        b_stat = os.stat(rb)
    except OSError:
        return False
    for candidate in (ra, *ra.parents):
        with contextlib.suppress(OSError):
            if os.path.samestat(os.stat(candidate), b_stat):
                return True
    return False


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return Path(path.anchor)


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
    resolved = _resolve(output)
    for source in inputs:
        if not str(source):
            continue
        if _resolve(source) == resolved:
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
    existing = _nearest_existing(resolved)
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
    resolved = _resolve(output)
    for source in inputs:
        if not str(source):
            continue
        same = _resolve(source) == resolved
        with contextlib.suppress(OSError):
            same = same or os.path.samefile(source, output)
        if same:
            raise UnsafeOutputError(output, f"is the input {source}", f"choose a new {kind} name")
        if Path(source).is_dir() and is_inside(output, source):
            raise UnsafeOutputError(output, f"is inside the input folder {source}", "write it elsewhere")
    if resolved.is_dir():
        raise UnsafeOutputError(output, "is a folder", f"give the name of the {kind} to write")
    folder = _nearest_existing(resolved.parent)
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


# ------------------------------------------------------------------------------------------------- manifest
def _clean_relative(path: str | os.PathLike) -> str:
    rel = PurePosixPath(Path(path).as_posix())
    if rel.is_absolute() or ".." in rel.parts or str(rel) in ("", "."):
        raise ValueError(f"manifest entries must be relative paths inside the folder, got {path!r}")
    return str(rel)


def read_manifest(folder: str | os.PathLike) -> dict:
    """Read ``<folder>/.lggseg-manifest.json``.

    Args:
        folder: the output folder.

    Returns:
        ``{"format": 1, "command": str, "files": [relative posix paths]}``; ``{"files": []}`` when the
        folder has no manifest or it cannot be read (then the folder owns nothing: safe by default).
    """
    try:
        data = json.loads((Path(folder) / MANIFEST_FILENAME).read_text(encoding="utf-8"))
        files = [_clean_relative(f) for f in data["files"]]
    except (OSError, ValueError, KeyError, TypeError):
        return {"files": []}
    return {**data, "files": files}


def owned_files(folder: str | os.PathLike) -> set[str]:
    """The relative paths (posix) that lggseg wrote into ``folder``, from its manifest.

    Args:
        folder: the output folder.

    Returns:
        the set of paths listed in the manifest (some may no longer exist).
    """
    return set(read_manifest(folder)["files"])


def write_manifest(
    folder: str | os.PathLike,
    paths: Iterable[str | os.PathLike],
    command: str = "",
    replace: bool = False,
) -> Path:
    """Record, atomically, that lggseg wrote ``paths`` into ``folder``.

    Record a file *before* moving it into place, so an interrupted command never leaves a file of its own
    that the manifest does not claim.

    Args:
        folder: the output folder (must exist).
        paths: file paths relative to ``folder`` (``a/b.nii.gz``).
        command: the command that wrote them, for people reading the file.
        replace: list exactly ``paths``; by default they are added to the files already listed.

    Returns:
        the manifest file.

    Raises:
        ValueError: a path is absolute or leaves the folder.
    """
    files = {_clean_relative(p) for p in paths}
    if not replace:
        files |= owned_files(folder)
    files.discard(MANIFEST_FILENAME)
    payload = {"format": _MANIFEST_FORMAT, "written_by": "lggseg", "command": command, "files": sorted(files)}
    return atomic_write_json(Path(folder) / MANIFEST_FILENAME, payload, indent=1)


def foreign_files(folder: str | os.PathLike) -> list[str]:
    """Files (and symlinks, and empty folders) under ``folder`` that lggseg did not write.

    Args:
        folder: the output folder; need not exist.

    Returns:
        sorted relative posix paths not listed in the manifest (the manifest itself excluded).
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    owned = owned_files(root) | {MANIFEST_FILENAME}
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        for name in filenames + [d for d in dirnames if (base / d).is_symlink()]:
            rel = (base / name).relative_to(root).as_posix()
            if rel not in owned:
                found.append(rel)
        if base != root and not dirnames and not filenames:
            found.append(base.relative_to(root).as_posix() + "/")
    return sorted(found)


def remove_owned(folder: str | os.PathLike, paths: Iterable[str | os.PathLike] | None = None) -> list[str]:
    """Remove files lggseg wrote into ``folder``; anything the manifest does not list is left alone.

    Folders that become empty by the removal are removed too (never ``folder`` itself); the removed
    entries are dropped from the manifest.

    Args:
        folder: the output folder.
        paths: relative paths to remove (default: every owned file). Paths not in the manifest are skipped.

    Returns:
        the relative paths actually removed.
    """
    root = Path(folder)
    owned = owned_files(root)
    wanted = owned if paths is None else {_clean_relative(p) for p in paths} & owned
    removed = []
    for rel in sorted(wanted):
        target = root / rel
        if target.is_symlink() or target.is_file():
            target.unlink()
            removed.append(rel)
            parent = target.parent
            while parent != root and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent
    if removed:
        write_manifest(
            root, owned - set(removed), command=read_manifest(root).get("command", ""), replace=True
        )
    return removed


# ------------------------------------------------------------------------------------------ staging folders
def _process_start(pid: int) -> str | None:
    """The start time of a process (Linux ``/proc``), to tell a live process from a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def process_alive(pid: int, start: str | None = None) -> bool:
    """Whether process ``pid`` runs (and, given ``start`` from ``/proc/<pid>/stat``, is the same one)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    current = _process_start(pid)
    return start is None or current is None or current == start


def remove_stale_staging(target: str | os.PathLike) -> list[Path]:
    """Remove the staging folders of ``target`` left by runs that were killed.

    A folder is removed only if it sits beside ``target``, is named ``.<target name>.lggseg-staging-*``,
    holds the marker file :data:`STAGING_MARKER` naming ``target`` and its process, and that process is
    no longer running. Staging folders of runs still in progress are kept.

    Args:
        target: the output folder the staging folders belong to.

    Returns:
        the folders removed.
    """
    target = _resolve(target)
    if not target.parent.is_dir():
        return []
    removed = []
    for candidate in target.parent.glob(f".{target.name}{_STAGING_INFIX}*"):
        if candidate.is_symlink() or not candidate.is_dir():
            continue
        try:
            marker = json.loads((candidate / STAGING_MARKER).read_text(encoding="utf-8"))
            pid, start, name = int(marker["pid"]), marker.get("start"), marker["target"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if name != target.name or process_alive(pid, start):
            continue
        shutil.rmtree(candidate, ignore_errors=True)
        removed.append(candidate)
    return removed


@contextlib.contextmanager
def staging_folder(target: str | os.PathLike) -> Iterator[Path]:
    """A fresh staging folder beside ``target`` (same file system, so moves out of it are renames).

    Stale staging folders of ``target`` are removed first (:func:`remove_stale_staging`). The folder is
    named ``.<target name>.lggseg-staging-<pid>-<random>`` and holds the marker :data:`STAGING_MARKER`
    (pid, process start time, target name); it is removed with whatever is left in it when the block ends,
    whether it succeeded or not. A run killed with ``kill -9`` leaves it behind for the next run to remove.

    Args:
        target: the output folder; its parent is created if needed.

    Yields:
        the staging folder.
    """
    target = _resolve(target)
    remove_stale_staging(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}{_STAGING_INFIX}{os.getpid()}-{os.urandom(4).hex()}"
    staging.mkdir()  # the usual permissions (umask), as the output folder it may become
    try:
        marker = {"pid": os.getpid(), "start": _process_start(os.getpid()), "target": target.name}
        marker["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        atomic_write_text(staging / STAGING_MARKER, json.dumps(marker) + "\n")
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ------------------------------------------------------------------------------------------ the transaction
class OutputTransaction:
    """How every command writes a folder of results: check -> stage -> claim -> move.

    1. :meth:`check` (before any work): the location (:func:`check_output_location`) and the contents: a
       folder holding results of an earlier run, or files lggseg did not write, is refused without
       ``overwrite``; a file lggseg did not write under a name the command would write is refused always.
    2. :meth:`staging`: a staging folder beside the output (:func:`staging_folder`) to write into.
    3. :meth:`commit`: the names are claimed in the manifest, checked again (a file that appeared meanwhile
       is kept), then the files are renamed into place; a new output folder is the staging folder renamed.
       Files written this way by an earlier run and not written again are removed unless ``keep_earlier``.
    Commands that write single files in place (``export-kaggle``) use :meth:`check`, :meth:`claim` and
    :func:`atomic_path` instead of a staging folder.

    Args:
        output_dir: the output folder (need not exist).
        command: the command's name, recorded in the manifest.
        overwrite: the user's ``--overwrite``.
        inputs: the paths the command reads (the output may not be, contain or lie inside one).
        error: the exception class of refusals about the contents (called with the one-line message).
        results: how the message names an earlier run's files (``"results"``, ``"studies lggseg wrote"``).
        noun: how the message names the files (``"files"``, ``"mask files"``).
        foreign_needs_overwrite: refuse a folder holding other files without ``overwrite``.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        command: str,
        overwrite: bool = False,
        inputs: Iterable[str | os.PathLike] = (),
        error: type[Exception] = ValueError,
        results: str = "results",
        noun: str = "files",
        foreign_needs_overwrite: bool = True,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.command = command
        self.overwrite = overwrite
        self.inputs = list(inputs)
        self.error = error
        self.results = results
        self.noun = noun
        self.foreign_needs_overwrite = foreign_needs_overwrite

    def clashes(self, planned: Iterable[str]) -> list[str]:
        """Planned names held by something lggseg did not write (a file, a folder, a link in the way)."""
        out, owned, found = self.output_dir, owned_files(self.output_dir), []
        for rel in planned:
            target = out / rel
            parent = target.parent
            if parent != out and (parent.is_symlink() or (parent.exists() and not parent.is_dir())):
                found.append(parent.relative_to(out).as_posix())
            elif (target.exists() or target.is_symlink()) and (rel not in owned or target.is_dir()):
                found.append(rel)
        return sorted(set(found))

    def _refuse_clashes(self, planned: Iterable[str], during: bool = False) -> None:
        clashes = self.clashes(planned)
        if not clashes:
            return
        example = self.output_dir / clashes[0]
        if during:
            raise self.error(
                f"{example}: appeared during the run and lggseg did not write it; nothing was replaced: "
                "move it away and run again"
            )
        raise self.error(
            f"{self.output_dir}: holds {len(clashes)} {self.noun} lggseg did not write under names it would "
            f"write (e.g. {example}); they are never replaced (a file lggseg did not write is never "
            "overwritten, even with --overwrite): move them away or choose another folder"
        )

    def check(self, planned: Sequence[str], earlier: Sequence[str] | None = None) -> Path:
        """Check the output before any work (see the class docstring).

        Args:
            planned: every file the command may write, relative (posix).
            earlier: the earlier run's files that count as results (default: every file the manifest lists
                that exists).

        Returns:
            the output folder, resolved.
        """
        out = check_output_location(self.output_dir, self.inputs)
        if out.is_dir() and any(out.iterdir()):
            owned = owned_files(out)
            existing = [rel for rel in (owned if earlier is None else earlier) if (out / rel).exists()]
            foreign = foreign_files(out) if self.foreign_needs_overwrite else []
            if existing and not self.overwrite:
                raise self.error(
                    f"{out}: already holds {self.results}; pass --overwrite to replace them "
                    "(files lggseg did not write are kept)"
                )
            if foreign and not self.overwrite:
                raise self.error(
                    f"{out}: output folder is not empty and holds {len(foreign)} files lggseg did not write "
                    f"(e.g. {foreign[0]}); choose a new or empty folder, or pass --overwrite to write beside "
                    "them (they are kept)"
                )
            self._refuse_clashes(planned)
        return out

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """The staging folder to write into (removed at the end, whatever happens)."""
        with contextlib.ExitStack() as stack:
            try:
                staging = stack.enter_context(staging_folder(self.output_dir))
            except OSError as error:
                raise UnsafeOutputError(
                    self.output_dir.parent,
                    f"cannot create a staging folder here ({error.strerror or error})",
                    "choose another output folder or fix the permissions",
                ) from None
            yield staging

    def claim(self, written: Iterable[str]) -> None:
        """Record ``written`` in the output's manifest before the files are moved or written into place."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        write_manifest(self.output_dir, written, command=self.command)

    def commit(self, staging: Path, written: Sequence[str], keep_earlier: bool = False) -> None:
        """Move the finished files from ``staging`` into the output, touching only lggseg's own files.

        Args:
            staging: the folder of :meth:`staging`.
            written: the files to move, relative (posix), in the order to move them (the datalist last).
            keep_earlier: keep files an earlier run wrote and this one did not write again.
        """
        out = self.output_dir
        if not out.exists():
            leftovers = {p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file()}
            for rel in leftovers - {*written, STAGING_MARKER}:  # pieces of failed cases
                (staging / rel).unlink()
            write_manifest(staging, written, command=self.command, replace=True)
            (staging / STAGING_MARKER).unlink()
            try:
                os.replace(staging, out)
                return
            except OSError:
                if not out.is_dir():  # created meanwhile: fall through to the careful path
                    raise
                (staging / MANIFEST_FILENAME).unlink()
        owned = owned_files(out)
        self._refuse_clashes(written, during=True)
        self.claim(written)
        for rel in written:
            target = out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / rel, target)
        if not keep_earlier:
            remove_owned(out, owned - set(written))
            write_manifest(out, written, command=self.command, replace=True)
