"""scripts/fit_qc.py: the flipped variants of the dumps give the ``tta_disagree`` figures (issue 30)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fit_qc import main  # scripts/ is on sys.path (pyproject's pythonpath)

SHAPE = (24, 24, 6)


def _box(x0: int, y0: int) -> np.ndarray:
    mask = np.zeros(SHAPE, dtype=bool)
    mask[x0 : x0 + 8, y0 : y0 + 8, 1:5] = True
    return mask


def _dumps(folder, flips: bool) -> dict[str, float]:
    """12 patients over 4 folds; patients 0 and 1 are missed (Dice 0) and their flipped variants disagree
    with the plain one; the others are found. Returns each patient's expected flip agreement."""
    folder.mkdir()
    truth = _box(4, 4)
    expected = {}
    for index in range(12):
        bad = index < 2
        plain = np.where(_box(14, 14) if bad else truth, 0.7 if bad else 0.95 - 0.01 * index, 0.02)
        arrays = {"prob_none": plain.astype(np.float16)}
        if flips:
            # a bad patient's flipped variants find something else (no overlap: agreement 0)
            other = np.where(_box(4, 14), 0.7, 0.02) if bad else plain
            arrays |= {"prob_lr": other.astype(np.float16), "prob_ud": plain.astype(np.float16)}
        expected[f"p{index:02d}"] = 0.0 if bad else 1.0
        np.savez_compressed(
            folder / f"p{index:02d}.npz",
            fold=index % 4,
            spacing=np.ones(3),
            label=truth.astype(np.uint8),
            brain=np.ones(SHAPE, np.uint8),
            flair=np.zeros(SHAPE, np.float16),
            **arrays,
        )
    return expected


def test_flip_agreement_per_patient_and_its_figures(tmp_path):
    expected = _dumps(tmp_path / "dumps", flips=True)
    assert main(["--probabilities", str(tmp_path / "dumps"), "--output", str(tmp_path / "qc.json")]) == 0
    qc = json.loads((tmp_path / "qc.json").read_text())
    assert {r["patient"]: r["tta_agreement"] for r in qc["patients"]} == pytest.approx(expected)
    assert [r["dice"] for r in qc["patients"]][:2] == [0.0, 0.0]
    # the two missed patients (Dice < 0.5 and < 0.7) are exactly the two that disagree
    assert qc["flags"]["tta_disagree"] == {"flagged": 2, "flagged_under_0.7": 2, "missed_under_0.7": 0}
    figures = qc["figures"]["with_flip_tta"]
    assert figures["auroc_tta_agreement_under_0.7"] == 1.0
    assert figures["review_catches_under_0.5"] == 1.0
    review = {r["patient"]: r["review_nested"] for r in qc["patients"]}
    others = [p for p in review if p not in ("p00", "p01")]
    assert figures["review_flags_others"] == pytest.approx(sum(review[p] for p in others) / len(others))


def test_without_flipped_variants_there_is_no_tta_figure(tmp_path):
    _dumps(tmp_path / "dumps", flips=False)
    assert main(["--probabilities", str(tmp_path / "dumps"), "--output", str(tmp_path / "qc.json")]) == 0
    qc = json.loads((tmp_path / "qc.json").read_text())
    assert "with_flip_tta" not in qc["figures"]
    assert all(r["tta_agreement"] is None for r in qc["patients"])
    assert qc["flags"]["tta_disagree"]["flagged"] == 0


def test_the_model_card_shows_the_tta_rows_only_when_measured():
    from model_card import tta_rows

    assert tta_rows(None) == [] and tta_rows({}) == []
    rows = tta_rows(
        {
            "auroc_tta_agreement_under_0.7": 0.9057,
            "review_catches_under_0.5": 1.0,
            "review_flags_others": 0.2533,
        }
    )
    assert len(rows) == 3 and "| 0.906 |" in rows[0] and "| 100% |" in rows[1] and "| 25% |" in rows[2]
