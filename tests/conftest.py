"""Shared pytest fixtures.

Tests that need the real LGG data use the ``kaggle_root`` fixture: it skips when the data is absent
on a developer's machine, and fails when ``CI=true`` (CI must always have it).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
KAGGLE_ROOT = REPO_ROOT.parent / "shared" / "data" / "lgg" / "kaggle_3m"


def _require_real_data() -> Path:
    if KAGGLE_ROOT.is_dir() and any(KAGGLE_ROOT.iterdir()):
        return KAGGLE_ROOT
    message = f"real LGG data not found at {KAGGLE_ROOT}"
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(message + " (CI=true: the shared data is required)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def kaggle_root() -> Path:
    """Path to ``../shared/data/lgg/kaggle_3m`` (fails under CI when missing)."""
    return _require_real_data()


@pytest.fixture(scope="session")
def load_script() -> Callable[[str], ModuleType]:
    """Import ``scripts/<name>.py`` as a module (the scripts are not a package)."""

    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
