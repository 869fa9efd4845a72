"""Processes that wrote a temporary file or a staging folder: alive or gone (pid and start time)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["process_alive", "process_start", "process_tag"]


def process_start(pid: int) -> str | None:
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
    current = process_start(pid)
    return start is None or current is None or current == start


def process_tag() -> str:
    """``<pid>-<start>`` of this process (start 0 where ``/proc`` is missing)."""
    return f"{os.getpid()}-{process_start(os.getpid()) or 0}"
