"""Segmenter, FCN-8s/16s/32s and HRNetV2 in the registry: shapes, gradients, TorchScript, learning."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from test_networks import SMALL

from pipeline.networks import (
    build_network,
    count_parameters,
    list_networks,
    network_info,
    network_stride,
    pad_to_stride,
)

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny networks: one thread (conftest)

ZOO = ["segmenter", "fcn8s", "fcn16s", "fcn32s", "hrnet"]

# tiny configurations: the tests are about behaviour, not capacity (one table, in test_networks)
TINY = {name: SMALL[name] for name in ("segmenter", "fcn8s", "fcn16s", "fcn32s", "hrnet")}
# every variant a test should see: (registry name, extra options)
VARIANTS = [
    ("segmenter", {}),
    ("segmenter", {"decoder": "linear"}),
    ("fcn8s", {}),
    ("fcn16s", {}),
    ("fcn32s", {}),
    ("hrnet", {}),
]
VARIANT_IDS = ["segmenter-mask", "segmenter-linear", "fcn8s", "fcn16s", "fcn32s", "hrnet"]


def _tiny(name: str, in_channels: int = 3, out_channels: int = 2, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network(name, 2, in_channels, out_channels, **{**TINY[name], **kwargs})


def _input(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------- registry


def test_registry_entries():
    infos = {info.name: info for info in list_networks()}
    assert set(ZOO) <= set(infos)
    for name in ZOO:
        info = infos[name]
        assert info.spatial_dims == (2,) and not info.deep_supervision and info.source == "custom"
        assert network_info(name.upper()) is info
    assert network_stride("segmenter") == (16, 16)
    assert network_stride("segmenter", patch_size=8) == (8, 8)
    assert network_stride("fcn8s") == network_stride("fcn32s") == network_stride("hrnet") == (32, 32)
    assert network_info("FCN-8s").name == "fcn8s"


def test_default_sizes():
    """The defaults: ViT-tiny Segmenter, FCN-8s of base width 32, HRNetV2-W18-small (3.9 M)."""
    torch.manual_seed(0)
    segmenter = build_network("segmenter")
    assert len(segmenter.blocks) == 12 and segmenter.hidden_size == 192 and segmenter.decoder_name == "mask"
    assert segmenter.blocks[0].attn.num_heads == 3 and segmenter.pos_embed.shape == (1, 256, 192)
    assert count_parameters(segmenter) == 6_536_642
    fcn = build_network("fcn8s")
    assert fcn.widths == (32, 64, 128, 256, 256) and fcn.variant == "8s"
    assert count_parameters(fcn) == 10_371_267
    assert count_parameters(build_network("hrnet")) == 3_934_431


def test_bad_requests_raise_clear_errors():
    for name in ZOO:
        with pytest.raises(ValueError, match="spatial_dims"):
            build_network(name, spatial_dims=3)
        with pytest.raises(ValueError, match="deep supervision"):
            build_network(name, deep_supervision=True)
    with pytest.raises(ValueError, match="size"):
        build_network("segmenter", size="huge")
    with pytest.raises(ValueError, match="decoder"):
        build_network("segmenter", decoder="conv")
    with pytest.raises(ValueError, match="pos_interpolation"):
        build_network("segmenter", pos_interpolation="nearest")
    with pytest.raises(ValueError, match="divisible"):
        build_network("segmenter", hidden_size=100, num_heads=3)
    with pytest.raises(ValueError, match="img_size"):
        build_network("segmenter", img_size=250)
    with pytest.raises(ValueError, match="variant"):
        build_network("fcn8s", variant="4s")
    with pytest.raises(ValueError, match="num_modules"):
        build_network("hrnet", num_modules=(1, 1))
    with pytest.raises(TypeError, match="hrnet"):
        build_network("hrnet", no_such_option=1)


@pytest.mark.parametrize("name", ZOO)
def test_input_not_a_multiple_of_the_stride(name):
    net = _tiny(name).eval()
    stride = network_stride(name, **TINY[name])[0]
    with pytest.raises(ValueError, match=f"multiples of {stride}"), torch.no_grad():
        net(torch.zeros(1, 3, stride * 2 + 8, stride * 2))


# ------------------------------------------------------------------------------------------ shapes


@pytest.mark.parametrize("name", ZOO)
def test_default_forward_at_256(name):
    torch.manual_seed(0)
    net = build_network(name, 2, 3, 2).eval()
    with torch.no_grad():
        y = net(torch.randn(1, 3, 256, 256))
    assert y.shape == (1, 2, 256, 256) and torch.isfinite(y).all() and y.std() > 0


@pytest.mark.parametrize(("name", "options"), VARIANTS, ids=VARIANT_IDS)
def test_other_sizes_and_padding(name, options):
    """A non-square multiple of the stride, and 240x200 slices padded to the stride and cropped back."""
    net = _tiny(name, in_channels=1, out_channels=3, **options).eval()
    stride = network_stride(name, **TINY[name])
    with torch.no_grad():
        assert net(_input(2, 1, 96, 160)).shape == (2, 3, 96, 160)
        x = _input(1, 1, 240, 200)
        padded, crop = pad_to_stride(x, stride)
        assert all(s % t == 0 for s, t in zip(padded.shape[2:], stride, strict=True))
        assert net(padded)[crop].shape == (1, 3, 240, 200)


def test_segmenter_position_embeddings_follow_the_input_size():
    """Built for 64x64, run at 96x96 (and 64x128): the 4x4 grid of embeddings is resized, both modes."""
    for decoder in ("mask", "linear"):
        for mode in ("bicubic", "bilinear"):
            net = _tiny("segmenter", decoder=decoder, pos_interpolation=mode).eval()
            assert net.pos_embed.shape == (1, 16, 32)
            with torch.no_grad():
                assert net(_input(1, 3, 96, 96)).shape == (1, 2, 96, 96)
                assert net(_input(1, 3, 64, 128)).shape == (1, 2, 64, 128)
                assert net.position_embedding(6, 6).shape == (1, 36, 32)
                assert torch.equal(net.position_embedding(4, 4), net.pos_embed)  # training size: as is
                assert torch.isfinite(net.position_embedding(8, 8)).all()
    small = build_network("segmenter", 2, 3, 1, size="small", depth=1)
    assert small.hidden_size == 384 and small.blocks[0].attn.num_heads == 6


def test_segmenter_mask_decoder_shapes_and_single_class():
    """K class embeddings; one class works too (scale and bias instead of a LayerNorm over one value)."""
    for k in (1, 4):
        net = _tiny("segmenter", out_channels=k).eval()
        assert net.decoder.cls_emb.shape == (1, k, 32)
        with torch.no_grad():
            y = net(_input(2, 3, 64, 64))
        assert y.shape == (2, k, 64, 64) and y.std() > 0


def test_fcn_upsampling_is_bilinear_at_initialisation():
    from pipeline.nets.fcn import FCN

    net = FCN(3, 2, base_width=4, fc_channels=8)
    x = _input(1, 2, 6, 6)
    for layer, factor in ((net.upscore2, 2), (net.upscore_pool4, 2), (net.upscore_final, 8)):
        up = layer(x)
        reference = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
        assert up.shape == reference.shape
        inner = (..., slice(factor, -factor), slice(factor, -factor))  # away from the zero padding
        torch.testing.assert_close(up[inner], reference[inner], rtol=1e-5, atol=1e-5)
    # the skip scores start at zero (the paper's initialisation)
    assert not net.score_pool3.weight.any() and not net.score_pool4.weight.any()
    # FCN-32s and FCN-16s have no (or only the pool4) skip branch: nothing without a gradient
    fcn32 = build_network("fcn32s", **TINY["fcn32s"])
    assert not any(isinstance(m, torch.nn.Conv2d) for m in (fcn32.score_pool4, fcn32.score_pool3))
    assert fcn32.upscore_final.stride == (32, 32)
    fcn16 = build_network("fcn16s", **TINY["fcn16s"])
    assert isinstance(fcn16.score_pool4, torch.nn.Conv2d) and not isinstance(
        fcn16.score_pool3, torch.nn.Conv2d
    )


def test_hrnet_keeps_four_resolutions():
    net = _tiny("hrnet").eval()
    branches = [net.stage1(net.stem(_input(1, 3, 128, 64)))]
    for stage in net.stages:
        branches = stage(branches)
    assert [tuple(b.shape[1:]) for b in branches] == [(4, 32, 16), (8, 16, 8), (16, 8, 4), (32, 4, 2)]
    assert net.head[0][0].in_channels == 60  # 15 x width, all branches concatenated


# ---------------------------------------------------------------------------- gradients, script


@pytest.mark.parametrize(("name", "options"), VARIANTS, ids=VARIANT_IDS)
def test_gradients_reach_every_parameter(name, options):
    net = _tiny(name, **options).train()
    net(_input(2, 3, 64, 64)).square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.parametrize(("name", "options"), VARIANTS, ids=VARIANT_IDS)
def test_torchscript_round_trip_and_determinism(name, options):
    net = _tiny(name, **options).eval()
    x = _input(2, 3, 64, 64)
    other = _input(1, 3, 96, 128, seed=2)  # a second size: Segmenter resizes its position embeddings
    scripted = torch.jit.script(net)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    with torch.no_grad():
        for inputs in (x, other):
            eager = net(inputs)
            assert torch.equal(eager, net(inputs)), "eval mode must be deterministic"
            torch.testing.assert_close(loaded(inputs), eager, rtol=1e-5, atol=1e-5)


def test_bundle_config_builds_each_family():
    from monai.bundle import ConfigParser

    config = {
        name: {
            "_target_": "pipeline.networks.build_network",
            "name": name,
            "spatial_dims": 2,
            "in_channels": 1,
            "out_channels": 2,
            **{k: list(v) if isinstance(v, tuple) else v for k, v in TINY[name].items()},
        }
        for name in ZOO
    }
    config["segmenter"]["decoder"] = "linear"
    parser = ConfigParser(config)
    expected = {"segmenter": "Segmenter", "fcn8s": "FCN", "fcn16s": "FCN", "fcn32s": "FCN", "hrnet": "HRNet"}
    for name in ZOO:
        net = parser.get_parsed_content(name)
        assert type(net).__name__ == expected[name]
        with torch.no_grad():
            assert net.eval()(torch.zeros(1, 1, 64, 64)).shape == (1, 2, 64, 64)
    assert parser.get_parsed_content("segmenter").decoder_name == "linear"
    assert parser.get_parsed_content("fcn16s").variant == "16s"


# ------------------------------------------------------------------------------------ learning


# Segmenter on 8x8 patches here: 64x64 images give a grid of 8x8 patches instead of 4x4
@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("segmenter", {"patch_size": 8}),
        ("segmenter", {"patch_size": 8, "decoder": "linear"}),
        ("fcn8s", {"dropout": 0.0}),
        ("hrnet", {}),
    ],
    ids=["segmenter-mask", "segmenter-linear", "fcn8s", "hrnet"],
)
def test_a_few_steps_learn_a_synthetic_task(name, options, learn_disks):
    net = _tiny(name, out_channels=1, **options)
    before, after = learn_disks(net, steps=60)
    assert after >= before + 0.3 and after > 0.6, (before, after)
