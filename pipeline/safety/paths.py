"""Paths as the file system sees them: resolved, their nearest existing ancestor, and containment."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["is_inside", "nearest_existing", "resolve_path"]


def resolve_path(path: str | os.PathLike) -> Path:
    """``path`` made absolute, with ``~``, ``.``, ``..`` and symlinks resolved (it need not exist)."""
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
    ra, rb = resolve_path(a), resolve_path(b)
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


def nearest_existing(path: Path) -> Path:
    """``path`` itself when it exists (or is a link), else its nearest existing ancestor."""
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return Path(path.anchor)
