"""Per-patient and slice-level metrics against hand-computed values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance
from scipy import ndimage

from pipeline.evaluation.metrics import (
    PATIENT_METRIC_KEYS,
    SliceMetricsAccumulator,
    institution_from_patient_id,
    patient_metrics,
)


def _vol(shape=(10, 10, 10)) -> np.ndarray:
    return np.zeros(shape, dtype=bool)


def test_two_cubes_overlap_and_volumes_with_anisotropic_spacing():
    truth, pred = _vol(), _vol()
    truth[2:6, 2:6, 2:6] = True  # 64 voxels
    pred[2:6, 2:6, 2:8] = True  # 96 voxels, contains the truth
    r = patient_metrics(pred, truth, spacing=(1.0, 2.0, 3.0), patient_id="TCGA_CS_0001_20000101")
    assert list(r) == list(PATIENT_METRIC_KEYS)
    assert r["patient_id"] == "TCGA_CS_0001_20000101" and r["institution"] == "CS"
    assert r["n_slices"] == 10
    assert r["dice"] == pytest.approx(2 * 64 / (64 + 96))  # 0.8
    assert r["iou"] == pytest.approx(64 / 96)
    assert r["sensitivity"] == pytest.approx(1.0)
    assert r["precision"] == pytest.approx(64 / 96)
    assert (r["tp"], r["fp"], r["fn"], r["tn"]) == (64, 32, 0, 1000 - 96)
    # voxel volume 6 mm^3
    assert r["volume_true_mm3"] == pytest.approx(384.0)
    assert r["volume_pred_mm3"] == pytest.approx(576.0)
    assert r["volume_diff_mm3"] == pytest.approx(192.0)
    assert r["abs_volume_diff_mm3"] == pytest.approx(192.0)
    assert r["rel_volume_diff"] == pytest.approx(0.5)
    assert (r["lesions_true"], r["lesions_detected"], r["lesions_pred"], r["lesions_false_positive"]) == (
        1,
        1,
        1,
        0,
    )
    assert r["lesion_sensitivity"] == 1.0


def test_shifted_cubes_dice_iou():
    truth, pred = _vol(), _vol()
    truth[2:6, 2:6, 2:6] = True
    pred[4:8, 2:6, 2:6] = True  # overlap 2x4x4 = 32
    r = patient_metrics(pred, truth)
    assert r["dice"] == pytest.approx(0.5)
    assert r["iou"] == pytest.approx(1 / 3)
    assert r["sensitivity"] == pytest.approx(0.5) and r["precision"] == pytest.approx(0.5)
    assert r["volume_diff_mm3"] == 0.0 and r["rel_volume_diff"] == 0.0


def test_single_voxels_distance_with_spacing():
    truth, pred = _vol(), _vol()
    pred[1, 1, 1] = True
    truth[4, 1, 1] = True  # 3 voxels apart along axis 0, spacing 2 mm -> 6 mm
    r = patient_metrics(pred, truth, spacing=(2.0, 1.0, 1.0))
    assert r["hd95_mm"] == pytest.approx(6.0)
    assert r["assd_mm"] == pytest.approx(6.0)
    assert r["dice"] == 0.0 and r["iou"] == 0.0
    assert (r["lesions_true"], r["lesions_detected"], r["lesions_pred"], r["lesions_false_positive"]) == (
        1,
        0,
        1,
        1,
    )
    assert r["lesion_sensitivity"] == 0.0


def test_hd95_percentile_and_assd_pooling():
    # pred {a}; truth {a, b} with b 4 slices away (spacing 0.5 -> 2 mm)
    # pred->truth distances [0]; truth->pred [0, 2]
    # HD95 = max(q95([0]), q95([0, 2])) = 0.95 * 2 = 1.9; ASSD = mean([0, 0, 2]) = 2/3
    truth, pred = _vol(), _vol()
    pred[1, 1, 1] = True
    truth[1, 1, 1] = truth[1, 1, 5] = True
    r = patient_metrics(pred, truth, spacing=(1.0, 1.0, 0.5))
    assert r["hd95_mm"] == pytest.approx(1.9, abs=1e-5)
    assert r["assd_mm"] == pytest.approx(2 / 3, abs=1e-6)
    assert r["dice"] == pytest.approx(2 / 3)
    assert (r["lesions_true"], r["lesions_detected"], r["lesions_pred"], r["lesions_false_positive"]) == (
        2,
        1,
        1,
        0,
    )
    assert r["lesion_sensitivity"] == 0.5


def test_shifted_planes_touching_the_volume_border():
    # one-voxel-thick planes span the whole (W, D) extent: every voxel is a surface voxel
    truth, pred = _vol((8, 5, 5)), _vol((8, 5, 5))
    truth[2] = True
    pred[5] = True
    r = patient_metrics(pred, truth, spacing=(2.0, 1.0, 1.0))
    assert r["hd95_mm"] == pytest.approx(6.0)
    assert r["assd_mm"] == pytest.approx(6.0)


@pytest.mark.filterwarnings("ignore:.*always_return_as_numpy")
def test_cropped_computation_equals_whole_volume_monai():
    rng = np.random.default_rng(0)
    spacing = (0.8, 1.1, 3.0)
    for seed in range(3):
        noise = ndimage.gaussian_filter(rng.standard_normal((48, 40, 14)), 2.0)
        truth = noise > 0.12
        pred = ndimage.binary_dilation(np.roll(truth, seed + 1, axis=1), iterations=seed)
        pred[0, 0, 0] = True  # a far-away false positive at the volume corner
        r = patient_metrics(pred, truth, spacing=spacing)
        p = torch.from_numpy(pred)[None, None].float()
        g = torch.from_numpy(truth)[None, None].float()
        hd = float(
            compute_hausdorff_distance(p, g, include_background=True, percentile=95, spacing=spacing)[0, 0]
        )
        asd = compute_average_surface_distance(p, g, include_background=True, symmetric=True, spacing=spacing)
        assert r["hd95_mm"] == pytest.approx(hd, rel=1e-5)
        assert r["assd_mm"] == pytest.approx(float(asd[0, 0]), rel=1e-5)
        tp = int((pred & truth).sum())
        assert r["dice"] == pytest.approx(2 * tp / (pred.sum() + truth.sum()))
        assert r["tn"] == int((~pred & ~truth).sum())


def test_empty_prediction():
    truth, pred = _vol(), _vol()
    truth[2:4, 2:4, 2:4] = True
    r = patient_metrics(pred, truth)
    assert r["dice"] == 0.0 and r["iou"] == 0.0 and r["sensitivity"] == 0.0
    assert math.isnan(r["precision"])
    assert math.isnan(r["hd95_mm"]) and math.isnan(r["assd_mm"])
    assert r["volume_pred_mm3"] == 0.0 and r["rel_volume_diff"] == pytest.approx(-1.0)
    assert r["abs_volume_diff_mm3"] == pytest.approx(8.0)
    assert (r["lesions_true"], r["lesions_detected"], r["lesions_pred"], r["lesions_false_positive"]) == (
        1,
        0,
        0,
        0,
    )


def test_empty_truth():
    truth, pred = _vol(), _vol()
    pred[2:4, 2:4, 2:4] = True
    r = patient_metrics(pred, truth)
    assert r["dice"] == 0.0 and r["iou"] == 0.0 and r["precision"] == 0.0
    assert math.isnan(r["sensitivity"])
    assert math.isnan(r["hd95_mm"]) and math.isnan(r["assd_mm"])
    assert math.isnan(r["rel_volume_diff"]) and r["volume_diff_mm3"] == pytest.approx(8.0)
    assert (r["lesions_true"], r["lesions_pred"], r["lesions_false_positive"]) == (0, 1, 1)
    assert math.isnan(r["lesion_sensitivity"])


def test_both_empty_is_perfect():
    r = patient_metrics(_vol(), _vol())
    assert r["dice"] == 1.0 and r["iou"] == 1.0
    assert r["sensitivity"] == 1.0 and r["precision"] == 1.0
    assert r["hd95_mm"] == 0.0 and r["assd_mm"] == 0.0
    assert r["volume_diff_mm3"] == 0.0 and r["rel_volume_diff"] == 0.0
    assert r["tn"] == 1000 and r["lesions_true"] == 0


def test_lesion_detection_counts_and_connectivity():
    truth, pred = _vol((20, 20, 6)), _vol((20, 20, 6))
    truth[1:4, 1:4, 1:3] = True  # lesion A
    truth[12:15, 12:15, 1:3] = True  # lesion B (missed)
    pred[2:5, 2:5, 1:3] = True  # overlaps A
    pred[1:3, 15:18, 4] = True  # false positive
    r = patient_metrics(pred, truth)
    assert (r["lesions_true"], r["lesions_detected"], r["lesions_pred"], r["lesions_false_positive"]) == (
        2,
        1,
        2,
        1,
    )
    assert r["lesion_sensitivity"] == 0.5
    # two voxels touching only by a corner: one lesion with 26-, two with 6-connectivity
    t = _vol((5, 5, 5))
    t[1, 1, 1] = t[2, 2, 2] = True
    assert patient_metrics(t, t)["lesions_true"] == 1
    assert patient_metrics(t, t, connectivity=6)["lesions_true"] == 2


def test_inputs_torch_channel_first_and_validation():
    truth = torch.zeros(1, 6, 6, 4)
    truth[0, 1:3, 1:3, 1:3] = 1
    r = patient_metrics(truth.clone(), truth, institution="XX")
    assert r["dice"] == 1.0 and r["institution"] == "XX" and r["n_slices"] == 4
    with pytest.raises(ValueError, match="binary"):
        patient_metrics(truth * 0.5, truth)
    with pytest.raises(ValueError, match="shapes"):
        patient_metrics(np.zeros((6, 6, 3)), np.zeros((6, 6, 4)))
    with pytest.raises(ValueError, match="spacing"):
        patient_metrics(np.zeros((6, 6, 3)), np.zeros((6, 6, 3)), spacing=(1.0, 1.0))
    assert institution_from_patient_id("TCGA_HT_A61A_20000127") == "HT"
    assert institution_from_patient_id("case_1") is None


def test_slice_accumulator_hand_computed():
    truth, pred = _vol((4, 4, 3)), _vol((4, 4, 3))
    # slice 0: both empty (perfect); slice 1: truth 4 px, pred 2 of them; slice 2: 1 px false positive
    truth[0:2, 0:2, 1] = True
    pred[0:2, 0, 1] = True
    pred[3, 3, 2] = True
    acc = SliceMetricsAccumulator()
    acc.update(pred, truth)
    s = acc.compute()
    assert "perfect slice" in s["convention"]
    assert (
        s["n_slices"],
        s["n_slices_truth_positive"],
        s["n_slices_pred_positive"],
        s["n_slices_both_empty"],
    ) == (
        3,
        1,
        2,
        1,
    )
    assert s["confusion_matrix"] == [[43, 1], [2, 2]]
    assert s["pixel_accuracy"] == pytest.approx(45 / 48)
    assert s["iou"] == pytest.approx(2 / 5)
    assert s["dice"] == pytest.approx(4 / 7) and s["f1"] == pytest.approx(4 / 7)
    assert s["precision"] == pytest.approx(2 / 3) and s["recall"] == pytest.approx(0.5)
    assert s["iou_background"] == pytest.approx(43 / 46)
    assert s["miou"] == pytest.approx((2 / 5 + 43 / 46) / 2)
    assert s["slice_mean_dice"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert s["slice_mean_iou"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert s["slice_mean_dice_positive"] == pytest.approx(2 / 3)
    assert s["slice_mean_iou_positive"] == pytest.approx(0.5)

    # a second patient (another in-plane size): one perfect tumour slice
    acc.update(torch.ones(1, 2, 2, 1), torch.ones(1, 2, 2, 1))
    s = acc.compute()
    assert s["n_slices"] == 4 and s["confusion_matrix"] == [[43, 1], [2, 6]]
    assert s["slice_mean_dice_positive"] == pytest.approx((2 / 3 + 1) / 2)
    acc.reset()
    assert acc.compute()["n_slices"] == 0 and math.isnan(acc.compute()["slice_mean_dice"])


@pytest.mark.realdata
def test_benchmark_script_on_real_masks(kaggle_root, tmp_path, load_script):
    module = load_script("benchmark_metrics")
    out = tmp_path / "bench.json"
    assert module.main(["--root", str(kaggle_root), "--limit", "2", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["n_patients"] == 2
    for row in result["patients"]:
        assert row["shape"][:2] == [256, 256] and 20 <= row["shape"][2] <= 88
        assert 0.3 < row["dice"] < 1.0 and row["hd95_mm"] > 0
