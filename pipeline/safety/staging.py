"""Staging folders ``.<name>.lggseg-staging-<pid>-<random>`` beside an output, with a marker naming the
process that made them: made fresh for a run, and removed when that process is gone."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from pipeline.safety.atomic import atomic_write_text
from pipeline.safety.paths import resolve_path
from pipeline.safety.processes import process_alive, process_start

__all__ = ["STAGING_MARKER", "remove_stale_staging", "staging_folder"]

STAGING_MARKER = ".lggseg-staging.json"
_STAGING_INFIX = ".lggseg-staging-"


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
    target = resolve_path(target)
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
    target = resolve_path(target)
    remove_stale_staging(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}{_STAGING_INFIX}{os.getpid()}-{os.urandom(4).hex()}"
    staging.mkdir()  # the usual permissions (umask), as the output folder it may become
    try:
        marker = {"pid": os.getpid(), "start": process_start(os.getpid()), "target": target.name}
        marker["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        atomic_write_text(staging / STAGING_MARKER, json.dumps(marker) + "\n")
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)
