"""Transforms: normalisation, 2.5D context, tumour-weighted slice sampling, post-processing, the chains."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import CacheDataset

from pipeline.inference.postprocessing import build_postprocessing
from pipeline.transforms import (
    BrainNormalize,
    LoadVolumed,
    RandSliceByPosNegd,
    SliceContext,
    TransformSettings,
    build_transforms,
    gather_slices,
)


def _volume(h: int = 32, w: int = 32, d: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A (3, H, W, D) image with a disc of brain and a tumour on slices 3..5, and its (1, H, W, D) label."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    brain = ((yy - h / 2) ** 2 + (xx - w / 2) ** 2) < (0.4 * h) ** 2
    image = np.zeros((3, h, w, d), np.float32)
    image[:, brain, :] = rng.uniform(50, 100, size=(3, int(brain.sum()), d))
    label = np.zeros((1, h, w, d), np.uint8)
    tumour = ((yy - h / 2) ** 2 + (xx - w / 2) ** 2) < (0.1 * h) ** 2
    label[0, tumour, 3:6] = 1
    image[1, tumour, 3:6] = 200
    return torch.from_numpy(image), torch.from_numpy(label)


def _write_case(folder, h=32, w=32, d=10):
    image, label = _volume(h, w, d)
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(
        nib.Nifti1Image(np.moveaxis(image.numpy(), 0, -1).astype(np.uint8), np.eye(4)),
        folder / "image.nii.gz",
    )
    nib.save(nib.Nifti1Image(label.numpy()[0], np.eye(4)), folder / "label.nii.gz")
    return {
        "image": str(folder / "image.nii.gz"),
        "label": str(folder / "label.nii.gz"),
        "patient": folder.name,
    }


def test_brain_normalize_zscores_brain_and_zeroes_background():
    image, _ = _volume()
    image[0, 16, 16, 0] = 1e6  # an outlier the percentile clip must tame
    out = BrainNormalize(lower=1, upper=99)(image)
    brain = (image > 0).any(0)
    for c in range(3):
        values = out[c][brain]
        assert abs(float(values.mean())) < 1e-4
        assert abs(float(values.std(unbiased=False)) - 1) < 1e-3
    assert torch.all(out[:, ~brain] == 0)
    assert float(out[0].max()) < 10  # clipped to the 99th percentile before the z-score
    assert torch.all(BrainNormalize()(torch.zeros(3, 4, 4, 2)) == 0)  # no brain at all: zeros, no NaN
    with pytest.raises(ValueError):
        BrainNormalize(lower=99, upper=1)


def test_gather_slices_stacks_neighbours_channel_major_with_zero_padding():
    volume = torch.arange(2 * 1 * 1 * 4, dtype=torch.float32).reshape(2, 1, 1, 4)  # value = 4 * c + z
    out = gather_slices(volume, torch.tensor([0, 3]), context=1)
    assert out.shape == (6, 1, 1, 2)
    # slice 0: channel 0 -> (pad, z0, z1) = (0, 0, 1); channel 1 -> (0, 4, 5)
    assert out[:, 0, 0, 0].tolist() == [0, 0, 1, 0, 4, 5]
    # slice 3: channel 0 -> (z2, z3, pad) = (2, 3, 0); channel 1 -> (6, 7, 0)
    assert out[:, 0, 0, 1].tolist() == [2, 3, 0, 6, 7, 0]
    full = SliceContext(1)(volume)
    assert full.shape == (6, 1, 1, 4)
    assert torch.equal(full[..., [0, 3]], out)
    assert SliceContext(0)(volume) is volume


@pytest.mark.parametrize("pos,neg,expect_positive", [(1.0, 0.0, True), (0.0, 1.0, False)])
def test_slice_sampler_respects_the_ratio(pos, neg, expect_positive):
    image, label = _volume()
    sampler = RandSliceByPosNegd("image", "label", num_samples=20, pos=pos, neg=neg, context=1)
    sampler.set_random_state(0)
    samples = sampler({"image": image, "label": label, "patient": "p"})
    assert len(samples) == 20
    for s in samples:
        assert s["image"].shape == (9, 32, 32) and s["label"].shape == (1, 32, 32)
        assert (3 <= s["slice_index"] <= 5) == expect_positive
        assert bool(s["label"].any()) == expect_positive
        z = s["slice_index"]
        assert torch.equal(s["image"][4], image[1, ..., z])  # FLAIR of the sampled slice in the middle
        if z > 0:
            assert torch.equal(s["image"][3], image[1, ..., z - 1])  # and its neighbour below
        assert s["patient"] == "p"


def test_slice_sampler_mixes_and_falls_back():
    image, label = _volume()
    sampler = RandSliceByPosNegd(num_samples=400, pos=1, neg=3)
    sampler.set_random_state(1)
    positives = sum(3 <= s["slice_index"] <= 5 for s in sampler({"image": image, "label": label}))
    assert 70 < positives < 130  # expected 100 of 400
    no_tumour = torch.zeros_like(label)
    sampler = RandSliceByPosNegd(num_samples=5, pos=1, neg=0)
    assert len(sampler({"image": image, "label": no_tumour})) == 5  # no positive slice: negatives instead
    with pytest.raises(ValueError):
        RandSliceByPosNegd(pos=0, neg=0)


def ConnectedComponentFilter(keep_largest: int = 0, min_size: int = 0):  # noqa: N802 - the former class
    """The post-processing's connected-component filters (MONAI's KeepLargestConnectedComponentd, then
    RemoveSmallComponentsd) on a binary mask."""
    post = build_postprocessing(0.5, keep_largest, min_size)
    return lambda mask: post({"pred": mask})["pred"]


def test_connected_component_filter():
    mask = torch.zeros(1, 10, 10, 3)
    mask[0, 0:4, 0:4, 0] = 1  # 16 voxels
    mask[0, 7:9, 7:9, 1] = 1  # 4 voxels
    mask[0, 5, 0, 2] = 1  # 1 voxel
    largest = ConnectedComponentFilter(keep_largest=1)(mask)
    assert int(largest.sum()) == 16
    assert int(ConnectedComponentFilter(min_size=4)(mask).sum()) == 20
    assert int(ConnectedComponentFilter(keep_largest=2, min_size=5)(mask).sum()) == 16
    assert torch.equal(ConnectedComponentFilter()(mask), mask)
    assert int(ConnectedComponentFilter(keep_largest=1)(torch.zeros(1, 3, 3, 3)).sum()) == 0


def test_train_and_val_chains(tmp_path):
    entry = _write_case(tmp_path / "TCGA_CS_0001_20000101")
    settings = TransformSettings(
        context=1, input_size=(16, 16), num_samples=3, divisible=16, prob_elastic=1.0
    )
    train = build_transforms("train", settings)
    train.set_random_state(0)
    samples = train(entry)
    assert len(samples) == 3
    for s in samples:
        assert s["image"].shape == (9, 16, 16) and s["image"].dtype == torch.float32
        assert s["label"].shape == (1, 16, 16) and set(s["label"].unique().tolist()) <= {0.0, 1.0}
    val = build_transforms("val", settings)(entry)
    assert val["image"].shape == (3, 32, 32, 10) and val["label"].shape == (1, 32, 32, 10)
    assert val["label"].dtype == torch.uint8
    infer = build_transforms("infer", settings)({"image": entry["image"]})
    assert torch.equal(infer["image"], val["image"])
    patches = build_transforms("train", {"spatial_dims": 3, "patch_size": (16, 16, 4), "num_samples": 2})(
        entry
    )
    assert [p["image"].shape for p in patches] == [(3, 16, 16, 4)] * 2
    with pytest.raises(ValueError):
        build_transforms("predict")


def test_cache_holds_normalised_volumes_so_later_epochs_read_no_file(tmp_path):
    entry = _write_case(tmp_path / "case")
    ds = CacheDataset([entry], build_transforms("train", {"num_samples": 2}), cache_rate=1.0, progress=False)
    (tmp_path / "case" / "image.nii.gz").unlink()
    (tmp_path / "case" / "label.nii.gz").unlink()
    for _ in range(2):
        assert len(ds[0]) == 2  # sampled from the cache
    cached = ds._cache[0]
    assert cached["image"].dtype == torch.float16 and cached["label"].dtype == torch.uint8


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="image file not found"):
        LoadVolumed()({"image": str(tmp_path / "nope.nii.gz"), "label": str(tmp_path / "nope2.nii.gz")})
