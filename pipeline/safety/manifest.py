"""The manifest ``<folder>/.lggseg-manifest.json``: the files a command wrote into a folder. Only those may
later be replaced or removed; everything else in the folder is left alone."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from pipeline.safety.atomic import atomic_write_json

__all__ = [
    "MANIFEST_FILENAME",
    "foreign_files",
    "owned_files",
    "read_manifest",
    "remove_owned",
    "write_manifest",
]

MANIFEST_FILENAME = ".lggseg-manifest.json"
_MANIFEST_FORMAT = 1


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
