"""UNeXt: the paper's size, and the same function as the public design (scripts/unext_reference.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from unext_reference import ReferenceUNeXt

from pipeline.nets.unext import (
    AxialShift,
    UNeXt,
    chunk_offsets,
    load_reference_state_dict,
    reference_key_to_unext,
)
from pipeline.networks import build_network, count_gmacs, count_parameters

pytestmark = pytest.mark.usefixtures("single_thread")  # stable on a shared, busy machine (conftest)


def test_parameter_count_and_cost_match_the_paper():
    net = build_network("unext", 2, 3, 1)
    params = count_parameters(net)
    assert abs(params - 1.47e6) / 1.47e6 < 0.02, params
    assert params == count_parameters(ReferenceUNeXt(3, 1)) == 1_471_921
    gmacs = count_gmacs(net, (1, 3, 256, 256))
    assert 0.54 < gmacs < 0.60, gmacs  # paper: 0.57 G at 256x256
    ds = build_network("unext", 2, 3, 1, deep_supervision=True)
    assert count_parameters(ds) == params + 16 + 1 + 32 + 1 + 128 + 1 + 160 + 1  # four 1x1 heads


def _naive_shift(x: torch.Tensor, dim: int, shift_size: int = 5) -> torch.Tensor:
    """The public code's shift of a (B, C, H, W) map: pad, chunk, roll, concatenate, narrow."""
    pad = shift_size // 2
    _, _, h, w = x.shape
    xs = torch.chunk(F.pad(x, (pad, pad, pad, pad)), shift_size, 1)
    shifted = torch.cat([torch.roll(c, s, dim) for c, s in zip(xs, range(-pad, pad + 1), strict=False)], 1)
    return shifted.narrow(2, pad, h).narrow(3, pad, w)


@pytest.mark.parametrize("channels", [5, 6, 13, 128, 160, 256])
@pytest.mark.parametrize("axis", ["h", "w"])
def test_axial_shift_equals_pad_chunk_roll_narrow(channels, axis):
    x = torch.randn(2, channels, 9, 7)
    expected = _naive_shift(x, 2 if axis == "h" else 3)
    tokens = x.permute(0, 2, 3, 1).contiguous()
    got = AxialShift(channels, axis)(tokens).permute(0, 3, 1, 2)
    assert torch.equal(got, expected)


def test_chunk_offsets_follow_torch_chunk():
    assert chunk_offsets(6) == [-2, -2, -1, -1, 0, 0]  # torch.chunk makes three groups of two
    assert chunk_offsets(10) == [-2, -2, -1, -1, 0, 0, 1, 1, 2, 2]


def _randomise_batchnorm(model: torch.nn.Module) -> None:
    generator = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=generator) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=generator) - 0.5)


@pytest.mark.parametrize("channels_last", [True, False])
def test_same_function_as_the_public_design(channels_last):
    """Weights copied from the reference: equal outputs in eval and training mode, equal gradients."""
    torch.manual_seed(0)
    reference = ReferenceUNeXt(3, 2).double()
    _randomise_batchnorm(reference)
    ours = UNeXt(3, 2, channels_last=channels_last).double()
    load_reference_state_dict(ours, reference.state_dict())
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)

    reference.eval()
    ours.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-9, atol=1e-9)

    reference.train()
    ours.train()
    target = torch.randn(2, 2, 64, 64, dtype=torch.float64)
    (reference(x) * target).sum().backward()
    (ours(x) * target).sum().backward()
    ours_params = dict(ours.named_parameters())
    for name, p in reference.named_parameters():
        q = ours_params[reference_key_to_unext(name)]
        # (a conv bias before training-mode BN has a zero gradient, up to rounding: hence atol)
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-6, atol=1e-10)
    for name, buffer in reference.named_buffers():  # running statistics updated alike
        torch.testing.assert_close(ours.get_buffer(reference_key_to_unext(name)), buffer)


def test_float32_outputs_match_the_reference():
    torch.manual_seed(0)
    reference = ReferenceUNeXt(3, 1)
    _randomise_batchnorm(reference)
    ours = UNeXt(3, 1)
    load_reference_state_dict(ours, reference.state_dict())
    reference.eval()
    ours.eval()
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-4, atol=1e-4)


def test_reference_state_dict_must_fit():
    with pytest.raises(KeyError):
        load_reference_state_dict(UNeXt(), {"no.such.key": torch.zeros(1)})
    with pytest.raises(RuntimeError):  # other widths: shapes do not fit
        load_reference_state_dict(UNeXt(widths=(8, 16, 32, 64, 128)), ReferenceUNeXt().state_dict())


def test_bad_widths():
    with pytest.raises(ValueError, match="widths"):
        UNeXt(widths=(16, 32, 128))
    with pytest.raises(ValueError, match="odd"):
        AxialShift(8, "h", shift_size=4)
