"""pad_to_stride on MONAI's DivisiblePad: symmetric widths (the odd voxel after), modes, crop back."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor

from pipeline.networks import pad_to_stride


@pytest.mark.parametrize("mode", ["constant", "reflect", "replicate"])
def test_odd_padding_goes_after_and_the_crop_gives_the_input_back(mode):
    x = torch.randn(2, 3, 17, 20, 9)
    padded, crop = pad_to_stride(x, (8, 4, 4), mode=mode, value=-1.0)
    assert padded.shape == (2, 3, 24, 20, 12) and not isinstance(padded, MetaTensor)
    assert crop[2:] == (slice(3, 20), slice(0, 20), slice(1, 10))  # 7 = 3 before + 4 after, 3 = 1 + 2
    assert torch.equal(padded[crop], x)
    if mode == "constant":
        assert padded[:, :, :3].eq(-1.0).all() and padded[:, :, 20:].eq(-1.0).all()


def test_no_padding_needed_and_bad_stride():
    x = torch.randn(1, 1, 32, 16)
    same, crop = pad_to_stride(x, 16)
    assert same is x and torch.equal(same[crop], x)
    with pytest.raises(ValueError, match="spatial dimensions"):
        pad_to_stride(x, (16, 16, 16))
