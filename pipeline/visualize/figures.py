"""A matplotlib figure written as a PNG, atomically (:func:`pipeline.safety.atomic_path`), its folder created
when missing. Figures use matplotlib's object API with the Agg canvas (no ``pyplot``, no global backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.safety import atomic_path


def save_png(fig: Any, path: str | Path, dpi: int, **savefig: Any) -> Path:
    """Write ``fig`` (a :class:`matplotlib.figure.Figure`) to ``path`` as a PNG of ``dpi`` dots per inch.

    Args:
        fig: the figure.
        path: the PNG to write; its folder is created when missing.
        dpi: the resolution.
        savefig: more arguments of ``Figure.savefig`` (``bbox_inches="tight"``, ...).

    Returns:
        the path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, **savefig)
    return path
