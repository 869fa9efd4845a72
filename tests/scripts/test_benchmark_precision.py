"""scripts/benchmark_precision.py: the paired bf16 / float32 figures from per-patient rows."""

from __future__ import annotations

import numpy as np
import pytest
from benchmark_precision import dice, summarise  # scripts/ is on sys.path (pyproject's pythonpath)


def _row(fp32: float, bf16: float, agreement: float = 1.0, changed: int = 0) -> dict:
    return {
        "dice_fp32": fp32,
        "dice_bf16": bf16,
        "mask_agreement": agreement,
        "voxels_changed": changed,
        "max_prob_difference": 0.01,
        "seconds_fp32": 2.0,
        "seconds_bf16": 1.0,
    }


def test_dice_of_masks_by_hand() -> None:
    a = np.zeros((4, 4), dtype=bool)
    b = np.zeros((4, 4), dtype=bool)
    a[:2] = True  # 8 voxels
    b[1:3] = True  # 8 voxels, 4 shared
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(a & False, b & False) == 1.0  # both empty


def test_summary_of_paired_rows() -> None:
    rows = [_row(0.8, 0.81, 0.99, 30), _row(0.6, 0.58, 0.97, 50), _row(0.9, 0.9), _row(0.7, 0.72, 0.98, 10)]
    summary = summarise(rows)
    assert summary["patients"] == 4
    assert summary["dice_fp32"]["mean"] == pytest.approx(0.75)
    assert summary["dice_bf16"]["mean"] == pytest.approx(0.7525)
    assert summary["dice_bf16"]["min"] == pytest.approx(0.58)
    assert summary["paired_difference_mean"] == pytest.approx(0.0025)
    assert (summary["bf16_better"], summary["bf16_worse"]) == (2, 1)
    assert summary["mask_agreement_min"] == pytest.approx(0.97)
    assert summary["voxels_changed_median"] == pytest.approx(20.0)
    assert summary["seconds_bf16_median"] == 1.0 and summary["seconds_fp32_median"] == 2.0
    assert 0.0 < summary["wilcoxon_p"] <= 1.0  # over the three patients whose Dice differs
