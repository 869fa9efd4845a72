"""Plain functions the tests share (fixtures are in the ``conftest.py`` files): import with ``from helpers import
...`` (``tests/`` is on ``sys.path``, pyproject's ``pythonpath``)."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
"""The repository's root (``tests/helpers.py`` is one folder below it)."""
