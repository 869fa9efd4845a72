"""The real-data fixture (``kaggle_root``, through :func:`helpers.require_real_data`) fails (not skips) under
CI when the shared data is missing."""

from __future__ import annotations

from pathlib import Path

import helpers
import pytest


def test_missing_real_data_fails_under_ci(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(helpers, "KAGGLE_ROOT", tmp_path / "missing")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        helpers.require_real_data()
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception):
        helpers.require_real_data()
