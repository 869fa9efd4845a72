"""Training-speed options: bf16 autocast on the CPU (``amp_cpu``), crops of the sampled slices
(``crop_size``) and hard negatives from the edge slices (``prob_edge_negative``)."""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.inferers import SimpleInferer
from torch import nn

from pipeline import engines
from pipeline.config import RunConfig, validate_config
from pipeline.training.autocast import AutocastInferer, cpu_bf16_supported, to_channels_last
from pipeline.training.checkpoints import RNGState
from pipeline.transforms import RandSliceByPosNegd, build_transforms

pytestmark = pytest.mark.usefixtures("single_thread")


class _TinyNet(nn.Module):
    """Two convolutions; with ``deep`` the training output is a list (main, auxiliary), as deep
    supervision gives."""

    def __init__(self, deep: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head, self.aux = nn.Conv2d(8, 1, 1), nn.Conv2d(8, 1, 1)
        self.deep = deep

    def forward(self, x: torch.Tensor):
        features = self.body(x)
        return [self.head(features), self.aux(features)] if self.deep else self.head(features)


@pytest.mark.parametrize("deep", [False, True])
def test_autocast_inferer_gives_float32_close_to_float32_forward(deep: bool) -> None:
    torch.manual_seed(0)
    net = _TinyNet(deep).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        reference = net(x)
        mixed = AutocastInferer(channels_last=True)(x, net)
        # the convolutions did run in bf16 (the result differs from float32 by bf16's rounding)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert net.head(net.body(x)).dtype == torch.bfloat16
    reference, mixed = (r if deep else [r] for r in (reference, mixed))
    assert isinstance(mixed, list) == isinstance(reference, list)
    for ref, out in zip(reference, mixed, strict=True):
        assert out.dtype == torch.float32 and out.shape == ref.shape
        assert torch.allclose(out, ref, atol=0.05 * float(ref.abs().max()), rtol=0.05)


def test_autocast_inferer_wraps_another_inferer() -> None:
    net = _TinyNet().eval()
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        out = AutocastInferer(SimpleInferer())(x, net)
    assert out.dtype == torch.float32 and out.shape == (1, 1, 8, 8)


def test_channels_last_keeps_parameters_and_values() -> None:
    net = _TinyNet()
    params = list(net.parameters())
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert to_channels_last(net)
    # the parameters stay the objects an optimiser holds
    assert all(a is b for a, b in zip(params, net.parameters(), strict=True))
    assert net.body[0].weight.is_contiguous(memory_format=torch.channels_last)
    fresh = _TinyNet()
    fresh.load_state_dict(net.state_dict())  # a model file loads into a network of the default layout
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())
    assert not to_channels_last(nn.Conv3d(1, 1, 3))  # 3D networks are left alone


def _train_one_epoch(amp_cpu: bool) -> tuple[engines.SupervisedTrainer, nn.Module, dict]:
    torch.manual_seed(0)
    net = _TinyNet(deep=True)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    data = [
        {"image": torch.randn(3, 16, 16), "label": (torch.rand(1, 16, 16) > 0.7).float()} for _ in range(4)
    ]
    loader = torch.utils.data.DataLoader(data, batch_size=2)

    def loss(outputs, target):
        return sum(nn.functional.binary_cross_entropy_with_logits(o, target) for o in outputs)

    trainer = engines.build_trainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=loader,
        network=net,
        optimizer=torch.optim.AdamW(net.parameters(), 1e-2),
        loss_function=loss,
        amp_cpu=amp_cpu,
    )
    trainer.run()
    return trainer, net, before


@pytest.mark.skipif(not cpu_bf16_supported(), reason="this CPU has no native bf16")
def test_trainer_step_in_bf16_updates_float32_weights() -> None:
    trainer, net, before = _train_one_epoch(amp_cpu=True)
    assert isinstance(trainer.inferer, AutocastInferer) and trainer.inferer.channels_last
    assert trainer.state.iteration == 2 and np.isfinite(trainer.state.output["loss"].item())
    assert trainer.state.output["pred"][0].dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert not torch.equal(before["head.weight"], net.head.weight)


def test_trainer_falls_back_to_float32_without_native_bf16(monkeypatch, caplog) -> None:
    monkeypatch.setattr(engines, "cpu_bf16_supported", lambda: False)
    with caplog.at_level(logging.WARNING, logger="pipeline.engines"):
        trainer, _, _ = _train_one_epoch(amp_cpu=True)
    assert isinstance(trainer.inferer, SimpleInferer)
    assert [r.message for r in caplog.records if "amp_cpu" in r.message] == [
        "amp_cpu: this CPU has no native bf16 (AVX512-BF16 / AMX); training in float32"
    ]
    plain, _, _ = _train_one_epoch(amp_cpu=False)
    assert isinstance(plain.inferer, SimpleInferer)


def _coded_volume(h: int = 48, w: int = 56, d: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """A normalised-looking ``(3, H, W, D)`` image whose label is a known function of it: tumour where
    channel 1 > 2.5 (slices 4..6, off centre), brain elsewhere in an ellipse, zeros outside."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:h, :w]
    brain = ((yy - h / 2) / (0.45 * h)) ** 2 + ((xx - w / 2) / (0.45 * w)) ** 2 < 1
    image = np.zeros((3, h, w, d), np.float32)
    image[:, brain, :] = rng.uniform(-2, 2, size=(3, int(brain.sum()), d))
    tumour = (yy - 14) ** 2 + (xx - 38) ** 2 < 5**2
    image[1, tumour, 4:7] = rng.uniform(3, 4, size=(int(tumour.sum()), 3))
    label = torch.from_numpy(image[1:2] > 2.5).to(torch.uint8)
    return torch.from_numpy(image), label


@pytest.mark.parametrize("context", [0, 1])
def test_crops_keep_labels_aligned_with_images(context: int) -> None:
    image, label = _coded_volume()
    sampler = RandSliceByPosNegd("image", "label", num_samples=40, context=context, crop_size=(24, 32))
    sampler.set_random_state(0)
    samples = sampler({"image": image, "label": label, "patient": "p"})
    centre = (2 * context + 1) + context
    seen_tumour = 0
    for sample in samples:
        img, lab = sample["image"], sample["label"]
        assert img.shape == (3 * (2 * context + 1), 24, 32) and lab.shape == (1, 24, 32)
        assert sample["patient"] == "p" and "crop_fg_indices" not in sample
        assert torch.equal(lab[0] > 0, img[centre] > 2.5)  # the label is where the image says
        if 4 <= sample["slice_index"] <= 6:  # a tumour slice: the crop is centred on tumour
            assert lab.sum() > 0
            seen_tumour += 1
        else:  # a tumour-free slice: the crop centre is brain
            assert (img[:, 12, 16] != 0).any()
    assert 10 < seen_tumour < 30  # pos = neg = 1


def test_training_chain_crops_before_augmenting_and_pads_to_the_stride(tmp_path) -> None:
    image, label = _coded_volume()
    nib.save(nib.Nifti1Image(np.moveaxis((image.numpy() + 3) * 30, 0, -1), np.eye(4)), tmp_path / "i.nii.gz")
    nib.save(nib.Nifti1Image(label.numpy()[0], np.eye(4)), tmp_path / "l.nii.gz")
    case = {"image": str(tmp_path / "i.nii.gz"), "label": str(tmp_path / "l.nii.gz")}
    settings = {"context": 1, "num_samples": 6, "crop_size": (24, 40), "divisible": 16, "prob_zoom": 0.5}
    chain = build_transforms("train", settings)
    names = [type(t).__name__ for t in chain.transforms]
    assert names.index("RandSliceByPosNegd") < names.index("DivisiblePadd") < names.index("RandFlipd")
    chain.set_random_state(0)
    samples = chain(case)
    assert len(samples) == 6
    for sample in samples:
        assert sample["image"].shape == (9, 32, 48) and sample["label"].shape == (1, 32, 48)
        assert sample["image"].dtype == torch.float32
        assert set(torch.unique(sample["label"]).tolist()) <= {0.0, 1.0}
    whole = build_transforms("train", {**settings, "crop_size": None})
    whole.set_random_state(0)
    assert whole(case)[0]["image"].shape == (9, 48, 64)  # 48 x 56 padded to 16


def test_crop_state_is_checkpointed_with_the_slice_draws() -> None:
    plain = build_transforms("train", {"context": 1})
    cropped = build_transforms("train", {"context": 1, "crop_size": (32, 32)})
    sampler = next(t for t in cropped.transforms if isinstance(t, RandSliceByPosNegd))
    assert sampler.cropper is not None and sampler.cropper.R is sampler.R  # one generator for both draws
    cropped.set_random_state(3)
    assert sampler.cropper.R is sampler.R
    assert len(RNGState([cropped]).randomizables) > len(RNGState([plain]).randomizables)


def _draws(sampler: RandSliceByPosNegd, positive: torch.Tensor, n: int) -> np.ndarray:
    out = []
    for _ in range(n):
        sampler.randomize(positive)
        out += sampler._indices.tolist()
    return np.asarray(out)


def _old_randomize(rng: np.random.RandomState, positive: torch.Tensor, num: int, pos_ratio: float) -> list:
    """The slice draws of the sampler before the edge option (the default must keep them)."""
    pos_idx = torch.nonzero(positive).flatten()
    neg_idx = torch.nonzero(~positive).flatten()
    chosen = []
    for _ in range(num):
        want_pos = rng.rand() < pos_ratio
        pool = pos_idx if (want_pos and len(pos_idx)) or not len(neg_idx) else neg_idx
        chosen.append(int(pool[rng.randint(len(pool))]))
    return chosen


def test_edge_negatives_follow_the_configured_fraction() -> None:
    depth, edge = 30, 3
    positive = torch.zeros(depth, dtype=torch.bool)
    positive[10:20] = True
    positive[0] = True  # a tumour slice at the edge is never a negative draw
    edges = {1, 2, 27, 28, 29}
    negatives = set(range(depth)) - set(range(10, 20)) - {0}
    for prob in (0.0, 0.5, 1.0):
        sampler = RandSliceByPosNegd(num_samples=8, pos=0, neg=1, prob_edge_negative=prob, edge_slices=edge)
        sampler.set_random_state(0)
        draws = _draws(sampler, positive, 500)
        assert set(draws) <= (edges if prob == 1 else negatives)
        share = np.isin(draws, list(edges)).mean()
        expected = prob + (1 - prob) * len(edges) / len(negatives)
        assert abs(share - expected) < 0.03, (prob, share, expected)
        # within the edge slices, uniform
        if prob == 1:
            counts = np.bincount(draws, minlength=depth)[sorted(edges)]
            assert counts.min() > 0.8 * counts.mean()
    # positive draws are untouched by the option
    sampler = RandSliceByPosNegd(num_samples=8, pos=1, neg=0, prob_edge_negative=1.0)
    assert set(_draws(sampler, positive, 50)) <= set(range(10, 20)) | {0}
    # no tumour-free edge slice: any negative slice
    inner = torch.ones(depth, dtype=torch.bool)
    inner[12] = False
    sampler = RandSliceByPosNegd(num_samples=4, pos=0, neg=1, prob_edge_negative=1.0)
    assert set(_draws(sampler, inner, 20)) == {12}


def test_default_draws_are_those_of_earlier_versions() -> None:
    positive = torch.zeros(24, dtype=torch.bool)
    positive[8:14] = True
    sampler = RandSliceByPosNegd(num_samples=8, pos=1, neg=1)
    sampler.set_random_state(7)
    reference = np.random.RandomState(7)
    for _ in range(20):
        sampler.randomize(positive)
        assert sampler._indices.tolist() == _old_randomize(reference, positive, 8, 0.5)


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="crop_size and prob_edge_negative apply to 2D"):
        validate_config(RunConfig(spatial_dims=3, crop_size=(64, 64)))
    with pytest.raises(ValueError, match="edge_slices must be >= 1"):
        validate_config(RunConfig(edge_slices=0))
    with pytest.raises(ValueError, match="prob_edge_negative must be in"):
        validate_config(RunConfig(prob_edge_negative=1.5))
    with pytest.raises(ValueError, match="crop_size must be two positive sizes"):
        RandSliceByPosNegd(crop_size=(0, 16))
    cfg = RunConfig.from_dict({"crop_size": [160, 160], "amp_cpu": True, "prob_edge_negative": 0.2})
    assert cfg.crop_size == (160, 160) and cfg.amp_cpu and cfg.edge_slices == 3
    validate_config(cfg)
