"""The safety tests: the output transaction, and fault injection through every command (configuration values,
data, the user's inputs, outputs, runs): nothing of the user's is deleted or overwritten, bad input is one
line."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.ingestion.synthetic import write_synthetic_kaggle


@pytest.fixture
def kaggle(tmp_path: Path) -> Path:
    """Five small synthetic patients in the Kaggle layout (32x32, 4-6 slices) with a data.csv."""
    return write_synthetic_kaggle(tmp_path / "kaggle_3m", num_patients=5, seed=1, size=32, slices=(4, 6))
