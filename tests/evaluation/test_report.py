"""The per-patient report on a tiny synthetic set with known answers."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from matplotlib.image import imread

from pipeline.evaluation.metrics import SliceMetricsAccumulator, patient_metrics
from pipeline.evaluation.report import select_cases, summarise, write_report
from pipeline.safety import atomic_write_text

SHAPE = (16, 16, 6)
IDS = {
    "perfect": "TCGA_CS_0001_20000101",  # Dice 1
    "shifted": "TCGA_CS_0002_20000101",  # Dice 0.5
    "larger": "TCGA_HT_0003_20000101",  # Dice 0.8
    "missed": "TCGA_HT_0004_20000101",  # Dice 0 (empty prediction)
}


def _cube(x0=2, x1=6) -> np.ndarray:
    m = np.zeros(SHAPE, dtype=bool)
    m[x0:x1, 2:6, 2:6] = True
    return m


def _synthetic_set():
    truth = _cube()  # 4x4x4 = 64 voxels
    larger = truth.copy()
    larger[2:6, 6:8, 2:6] = True  # 32 extra voxels: 96 predicted, Dice 2*64/160 = 0.8
    return {
        IDS["perfect"]: (truth, truth.copy()),
        IDS["shifted"]: (truth, _cube(4, 8)),  # overlap 32 -> Dice 0.5
        IDS["larger"]: (truth, larger),
        IDS["missed"]: (truth, np.zeros(SHAPE, dtype=bool)),
    }


@pytest.fixture(scope="module")
def evaluated():
    data = _synthetic_set()
    acc = SliceMetricsAccumulator()
    records = []
    for pid, (truth, pred) in data.items():
        records.append(patient_metrics(pred, truth, spacing=(1.0, 1.0, 2.0), patient_id=pid))
        acc.update(pred, truth)
    rng = np.random.default_rng(0)
    images = {pid: rng.random((3, *SHAPE)).astype(np.float32) for pid in data}
    cases = {pid: (images[pid], truth, pred) for pid, (truth, pred) in data.items()}
    return records, acc.compute(), cases


def test_known_dice_and_selection(evaluated):
    records, _, _ = evaluated
    dice = {r["patient_id"]: r["dice"] for r in records}
    assert dice[IDS["perfect"]] == pytest.approx(1.0)
    assert dice[IDS["shifted"]] == pytest.approx(0.5)
    assert dice[IDS["larger"]] == pytest.approx(0.8)
    assert dice[IDS["missed"]] == 0.0
    # ranked worst -> best: missed 0, shifted 0.5, larger 0.8, perfect 1; lower median = shifted
    assert select_cases(records) == {"best": IDS["perfect"], "median": IDS["shifted"], "worst": IDS["missed"]}


def test_summarise_overall_and_per_institution(evaluated):
    records, _, _ = evaluated
    s = summarise(records)
    d = s["overall"]["metrics"]["dice"]
    assert d["n"] == 4 and d["n_undefined"] == 0
    assert d["mean"] == pytest.approx(0.575)
    assert d["median"] == pytest.approx(0.65)
    assert d["std"] == pytest.approx(math.sqrt(0.5675 / 3))  # sample std
    cs, ht = s["per_institution"]["CS"], s["per_institution"]["HT"]
    assert cs["n_patients"] == 2 and ht["n_patients"] == 2
    assert cs["metrics"]["dice"]["mean"] == pytest.approx(0.75)
    assert cs["metrics"]["dice"]["std"] == pytest.approx(math.sqrt(0.125))
    assert ht["metrics"]["dice"]["mean"] == pytest.approx(0.4)
    assert ht["metrics"]["dice"]["median"] == pytest.approx(0.4)
    hd = s["overall"]["metrics"]["hd95_mm"]
    assert hd["n"] == 3 and hd["n_undefined"] == 1  # the empty prediction has no HD95
    assert s["overall"]["lesions"]["lesions_true"] == 4
    assert s["overall"]["lesions"]["lesions_detected"] == 3
    assert s["overall"]["lesions"]["pooled_lesion_sensitivity"] == pytest.approx(0.75)
    assert "ddof = 1" in s["convention"]


def test_summarise_nan_only_and_single_values():
    s = summarise(
        [{"patient_id": "a", "institution": "XX", "dice": 0.3, "hd95_mm": math.nan}],
        metrics=("dice", "hd95_mm"),
    )
    assert s["overall"]["metrics"]["dice"]["mean"] == pytest.approx(0.3)
    assert math.isnan(s["overall"]["metrics"]["dice"]["std"])  # one value: no sample std
    hd = s["overall"]["metrics"]["hd95_mm"]
    assert hd["n"] == 0 and hd["n_undefined"] == 1 and math.isnan(hd["mean"])
    assert select_cases([{"patient_id": "a", "dice": math.nan}]) == {}
    # ties broken by patient id
    tied = [{"patient_id": "b", "dice": 0.5}, {"patient_id": "a", "dice": 0.5}]
    assert select_cases(tied) == {"best": "b", "median": "a", "worst": "a"}


def _is_png(path) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_write_report_files(evaluated, tmp_path):
    records, slice_summary, cases = evaluated
    paths = write_report(records, slice_summary, tmp_path / "eval", cases=cases, extra={"network": "unext"})
    out = tmp_path / "eval"
    expected = {
        "metrics_per_patient.csv",
        "metrics_summary.csv",
        "metrics.json",
        "dice_per_institution.png",
        "volume_pred_vs_true.png",
        "overlay_best.png",
        "overlay_median.png",
        "overlay_worst.png",
    }
    assert {p.name for p in out.iterdir()} == expected  # no temporary files left behind
    assert {p.name for p in paths.values()} == expected

    with open(out / "metrics_per_patient.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["patient_id"] for r in rows] == [r["patient_id"] for r in records]
    by_id = {r["patient_id"]: r for r in rows}
    assert float(by_id[IDS["shifted"]]["dice"]) == pytest.approx(0.5)
    assert by_id[IDS["missed"]]["hd95_mm"] == "nan" and by_id[IDS["missed"]]["precision"] == "nan"
    assert by_id[IDS["larger"]]["institution"] == "HT"
    assert float(by_id[IDS["larger"]]["volume_pred_mm3"]) == pytest.approx(192.0)  # 96 voxels x 2 mm^3

    with open(out / "metrics_summary.csv", newline="") as f:
        summary_rows = {(r["group"], r["metric"]): r for r in csv.DictReader(f)}
    assert float(summary_rows[("institution:CS", "dice")]["mean"]) == pytest.approx(0.75)
    assert float(summary_rows[("overall", "dice")]["median"]) == pytest.approx(0.65)

    doc = json.loads((out / "metrics.json").read_text())
    assert doc["n_patients"] == 4
    assert "both empty" in doc["conventions"]["patient"]
    assert "perfect slice" in doc["conventions"]["slice"]
    assert doc["summary"]["per_institution"]["HT"]["metrics"]["dice"]["mean"] == pytest.approx(0.4)
    assert doc["summary"]["overall"]["metrics"]["hd95_mm"]["n_undefined"] == 1
    missed = next(p for p in doc["patients"] if p["patient_id"] == IDS["missed"])
    assert missed["hd95_mm"] is None and missed["dice"] == 0.0  # NaN -> null
    sl = doc["slice_level"]
    assert sl["n_slices"] == 4 * SHAPE[2]
    tn, fp = sl["confusion_matrix"][0]
    fn, tp = sl["confusion_matrix"][1]
    assert tp == 64 + 32 + 64 and fn == 32 + 64 and fp == 32 + 32
    assert tn + fp + fn + tp == 4 * int(np.prod(SHAPE))
    assert sl["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert doc["cases"]["worst"]["patient_id"] == IDS["missed"]
    assert doc["cases"]["best"]["slice_index"] in range(2, 6)
    assert doc["run"] == {"network": "unext"}

    for name in expected:
        if name.endswith(".png"):
            assert _is_png(out / name)
            img = imread(out / name)
            assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


def test_write_report_with_loader_and_missing_case(evaluated, tmp_path):
    records, slice_summary, cases = evaluated
    asked = []

    def loader(pid):
        asked.append(pid)
        if pid == IDS["missed"]:
            raise KeyError(pid)
        return cases[pid]

    paths = write_report(records, None, tmp_path, cases=loader)
    assert sorted(asked) == sorted({IDS["perfect"], IDS["shifted"], IDS["missed"]})
    assert "overlay_worst" not in paths and (tmp_path / "overlay_best.png").is_file()
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert doc["slice_level"] is None and doc["cases"]["worst"] == {"patient_id": IDS["missed"]}


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "x.txt"
    atomic_write_text(target, "old")
    with pytest.raises(TypeError):
        atomic_write_text(target, None)  # type: ignore[arg-type]
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_write_report_without_patients(tmp_path):
    paths = write_report([], SliceMetricsAccumulator().compute(), tmp_path)
    doc = json.loads(paths["json"].read_text())
    assert doc["n_patients"] == 0 and doc["cases"] == {}
    assert doc["summary"]["overall"]["metrics"] == {} and doc["slice_level"]["n_slices"] == 0
    assert _is_png(paths["dice_plot"]) and _is_png(paths["volume_plot"])
