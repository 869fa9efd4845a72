"""What every benchmark script does with its figures besides printing them: ``--output FILE.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.safety import atomic_write_json


def write_figures(figures: Any, output: Path | None) -> None:
    """Write ``figures`` as JSON to ``output`` (atomically; its folder is created); nothing when ``None``."""
    if output is None:
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(output, figures)
