"""The per-case quality estimate and review flags (issue 30), and the artefact-component filter (issue 32)."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from pipeline.cli import main
from pipeline.config import RunConfig
from pipeline.evaluation.handler import quality_agreement
from pipeline.inference.inferers import VolumeInferer
from pipeline.inference.postprocessing import build_postprocessing
from pipeline.inference.quality import (
    FLAGS,
    QC_KEY,
    TTA_AGREEMENT_KEY,
    CaseQuality,
    calibrated_score,
    case_quality,
    flip_agreement,
)
from pipeline.model_files import create_network
from pipeline.preprocessing.components import FilterComponentsd

CALIBRATION = {"slope": 40.0, "intercept": -36.0, "review_below": 0.7}


def _head(shape=(32, 32, 20)) -> np.ndarray:
    """A normalised 3-channel input: a head ellipsoid (non-zero) on a zero background."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    head = ((grid**2).sum(0) < 0.9).astype(np.float32)
    return np.stack([head, head * 0.5, head])


def _ball(shape, centre, radius) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    return ((grid - np.asarray(centre)[:, None, None, None]) ** 2).sum(0) <= radius**2


# ------------------------------------------------------------------------------------------- the filter
def test_an_artefact_on_the_top_slices_is_removed_and_the_tumour_kept():
    """The failure of model 0.3.0 on an unseen patient: a vertex blob larger than the tumour. Keeping the
    largest component deleted the tumour (Dice 0.00); the edge rule removes the blob instead."""
    shape = (32, 32, 20)
    tumour = _ball(shape, (16, 16, 10), 3)
    vertex = np.zeros(shape, bool)
    vertex[4:28, 4:28, 18:20] = True  # on the last two slices, larger than the tumour
    assert vertex.sum() > tumour.sum()
    prob = np.where(tumour | vertex, 0.9, 0.05).astype(np.float32)
    kept = FilterComponentsd("pred", edge_slices=2).keep(prob)
    assert kept[tumour].all() and not kept[vertex].any()
    alone = np.where(vertex, 0.9, 0.05).astype(np.float32)  # the only component: never removed
    assert FilterComponentsd("pred", edge_slices=2).keep(alone)[vertex].all()


def test_the_mass_rule_keeps_a_tumour_beside_a_larger_artefact_and_drops_specks():
    shape = (32, 32, 20)
    big, second, speck = (
        _ball(shape, (10, 10, 10), 4),
        _ball(shape, (22, 22, 10), 3),
        _ball(shape, (5, 25, 5), 1),
    )
    prob = np.where(big | second | speck, 0.9, 0.0).astype(np.float32)
    kept = FilterComponentsd("pred", min_mass_fraction=0.3).keep(prob)
    assert kept[big].all() and kept[second].all() and not kept[speck].any()


def test_the_filter_zeroes_the_probability_of_what_it_removes():
    shape = (1, 32, 32, 20)
    prob = torch.full(shape, 0.05)
    prob[0, 10:14, 10:14, 18:] = 0.9
    prob[0, 14:20, 14:20, 8:12] = 0.8
    out = FilterComponentsd("pred", edge_slices=2)({"pred": MetaTensor(prob)})["pred"]
    assert float(out[0, 10:14, 10:14, 18:].max()) == 0.0
    assert float(out[0, 14:20, 14:20, 8:12].min()) == pytest.approx(0.8)
    assert isinstance(out, MetaTensor)


# ---------------------------------------------------------------------------------------- the estimate
def test_the_score_is_the_calibrated_mean_probability_inside_the_mask():
    image = _head()
    tumour = _ball(image.shape[1:], (16, 16, 10), 4)
    prob = np.where(tumour, 0.95, 0.01).astype(np.float32)
    quality = case_quality(prob, prob > 0.5, image, CALIBRATION)
    expected = 1 / (1 + math.exp(-(40.0 * 0.95 - 36.0)))
    assert quality.score == pytest.approx(expected) == pytest.approx(calibrated_score(0.95, CALIBRATION))
    assert not quality.review and quality.flags == []
    unsure = np.where(tumour, 0.6, 0.01).astype(np.float32)
    low = case_quality(unsure, unsure > 0.5, image, CALIBRATION)
    assert low.score < 0.7 and low.review and low.flags[0] == "low_confidence"


def test_an_empty_mask_is_flagged_for_review_never_a_silent_answer():
    image = _head()
    prob = np.full(image.shape[1:], 0.01, np.float32)
    quality = case_quality(prob, prob > 0.5, image, CALIBRATION)
    assert quality.score == 0.0 and quality.review and quality.flags[0] == "empty"


def test_edge_outside_head_and_head_cover_flags_and_the_worst_point():
    image = _head()
    shape = image.shape[1:]
    prob = np.full(shape, 0.01, np.float32)
    prob[_ball(shape, (16, 16, 10), 3)] = 0.97
    prob[12:20, 12:20, 18:] = 0.97  # on the last two slices
    affine = np.diag([1.0, 1.0, 5.0, 1.0])
    quality = case_quality(prob, prob > 0.5, image, CALIBRATION, affine=affine)
    assert "edge" in quality.flags and quality.review
    assert quality.point is not None and quality.point[2] == pytest.approx(18.5 * 5.0)
    air = np.full(shape, 0.01, np.float32)
    air[0:3, 0:3, 5:15] = 0.97  # a corner of the grid: background
    assert "outside_head" in case_quality(air, air > 0.5, image, CALIBRATION).flags
    cover = np.full(shape, 0.01, np.float32)
    cover[..., 10] = np.where(image[0, ..., 10] > 0, 0.97, 0.01)  # a whole head section
    assert "head_cover" in case_quality(cover, cover > 0.5, image, CALIBRATION).flags


def test_input_flags_come_from_what_was_read():
    image = _head()
    prob = np.where(_ball(image.shape[1:], (16, 16, 10), 4), 0.97, 0.01).astype(np.float32)
    sagittal = np.array([[0, 0, 5.0, 0], [1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]])
    meta = {
        "lggseg_stand_ins": "t1+t1c",
        "lggseg_notes": "no qform or sform (both codes 0): the orientation is unknown",
        "lggseg_alignment": "t1c: rigid registration, 12.5 deg, 3.0 mm (mutual information -0.5 -> -0.6)",
        "original_affine": sagittal,
        "spacing_known": True,
    }
    flags = case_quality(prob, prob > 0.5, image, CALIBRATION, meta).flags
    assert {"stand_in", "no_orientation", "registration", "plane"} <= set(flags)
    assert flags[0] == "no_orientation"  # flags that ask for a review come first
    assert all(code in FLAGS for code in flags)


def test_the_estimate_survives_collation_and_json():
    quality = CaseQuality(0.8123, ["edge", "stand_in"], True, [1.0, 2.0, 3.5])
    back = CaseQuality.from_dict({k: [v] for k, v in quality.as_dict().items()})
    assert (back.score, back.flags, back.review, back.point) == (
        0.8123,
        ["edge", "stand_in"],
        True,
        [1.0, 2.0, 3.5],
    )
    assert json.loads(json.dumps(quality.as_dict()))["review"] == "yes"


def test_the_post_processing_writes_the_estimate_beside_the_mask():
    image = MetaTensor(torch.from_numpy(_head()))
    prob = torch.full((1, 32, 32, 20), 0.02)
    prob[0, 12:20, 12:20, 8:12] = 0.96
    out = build_postprocessing(quality=CALIBRATION)({"pred": MetaTensor(prob), "image": image})
    assert set(out[QC_KEY]) == {"qc_score", "review", "qc_flags", "qc_point"}
    assert out[QC_KEY]["review"] == "no" and out[QC_KEY]["qc_score"] > 0.8
    assert int(out["pred"].sum()) == 8 * 8 * 4


# ------------------------------------------------------------------- test-time variants that disagree
def test_flip_agreement_is_the_lowest_dice_with_the_plain_variant():
    plain = torch.zeros(2, 1, 4, 4, 1)
    plain[0, 0, :2, :2] = 0.9  # 4 voxels
    left_right = plain.clone()
    left_right[0, 0, :2, 2] = 0.9  # 6 voxels, 4 shared: Dice 8 / 10
    up_down = plain.clone()
    up_down[0, 0, 0, 0] = 0.1  # 3 voxels, 3 shared: Dice 6 / 7
    agreement = flip_agreement([plain, left_right, up_down])
    assert agreement[0].item() == pytest.approx(0.8)
    assert agreement[1].item() == 1.0  # all three empty: they agree
    assert flip_agreement([plain]).tolist() == [1.0, 1.0]


class _LeftHalf(torch.nn.Module):
    """A 2D 'network' that finds tumour in the left half of each slice only: its left-right flip disagrees."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))  # the inferer runs the windows on its device

    def forward(self, x):
        logits = torch.full_like(x[:, :1], -10.0)
        logits[..., : x.shape[-1] // 2] = 10.0
        return logits


def test_the_inferer_records_flip_agreement_and_the_estimate_flags_it():
    image = MetaTensor(torch.from_numpy(_head((32, 32, 8)))[None], meta={"filename_or_obj": "case"})
    plain = VolumeInferer(spatial_dims=2, tta="none")(image, _LeftHalf())
    assert TTA_AGREEMENT_KEY not in plain.meta
    flipped = VolumeInferer(spatial_dims=2, tta="flip")(image, _LeftHalf())
    # plain: left half; left-right flip: right half (no overlap); up-down flip: left half again
    assert flipped.meta[TTA_AGREEMENT_KEY].tolist() == [0.0]
    assert TTA_AGREEMENT_KEY not in image.meta, "the input's metadata is left as it was"
    assert torch.allclose(flipped.as_tensor(), (plain.as_tensor() * 2 + plain.as_tensor().flip(3)) / 3)
    pred = MetaTensor(flipped.as_tensor()[0], meta={TTA_AGREEMENT_KEY: flipped.meta[TTA_AGREEMENT_KEY][0]})
    out = build_postprocessing(quality=CALIBRATION)({"pred": pred, "image": MetaTensor(image.as_tensor()[0])})
    assert "tta_disagree" in out[QC_KEY]["qc_flags"].split(";") and out[QC_KEY]["review"] == "yes"
    agreed = MetaTensor(flipped.as_tensor()[0], meta={TTA_AGREEMENT_KEY: torch.tensor(0.9)})
    out = build_postprocessing(quality=CALIBRATION)(
        {"pred": agreed, "image": MetaTensor(image.as_tensor()[0])}
    )
    assert "tta_disagree" not in out[QC_KEY]["qc_flags"].split(";")


def test_agreement_figures_are_hand_computable():
    records = [
        {"dice": 0.9, "qc_score": 0.95, "review": "no"},
        {"dice": 0.8, "qc_score": 0.85, "review": "no"},
        {"dice": 0.6, "qc_score": 0.5, "review": "yes"},
        {"dice": 0.3, "qc_score": 0.6, "review": "yes"},
    ]
    figures = quality_agreement(records)
    assert figures["spearman_qc_score_dice"] == pytest.approx(0.8)  # ranks 4,3,1,2 against 4,3,2,1
    assert figures["auroc_qc_score_dice_under_0.7"] == 1.0  # both low patients score under both others
    assert figures["review_catches_under_0.5"] == 1.0 and figures["review_flags_others"] == pytest.approx(
        1 / 3
    )
    assert figures["mean_abs_error"] == pytest.approx((0.05 + 0.05 + 0.1 + 0.3) / 4)


# ------------------------------------------------------------------------------------ through lggseg infer
def test_summary_and_qc_picture_carry_the_estimate(tmp_path):
    cfg = RunConfig(arch="unext", quality=CALIBRATION)
    torch.manual_seed(0)
    model = tmp_path / "model.pt"
    torch.save({"model": create_network(cfg).state_dict(), "config": asdict(cfg)}, model)
    flair = tmp_path / "in" / "p_flair.nii.gz"
    flair.parent.mkdir()
    head = _head((40, 40, 10))[0] * 300
    nib.save(nib.Nifti1Image(head, np.diag([0.9, 0.9, 5.0, 1.0])), flair)
    out = tmp_path / "out"
    assert (
        main(
            [
                "infer",
                "--checkpoint",
                str(model),
                "--input",
                str(flair.parent),
                "--output",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    (row,) = csv.DictReader(open(out / "summary.csv"))
    assert 0.0 <= float(row["qc_score"]) <= 1.0 and row["review"] in ("yes", "no")
    assert "stand_in" in row["qc_flags"].split(";")  # a FLAIR alone: T1 and T1c stood in
    assert (out / "in" / "in_qc.png").read_bytes()[:4] == b"\x89PNG"
