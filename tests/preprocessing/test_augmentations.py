"""Robustness augmentations of model 0.3: derived brain masks, skull-stripped views, sequence dropout, and
the MONAI intensity / scale augmentations wired into the training chain."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from pipeline.config import RunConfig, validate_config
from pipeline.preprocessing.augmentations import (
    STRIPPED_SUFFIX,
    RandSequenceDropoutd,
    RandSkullStripd,
    SkullStrippedViewd,
    derive_brain_mask,
)
from pipeline.transforms import build_transforms


def synthetic_head(size: int = 96, depth: int = 6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A head: bright scalp ring, dark skull ring, grey brain disk with a brighter tumour; 3 channels."""
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    brain = r < size * 0.30
    slice_ = np.random.default_rng(0).uniform(0.0, 10.0, (size, size)).astype(np.float32)  # air: noise
    slice_[(r >= size * 0.30) & (r < size * 0.36)] = 0.0  # skull: no signal
    slice_[brain] = 100.0
    slice_[(r >= size * 0.36) & (r < size * 0.42)] = 180.0  # scalp, outside a dark skull ring
    tumour = np.hypot(yy - size * 0.45, xx - size * 0.55) < size * 0.06
    slice_[tumour] = 160.0
    image = np.repeat(np.repeat(slice_[None, :, :, None], 3, axis=0), depth, axis=3)
    label = np.repeat(tumour[None, :, :, None], depth, axis=3).astype(np.uint8)
    return image, label, np.repeat(brain[:, :, None], depth, axis=2)


def test_derived_brain_mask_keeps_the_brain_and_drops_the_scalp() -> None:
    image, label, brain = synthetic_head()
    mask = derive_brain_mask(image, label, radius=3)
    assert mask.shape == brain.shape and mask.dtype == bool
    dice = 2 * (mask & brain).sum() / (mask.sum() + brain.sum())
    assert dice > 0.95
    scalp = image[0] == 180.0
    assert not (mask & scalp).any()


def test_the_label_is_always_inside_the_derived_mask() -> None:
    image, label, _ = synthetic_head()
    label[:, 2:6, 2:6, :] = 1  # a "tumour" in the corner, outside the head
    mask = derive_brain_mask(image, label, radius=3)
    assert mask[label[0] > 0].all()


def test_an_empty_volume_gives_an_empty_mask() -> None:
    assert not derive_brain_mask(np.zeros((3, 16, 16, 2), np.float32)).any()


def test_skull_stripped_view_is_the_image_inside_the_brain_and_the_minimum_outside() -> None:
    image, label, _ = synthetic_head()
    data = {
        "image": MetaTensor(torch.from_numpy(image), meta={"patient": "p"}),
        "label": torch.from_numpy(label),
    }
    out = SkullStrippedViewd("image", "label", radius=3)(data)
    stripped = out["image" + STRIPPED_SUFFIX]
    assert isinstance(stripped, MetaTensor) and stripped.meta["patient"] == "p"
    assert torch.equal(out["image"].as_tensor(), torch.from_numpy(image))  # the original is kept
    mask = torch.from_numpy(derive_brain_mask(image, label, radius=3))
    assert torch.equal(stripped.as_tensor()[:, mask], torch.from_numpy(image)[:, mask])
    assert float(stripped.as_tensor()[:, ~mask].max()) == float(image.min())  # the minimum outside
    assert float(stripped[0][image[0] == 180.0].max()) == float(image.min())  # scalp gone


@pytest.mark.parametrize("prob, expect_stripped", [(1.0, True), (0.0, False)])
def test_rand_skull_strip_picks_the_copy_and_always_drops_it(prob: float, expect_stripped: bool) -> None:
    data = {"image": torch.ones(3, 4, 4, 2), "image" + STRIPPED_SUFFIX: torch.zeros(3, 4, 4, 2)}
    out = RandSkullStripd("image", prob=prob)(data)
    assert "image" + STRIPPED_SUFFIX not in out
    assert float(out["image"].sum()) == (0.0 if expect_stripped else 3 * 4 * 4 * 2)


def test_sequence_dropout_copies_flair_into_the_dropped_channels() -> None:
    image = torch.stack([torch.full((4, 4, 2), float(c)) for c in range(3)])
    xf = RandSequenceDropoutd("image", prob=1.0)
    seen = set()
    for seed in range(30):
        xf.set_random_state(seed)
        out = xf({"image": image})["image"]
        assert torch.equal(out[1], image[1])  # FLAIR untouched
        dropped = tuple(c for c in (0, 2) if torch.equal(out[c], image[1]))
        kept = tuple(c for c in (0, 2) if torch.equal(out[c], image[c]))
        assert dropped and len(dropped) + len(kept) == 2
        seen.add(dropped)
    assert seen == {(0,), (2,), (0, 2)}
    assert torch.equal(RandSequenceDropoutd("image", prob=0.0)({"image": image})["image"], image)


def test_sequence_dropout_refuses_other_channel_counts() -> None:
    with pytest.raises(ValueError, match="3 channels"):
        RandSequenceDropoutd("image", prob=1.0)({"image": torch.zeros(9, 4, 4)})


ROBUST = {
    "prob_skull_strip": 1.0,
    "prob_sequence_dropout": 0.5,
    "prob_zoom": 1.0,
    "prob_bias_field": 1.0,
    "prob_histogram_shift": 1.0,
    "prob_smooth": 1.0,
    "prob_noise": 1.0,
}


def _write_head(folder) -> dict[str, str]:
    import nibabel as nib

    image, label, _ = synthetic_head(size=64, depth=5)
    nib.save(nib.Nifti1Image(np.moveaxis(image, 0, -1).astype(np.uint8), np.eye(4)), folder / "image.nii.gz")
    nib.save(nib.Nifti1Image(label[0], np.eye(4)), folder / "label.nii.gz")
    return {"image": str(folder / "image.nii.gz"), "label": str(folder / "label.nii.gz")}


def test_training_chain_with_every_robustness_augmentation(tmp_path) -> None:
    chain = build_transforms("train", {"context": 1, "num_samples": 4, **ROBUST})
    chain.set_random_state(0)
    samples = chain(_write_head(tmp_path))
    assert len(samples) == 4
    for sample in samples:
        assert set(sample) >= {"image", "label"} and "image" + STRIPPED_SUFFIX not in sample
        assert sample["image"].shape == (9, 64, 64) and sample["label"].shape == (1, 64, 64)
        assert torch.isfinite(sample["image"]).all()
        assert set(torch.unique(sample["label"]).tolist()) <= {0.0, 1.0}


def test_histogram_shift_of_a_background_patch_is_silent_and_unchanged(tmp_path) -> None:
    import warnings

    base = {"context": 0, "num_samples": 1, "prob_flip": 0, "prob_rotate": 0, "prob_elastic": 0}
    base |= {"prob_scale_intensity": 0, "prob_shift_intensity": 0, "prob_gamma": 0}
    shift = [
        t
        for t in build_transforms("train", {**base, "prob_histogram_shift": 1.0}).transforms
        if type(t).__name__ == "RandHistogramShiftd"
    ]
    assert len(shift) == 1
    background = {"image": torch.full((3, 8, 8), 0.25)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # as a training run sees them
        from pipeline.preprocessing.augmentations import _histogram_shift

        shifted = _histogram_shift("image", 1.0)(background)["image"]
    assert torch.equal(shifted, background["image"])  # one intensity: returned as it was
    assert not [w for w in caught if "single value" in str(w.message)], [str(w.message) for w in caught]


def test_the_stripped_view_is_normalised_on_the_brain_alone(tmp_path) -> None:
    files = _write_head(tmp_path)
    base = {"context": 0, "num_samples": 2, "prob_flip": 0, "prob_rotate": 0, "prob_elastic": 0}
    base |= {"prob_scale_intensity": 0, "prob_shift_intensity": 0, "prob_gamma": 0}
    stripped = build_transforms("train", {**base, "prob_skull_strip": 1.0})(files)[0]["image"]
    whole = build_transforms("train", base)(files)[0]["image"]
    scalp = torch.from_numpy(synthetic_head(size=64, depth=5)[0][0, :, :, 0] == 180.0)
    # normalised as an already skull-stripped scan is: air and scalp 0 (outside), brain zero-mean
    assert float(stripped[0][scalp].abs().max()) == 0.0 and float(whole[0][scalp].abs().min()) > 0.5
    brain = stripped[0] != 0
    assert abs(float(stripped[0][brain].mean())) < 0.2


def test_robustness_options_default_off_and_are_validated() -> None:
    cfg = RunConfig()
    assert all(getattr(cfg, key) == 0.0 for key in ROBUST)
    with pytest.raises(ValueError, match="prob_zoom"):
        validate_config(RunConfig(prob_zoom=1.5))
    with pytest.raises(ValueError, match="zoom_range"):
        validate_config(RunConfig(zoom_range=(1.2, 0.8)))
    with pytest.raises(ValueError, match="train_on_all"):
        validate_config(RunConfig(train_on_all=True, early_stopping=3))
    assert RunConfig.from_dict({"zoom_range": [0.8, 1.2]}).zoom_range == (0.8, 1.2)


# ----------------------------------------------------------------------------- train_on_all (nnU-Net style)


def test_train_on_all_trains_on_every_fold_but_the_test_fold(synthetic_data) -> None:
    from pipeline.workflows.builders import split_datalist

    plain = split_datalist(RunConfig(data=str(synthetic_data), fold=0))
    train, watched, test = split_datalist(RunConfig(data=str(synthetic_data), fold=0, train_on_all=True))
    ids = lambda part: sorted(e["patient"] for e in part)  # noqa: E731
    assert ids(train) == ids(plain[0] + plain[1]) and ids(watched) == ids(test) == ids(plain[2])
    assert not set(ids(train)) & set(ids(test))


@pytest.mark.slow
def test_train_on_all_keeps_the_last_epochs_model(synthetic_data, tmp_path) -> None:
    from pipeline.model_files import load_checkpoint
    from pipeline.workflows.training import train

    cfg = {
        "data": str(synthetic_data),
        "output": str(tmp_path),
        "epochs": 3,
        "batch_size": 8,
        "num_samples": 8,
    }
    cfg |= {"input_size": (32, 32), "progress": False, "overlay_images": 0, "train_on_all": True}
    cfg |= {**ROBUST, "val_interval": 1}
    result = train(cfg)
    ckpt = tmp_path / "lggseg" / "fold0" / "checkpoints"
    final = load_checkpoint(ckpt / "best_model.pt")
    last = load_checkpoint(ckpt / "checkpoint_epoch=3.pt")
    assert result["epochs"] == 3 and final["config"]["train_on_all"] is True
    for name, weights in last["model"].items():
        assert torch.equal(final["model"][name], weights), name
