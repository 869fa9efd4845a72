"""The network registry: shapes, deep supervision, gradients, TorchScript, determinism, learning."""

from __future__ import annotations

import io
import warnings

import pytest
import torch

from pipeline.networks import (
    build_network,
    count_gmacs,
    list_networks,
    network_info,
    network_names,
    network_stride,
    pad_to_stride,
)

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny networks: one thread (conftest)

NAMES_2D = [info.name for info in list_networks() if 2 in info.spatial_dims]
NAMES_3D = [info.name for info in list_networks() if 3 in info.spatial_dims]
DS_NAMES = [info.name for info in list_networks() if info.deep_supervision]

# small configurations: the tests are about behaviour, not capacity
SMALL = {
    "unext": {"widths": (8, 16, 24, 32, 48)},
    "unet": {"base_width": 4},
    "resunet": {"features": (4, 8, 16, 32)},
    "unetplusplus": {"features": (4, 4, 8, 16, 32, 4)},
    "deeplabv3plus": {"encoder_widths": (8, 8, 16, 16), "aspp_channels": 16, "low_level_channels": 8},
    "swinunetr": {"feature_size": 12, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)},
    "segmenter": {"depth": 2, "hidden_size": 32, "num_heads": 2, "img_size": 64, "decoder_depth": 1},
    "fcn8s": {"base_width": 4, "fc_channels": 16},
    "fcn16s": {"base_width": 4, "fc_channels": 16},
    "fcn32s": {"base_width": 4, "fc_channels": 16},
    "hrnet": {
        "width": 4,
        "num_modules": (1, 1, 1),
        "num_blocks": 1,
        "stage1_blocks": 1,
        "stage1_channels": 8,
        "stem_channels": 8,
    },
    "segresnet": {"init_filters": 8, "blocks_down": (1, 1, 1, 1)},
    "monaiunet": {"channels": (4, 8, 16, 32, 64), "num_res_units": 1},
    "unet3d": {"channels": (4, 8, 16, 32, 64), "num_res_units": 1},
    "segresnet3d": {"init_filters": 8, "blocks_down": (1, 1, 1, 1)},
    "swinunetr3d": {"feature_size": 12, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)},
}


def _small(name: str, spatial_dims: int = 2, in_channels: int = 3, out_channels: int = 2, **kwargs):
    torch.manual_seed(0)
    return build_network(name, spatial_dims, in_channels, out_channels, **{**SMALL[name], **kwargs})


def _small_input(name: str, spatial_dims: int, batch: int = 2, channels: int = 3) -> torch.Tensor:
    """The smallest convenient input: 2 x stride along the first axis (the bottleneck of instance-
    normalised networks needs more than one element), the stride along the others; 2D at least 32."""
    stride = max(network_stride(name, spatial_dims, **SMALL[name]))
    if spatial_dims == 2:
        side = max(32, 2 * stride)
        shape = (batch, channels, side, side)
    else:
        shape = (1, channels, 2 * stride, stride, stride)
    return torch.randn(shape, generator=torch.Generator().manual_seed(1))


def _trace(model, x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.trace(model, x, check_trace=False)


# ---------------------------------------------------------------------------------------- registry


def test_registry_lists_every_required_network():
    names = set(network_names())
    required = {"unext", "unet", "resunet", "unetplusplus", "deeplabv3plus", "swinunetr", "segresnet"}
    assert required | {"unet3d", "segresnet3d", "swinunetr3d"} <= names
    for info in list_networks():
        assert info.name == info.name.lower()
        assert info.stride in (8, 16, 32)
        assert set(info.spatial_dims) <= {2, 3}
    assert {"unext", "unet", "resunet", "unetplusplus"} <= set(DS_NAMES)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="unext"):
        build_network("no-such-net")
    assert network_info("UNet++").name == "unetplusplus"  # case and punctuation are forgiven
    assert network_info("DeepLabV3-Plus").name == "deeplabv3plus"


def test_bad_requests_raise_clear_errors():
    with pytest.raises(ValueError, match="spatial_dims"):
        build_network("unext", spatial_dims=3)
    with pytest.raises(ValueError, match="spatial_dims"):
        build_network("deeplabv3plus", spatial_dims=3)
    with pytest.raises(ValueError, match="deep supervision"):
        build_network("deeplabv3plus", deep_supervision=True)
    with pytest.raises(ValueError, match="deep supervision"):
        build_network("segresnet", deep_supervision=True)
    with pytest.raises(ValueError, match="positive"):
        build_network("unext", in_channels=0)
    with pytest.raises(TypeError, match="unext"):
        build_network("unext", no_such_option=1)
    with pytest.raises(ValueError, match="pruning_level"):
        build_network("unetplusplus", pruning_level=2)  # shallow heads need deep supervision
    with pytest.raises(ValueError, match="spatial_dims"):
        build_network("unet3d", spatial_dims=2)  # the 3D aliases are 3D only
    build_network("segresnet", deep_supervision=False)  # asking for none is always fine


def test_strides_and_padding_helper():
    assert network_stride("unext") == (32, 32)
    assert network_stride("resunet", features=(8, 16, 32, 64, 128)) == (16, 16)
    assert network_stride("unet3d") == (16, 16, 16)
    assert network_stride("unet3d", strides=((2, 2, 1), (2, 2, 1), (2, 2, 2), (2, 2, 2))) == (16, 16, 4)
    x = torch.randn(2, 3, 240, 250)
    padded, crop = pad_to_stride(x, 32)
    assert padded.shape == (2, 3, 256, 256)
    assert torch.equal(padded[crop], x)
    same, crop = pad_to_stride(x[:, :, :, :240], (16, 16))
    assert same.shape == (2, 3, 240, 240)


def test_bundle_config_builds_network():
    from monai.bundle import ConfigParser

    parser = ConfigParser(
        {
            "network_def": {
                "_target_": "pipeline.networks.build_network",
                "name": "unext",
                "spatial_dims": 2,
                "in_channels": 3,
                "out_channels": 1,
                "widths": [8, 16, 24, 32, 48],
            }
        }
    )
    net = parser.get_parsed_content("network_def")
    assert type(net).__name__ == "UNeXt" and net.widths == (8, 16, 24, 32, 48)


@pytest.mark.slow
def test_cli_lists_every_network(capsys):
    from pipeline.cli import main

    assert main(["networks", "--no-gmacs"]) == 0
    out = capsys.readouterr().out
    for name in network_names():
        assert name in out
    assert main(["networks", "--no-gmacs", "--json"]) == 0
    import json

    records = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert records["unext"]["parameters"] == 1_471_921 and records["unext"]["deep_supervision"]
    assert records["deeplabv3plus"]["deep_supervision"] is False
    assert main(["networks", "--in-channels", "0"]) == 2


def test_deeplab_encoder_from_a_local_checkpoint(tmp_path):
    source = _small("deeplabv3plus")
    with torch.no_grad():
        for p in source.encoder.parameters():
            p.add_(1.0)
    state = {f"module.{k}": v for k, v in source.encoder.state_dict().items()}
    state["fc.weight"] = torch.zeros(10, 16)  # a classifier head is skipped
    path = tmp_path / "resnet.pt"
    torch.save({"state_dict": state}, path)
    net = _small("deeplabv3plus", encoder_weights=str(path))
    for key, value in source.encoder.state_dict().items():
        assert torch.equal(net.encoder.state_dict()[key], value), key
    with pytest.raises(FileNotFoundError):
        _small("deeplabv3plus", encoder_weights=str(tmp_path / "missing.pt"))
    torch.save({"other": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="fits"):
        _small("deeplabv3plus", encoder_weights=str(path))


# parameter names are part of the model-file format: sorted state_dict keys of the default builds,
# (count, first 16 hex digits of their SHA-256), recorded before the architectures moved onto shared blocks
STATE_DICT_KEYS = {
    "unext": (101, "11cb8fd2cad12e9d"),
    "unext+ds": (109, "ff5328f683b9338a"),
    "unet": (118, "f8103e33f7c9f926"),
    "unet+ds": (124, "9f10134459cc65fe"),
    "resunet": (143, "7c53f19f9f6060f6"),
    "resunet+ds": (147, "175ad2f47f71d8bf"),
    "unetplusplus": (142, "f160cc451b42d6f8"),
    "unetplusplus+ds": (148, "f1dec288c76058cd"),
    "deeplabv3plus": (202, "b4ccaa6fd5acbc79"),
    "segmenter": (182, "a2b0987a3bd2548a"),
    "fcn8s": (104, "47e7ec6d9c61cc49"),
    "fcn16s": (101, "d3f93ec967b68477"),
    "fcn32s": (98, "c15d7655dacc6f2e"),
    "hrnet": (872, "8e42661a8b25b9cb"),
}


@pytest.mark.parametrize("variant", list(STATE_DICT_KEYS))
def test_parameter_names_do_not_change(variant):
    """Saved weights must keep loading: the project's networks keep their state_dict keys."""
    import hashlib

    name, _, ds = variant.partition("+")
    torch.manual_seed(0)
    keys = sorted(build_network(name, None, 3, 1, **({"deep_supervision": True} if ds else {})).state_dict())
    digest = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]
    assert (len(keys), digest) == STATE_DICT_KEYS[variant]


# ----------------------------------------------------------------------------------- shared blocks


def test_init_weights_he_fan_out_per_group_and_vit():
    from pipeline.nets.blocks import init_weights

    model = torch.nn.Sequential(
        torch.nn.Conv2d(8, 16, 3),
        torch.nn.Conv2d(16, 16, 3, groups=16),
        torch.nn.Linear(16, 4),
        torch.nn.LayerNorm(4),
    )
    torch.manual_seed(0)
    init_weights(model, conv="fan_out")
    torch.manual_seed(0)
    expected = [torch.empty(16, 8, 3, 3), torch.empty(16, 1, 3, 3), torch.empty(4, 16)]
    torch.nn.init.kaiming_normal_(expected[0], mode="fan_out", nonlinearity="relu")  # ungrouped: torch's
    torch.nn.init.normal_(expected[1], 0.0, (2.0 / 9) ** 0.5)  # grouped: the fan-out of one group (3x3x1)
    torch.nn.init.trunc_normal_(expected[2], std=0.02)
    for layer, weight in zip(model[:3], expected, strict=True):
        assert torch.equal(layer.weight, weight)
        assert not layer.bias.any()
    assert torch.equal(model[3].weight, torch.ones(4)) and not model[3].bias.any()

    patch_embed = torch.nn.Conv2d(3, 8, 4, stride=4)
    torch.manual_seed(0)
    init_weights(patch_embed, conv="fan_in")
    torch.manual_seed(0)
    assert torch.equal(patch_embed.weight, torch.nn.init.trunc_normal_(torch.empty(8, 3, 4, 4), std=48**-0.5))
    with pytest.raises(ValueError, match="fan_out"):
        init_weights(patch_embed, conv="xavier")


def test_check_input_size_names_network_size_and_stride():
    from pipeline.nets.blocks import check_input_size

    check_input_size(torch.zeros(1, 3, 64, 96), 32, "FCN")  # multiples: nothing happens
    with pytest.raises(ValueError, match=r"HRNet needs H and W multiples of 32, got 72x64 \(pad with"):
        check_input_size(torch.zeros(1, 3, 72, 64), 32, "HRNet")
    scripted = torch.jit.script(check_input_size)  # networks call it in a scripted forward
    with pytest.raises(torch.jit.Error, match="Segmenter needs H and W multiples of 16, got 16x20"):
        scripted(torch.zeros(1, 1, 16, 20), 16, "Segmenter")


def test_conv_bn_and_residual_unit():
    from pipeline.nets.blocks import ResidualUnit, conv_bn
    from pipeline.nets.resunet import ResidualUnit as ResUNetUnit

    block = conv_bn(3, 8, kernel_size=3, stride=2)
    assert block(torch.zeros(2, 3, 16, 12)).shape == (2, 8, 8, 6)
    assert isinstance(block[-1], torch.nn.ReLU) and block[0].bias is None
    assert list(conv_bn(3, 8, 1, relu=False).state_dict()) == [
        "0.weight",
        "1.weight",
        "1.bias",
        "1.running_mean",
        "1.running_var",
        "1.num_batches_tracked",
    ]
    assert ResUNetUnit is ResidualUnit  # the old import path still works
    unit = ResidualUnit(3, 2, 4, stride=2)
    assert unit(torch.randn(1, 2, 8, 8, 4)).shape == (1, 4, 4, 4, 2)
    assert isinstance(unit.body[0], torch.nn.BatchNorm3d)  # pre-activation
    assert isinstance(ResidualUnit(2, 3, 4, first=True).body[0], torch.nn.Conv2d)  # not on the raw input


# ------------------------------------------------------------------------------------------ shapes


@pytest.mark.parametrize("name", NAMES_2D)
def test_full_size_2d_forward_at_256(name):
    """Default configuration, one 256x256 slice: logits of the input size, no activation."""
    torch.manual_seed(0)
    net = build_network(name, 2, 3, 1).eval()
    with torch.no_grad():
        y = net(torch.randn(1, 3, 256, 256))
    assert isinstance(y, torch.Tensor) and y.shape == (1, 1, 256, 256)
    assert torch.isfinite(y).all()
    assert y.min() < 0 or y.max() > 1 or y.std() > 0  # raw logits, not a constant


@pytest.mark.parametrize("name", NAMES_2D)
def test_padded_240_slices(name):
    """240x240 slices: padded up to the total stride, cropped back after the network."""
    net = _small(name, out_channels=2).eval()
    x = torch.randn(2, 3, 240, 240)
    padded, crop = pad_to_stride(x, network_stride(name, 2, **SMALL[name]))
    assert all(
        s % st == 0 for s, st in zip(padded.shape[2:], network_stride(name, 2, **SMALL[name]), strict=False)
    )
    with torch.no_grad():
        y = net(padded)[crop]
    assert y.shape == (2, 2, 240, 240)


@pytest.mark.parametrize("name", NAMES_3D)
def test_3d_patches(name):
    net = _small(name, 3, in_channels=1, out_channels=2).eval()
    x = _small_input(name, 3, batch=1, channels=1)
    with torch.no_grad():
        y = net(x)
    assert y.shape == (1, 2, *x.shape[2:])


def test_3d_anisotropic_monai_unet():
    strides = ((2, 2, 1), (2, 2, 1), (2, 2, 2), (2, 2, 2))
    net = build_network(
        "unet3d", 3, 1, 2, channels=(4, 8, 16, 32, 64), strides=strides, num_res_units=1
    ).eval()
    assert network_stride("unet3d", 3, strides=strides) == (16, 16, 4)
    with torch.no_grad():
        y = net(torch.randn(1, 1, 32, 32, 8))
    assert y.shape == (1, 2, 32, 32, 8)


# ------------------------------------------------------------------------------ deep supervision


@pytest.mark.parametrize(
    ("name", "spatial_dims"), [(n, d) for n in DS_NAMES for d in network_info(n).spatial_dims]
)
def test_deep_supervision_outputs(name, spatial_dims):
    net = _small(name, spatial_dims, deep_supervision=True)
    x = _small_input(name, spatial_dims)
    outputs = net(x)
    batch = x.shape[0]
    assert isinstance(outputs, list) and len(outputs) >= 2
    assert outputs[0].shape == (batch, 2, *x.shape[2:])  # main logits at full resolution first
    for aux in outputs[1:]:
        assert aux.shape[:2] == (batch, 2)
        assert all(a <= s for a, s in zip(aux.shape[2:], x.shape[2:], strict=False))
    net.eval()
    with torch.no_grad():
        main = net(x)
    assert isinstance(main, torch.Tensor) and main.shape == outputs[0].shape
    # what MONAI's loss expects: a list of predictions against one full-size target
    from monai.losses import DeepSupervisionLoss, DiceCELoss

    net.train()
    target = torch.randint(0, 2, (batch, 2, *x.shape[2:])).float()
    loss = DeepSupervisionLoss(DiceCELoss(sigmoid=True))(net(x), target)
    assert torch.isfinite(loss)


def test_unext_has_one_aux_head_per_decoder_scale():
    net = _small("unext", deep_supervision=True)
    outputs = net(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape[2:]) for o in outputs] == [(64, 64), (32, 32), (16, 16), (8, 8), (4, 4)]


def test_unetplusplus_pruning_levels():
    net = _small("unetplusplus", deep_supervision=True)
    x = torch.randn(1, 3, 32, 32)
    assert len(net(x)) == 4
    net.eval()
    with torch.no_grad():
        full = net(x)
        for level in (1, 2, 3, 4):
            net.pruning_level = level
            y = net(x)
            assert y.shape == (1, 2, 32, 32)
        net.pruning_level = 4
        assert torch.equal(net(x), full)
    pruned = build_network(
        "unetplusplus", 2, 3, 2, deep_supervision=True, pruning_level=1, **SMALL["unetplusplus"]
    )
    flops_pruned = count_gmacs(pruned, (1, 3, 64, 64))
    flops_full = count_gmacs(build_network("unetplusplus", 2, 3, 2, **SMALL["unetplusplus"]), (1, 3, 64, 64))
    assert flops_pruned < 0.5 * flops_full  # pruning really skips the deeper levels


# ---------------------------------------------------------------------------- gradients, script


@pytest.mark.parametrize("name", network_names())
def test_gradients_reach_every_parameter(name):
    dims = network_info(name).spatial_dims[0]
    kwargs = {"deep_supervision": True} if network_info(name).deep_supervision else {}
    net = _small(name, dims, **kwargs).train()
    outputs = net(_small_input(name, dims))
    outputs = outputs if isinstance(outputs, list) else [outputs]
    sum(o.float().square().mean() for o in outputs).backward()
    missing = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient for {missing}"
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.parametrize("name", network_names())
def test_torchscript_round_trip_and_determinism(name):
    dims = network_info(name).spatial_dims[0]
    net = _small(name, dims).eval()
    x = _small_input(name, dims)
    other = torch.randn_like(x)
    with torch.no_grad():
        eager = net(other)
        assert torch.equal(eager, net(other)), "eval mode must be deterministic"
        traced = _trace(net, x)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
        buffer.seek(0)
        loaded = torch.jit.load(buffer)
        torch.testing.assert_close(loaded(other), eager, rtol=1e-5, atol=1e-5)


def test_unext_scripts_with_deep_supervision():
    net = _small("unext", deep_supervision=True)
    scripted = torch.jit.script(net)
    x = torch.randn(2, 3, 64, 64)
    assert isinstance(scripted(x), list)
    net.eval()
    scripted.eval()
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x))


# ------------------------------------------------------------------------------------ learning


@pytest.mark.parametrize("name", ["unext", "monaiunet"])
def test_a_few_steps_learn_a_synthetic_task(name, learn_disks):
    torch.manual_seed(0)
    net = build_network(name, 2, 3, 1, **SMALL[name])
    before, after = learn_disks(net, steps=40)
    assert after >= before + 0.3 and after > 0.6, (before, after)


def test_benchmark_script_writes_its_table(tmp_path, load_script):
    import json

    module = load_script("benchmark_networks")
    args = ["--networks", "unext", "unext-reference", "--batch-size", "2", "--size", "64"]
    args += ["--iterations", "1", "--rounds", "1", "--no-gpu", "--threads", "1"]
    assert module.main([*args, "--output", str(tmp_path / "bench.json")]) == 0
    result = json.loads((tmp_path / "bench.json").read_text())
    rows = {row["network"]: row for row in result["rows"]}
    assert rows["unext"]["parameters"] == rows["unext-reference"]["parameters"] == 1_471_921
    assert rows["unext"]["cpu_inference"]["best"] > 0 and rows["unext"]["cpu_training"]["best"] > 0
    assert result["side_by_side"][0]["speedup_inference"] > 0
    assert module.main([*args, "--rounds", "0", "--output", str(tmp_path / "bench.md")]) == 0
    assert "| unext |" in (tmp_path / "bench.md").read_text()
    assert set(module.default_networks()) >= {"unext", "unext-reference", "deeplabv3plus"}
