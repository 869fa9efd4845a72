"""UNeXt (Valanarasu & Patel, MICCAI 2022), written for speed on CPUs and GPUs.

Architecture (the public design, widths ``(c1, c2, c3, m1, m2)``, default ``16, 32, 128, 160, 256``):

- encoder: three convolutional stages ``3x3 conv -> BatchNorm -> 2x2 max-pool -> ReLU`` (skips
  ``t1, t2, t3``), then two tokenized-MLP stages ``3x3 stride-2 conv (patch embedding) -> LayerNorm
  -> shifted block -> LayerNorm`` (skip ``t4`` after the first);
- shifted block: ``x + MLP(LayerNorm(x))`` where the MLP is ``shift along H -> fc1 -> depth-wise 3x3
  conv -> GELU -> shift along W -> fc2``; a shift splits the channels into ``shift_size`` groups
  (as ``torch.chunk`` does) and moves group ``g`` by ``g - shift_size // 2`` pixels, filling with
  zeros (the paper's text shifts along W first; the public code, followed here, shifts along H,
  its dim 2, before ``fc1`` and along W before ``fc2``);
- decoder: ``3x3 conv (m2->m1) -> BN -> bilinear x2 -> ReLU, + t4 -> shifted block -> LayerNorm``,
  ``3x3 conv (m1->c3) -> BN -> x2 -> ReLU, + t3 -> shifted block -> LayerNorm``, then three
  convolutional stages ``3x3 conv -> BN -> x2 -> ReLU (+ t2, + t1)``, the last one without BN;
  a 1x1 convolution gives the logits. Total stride 32; 1,471,921 parameters for 3 -> 1 channels.

What makes it fast, with the same parameters and the same function as the public code (see
``scripts/unext_reference.py`` and the tests that copy weights across and compare outputs):

- one memory layout everywhere: activations are channels-last, so the token view ``(B, H, W, C)``
  of a feature map is free (no transpose/``contiguous`` copies) and LayerNorm/Linear act on it
  directly, while oneDNN runs every convolution, pooling and interpolation in its NHWC kernels;
- the axial shift (pad, chunk, roll, concatenate, narrow in the public code: a dozen copies) is a
  single depth-wise convolution with a fixed one-hot ``5x1`` (or ``1x5``) kernel, exact in float;
- in eval mode BatchNorm is folded into the preceding convolution on the fly, and ReLU, the skip
  additions and the residual additions run in place (no allocation of large new tensors);
- ``Dropout``/``DropPath`` of the public code have rate 0 and are left out.

Deep supervision (``deep_supervision=True``) adds one 1x1 head per decoder scale (1/16, 1/8, 1/4,
1/2); in training mode ``forward`` then returns ``[main, aux_1/2, aux_1/4, aux_1/8, aux_1/16]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.nets.blocks import init_weights

__all__ = [
    "UNeXt",
    "AxialShift",
    "chunk_offsets",
    "load_reference_state_dict",
    "DEFAULT_WIDTHS",
]

DEFAULT_WIDTHS: tuple[int, int, int, int, int] = (16, 32, 128, 160, 256)


def chunk_offsets(channels: int, shift_size: int = 5) -> list[int]:
    """Per-channel shift offsets, grouping channels the way ``torch.chunk(x, shift_size, 1)`` does.

    Args:
        channels: number of channels.
        shift_size: number of groups (odd); offsets run from ``-shift_size // 2`` upwards.

    Returns:
        a list of ``channels`` offsets (group ``g`` of size ``ceil(channels / shift_size)`` gets
        ``g - shift_size // 2``; ``torch.chunk`` may make fewer than ``shift_size`` groups).
    """
    size = -(-channels // shift_size)
    pad = shift_size // 2
    return [c // size - pad for c in range(channels)]


class AxialShift(nn.Module):
    """Zero-filled shift of channel groups along one axis, as a depth-wise one-hot convolution.

    ``out[..., c] = x shifted by offset(c)`` along H (``axis="h"``) or W (``axis="w"``), with
    offsets from :func:`chunk_offsets`; pixels shifted in from outside are zero. Works on a
    ``(B, H, W, C)`` token tensor (contiguous) and returns one of the same layout.

    Args:
        channels: number of channels ``C``.
        axis: ``"h"`` or ``"w"``.
        shift_size: number of channel groups / width of the shift window (odd).
    """

    def __init__(self, channels: int, axis: str, shift_size: int = 5) -> None:
        super().__init__()
        if axis not in ("h", "w"):
            raise ValueError(f"axis must be 'h' or 'w', got {axis!r}")
        if shift_size < 1 or shift_size % 2 == 0:
            raise ValueError(f"shift_size must be a positive odd number, got {shift_size}")
        pad = shift_size // 2
        shape = (channels, 1, shift_size, 1) if axis == "h" else (channels, 1, 1, shift_size)
        kernel = torch.zeros(shape)
        for c, offset in enumerate(chunk_offsets(channels, shift_size)):
            # conv: out[i] = sum_k w[k] * in[i + k - pad]; a shift by s reads in[i - s] -> k = pad - s
            if axis == "h":
                kernel[c, 0, pad - offset, 0] = 1.0
            else:
                kernel[c, 0, 0, pad - offset] = 1.0
        self.register_buffer("kernel", kernel, persistent=False)
        self.padding = (pad, 0) if axis == "h" else (0, pad)
        self.channels = channels

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Shift a ``(B, H, W, C)`` tensor; returns ``(B, H, W, C)``."""
        x = tokens.permute(0, 3, 1, 2)  # NCHW view with channels-last strides: no copy
        x = F.conv2d(x, self.kernel.to(x.dtype), None, 1, self.padding, 1, self.channels)
        return x.permute(0, 2, 3, 1)


def _fold_bn(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    mean: torch.Tensor | None,
    var: torch.Tensor | None,
    gamma: torch.Tensor | None,
    beta: torch.Tensor | None,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights of ``bn(conv(x))`` as one convolution (eval mode; uses the running statistics)."""
    assert mean is not None and var is not None
    scale = torch.rsqrt(var + eps)
    if gamma is not None:
        scale = scale * gamma
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias * scale
    if beta is not None:
        shift = shift + beta
    return weight * scale.reshape(-1, 1, 1, 1), shift


class ConvBN(nn.Module):
    """``3x3 conv -> BatchNorm`` (BN optional), BN folded into the convolution in eval mode.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        batch_norm: whether a BatchNorm follows the convolution.
        stride: convolution stride.
    """

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool = True, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)
        self.bn = nn.BatchNorm2d(out_channels) if batch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.bn
        if bn is None:
            return self.conv(x)
        if bn.training:
            return bn(self.conv(x))
        w, b = _fold_bn(
            self.conv.weight, self.conv.bias, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps
        )
        return F.conv2d(x, w, b, self.conv.stride, self.conv.padding)


class ShiftedBlock(nn.Module):
    """Tokenized shifted-MLP block on ``(B, H, W, C)`` tokens: ``x + MLP(LayerNorm(x))``.

    Args:
        dim: token width ``C``.
        shift_size: channel groups of the axial shifts.
    """

    def __init__(self, dim: int, shift_size: int = 5) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.shift_h = AxialShift(dim, "h", shift_size)
        self.fc1 = nn.Linear(dim, dim)
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)
        self.shift_w = AxialShift(dim, "w", shift_size)
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc1(self.shift_h(self.norm(x)))
        y = self.dwconv(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        y = F.gelu(y)
        y = self.fc2(self.shift_w(y))
        return y.add_(x)  # fc2's output is not needed by autograd: in-place is safe


class TokenStage(nn.Module):
    """Encoder tokenized-MLP stage: patch embedding (3x3 stride-2 conv + LN), block, LN.

    Args:
        in_channels: input channels.
        dim: token width.
        shift_size: channel groups of the axial shifts.
    """

    def __init__(self, in_channels: int, dim: int, shift_size: int = 5) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, 3, stride=2, padding=1)
        self.embed_norm = nn.LayerNorm(dim)
        self.block = ShiftedBlock(dim, shift_size)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, H, W)`` channels-last -> ``(B, dim, H/2, W/2)`` channels-last."""
        t = self.proj(x).permute(0, 2, 3, 1)
        t = self.norm(self.block(self.embed_norm(t)))
        return t.permute(0, 3, 1, 2)


def _up_relu_add(x: torch.Tensor, skip: torch.Tensor | None, inplace: bool) -> torch.Tensor:
    """``relu(bilinear_x2(x)) (+ skip)``; in-place where autograd allows it."""
    x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
    x = torch.relu_(x)  # interpolate's backward needs no values: in-place is always safe
    if skip is None:
        return x
    if inplace:
        return x.add_(skip)
    return x + skip  # relu's backward needs its output in training: no in-place add


class TokenDecoderStage(nn.Module):
    """Decoder tokenized-MLP stage: ``conv+BN -> bilinear x2 -> ReLU, + skip -> block -> LayerNorm``.

    Args:
        in_channels: input channels.
        dim: token width (and the skip's width).
        shift_size: channel groups of the axial shifts.
    """

    def __init__(self, in_channels: int, dim: int, shift_size: int = 5) -> None:
        super().__init__()
        self.conv = ConvBN(in_channels, dim)
        self.block = ShiftedBlock(dim, shift_size)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, inplace: bool) -> torch.Tensor:
        x = _up_relu_add(self.conv(x), skip, inplace)
        return self.norm(self.block(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)


class UNeXt(nn.Module):
    """UNeXt for 2D segmentation (convolutional + tokenized shifted-MLP U-shaped network).

    Args:
        in_channels: input channels.
        out_channels: output channels (logits, no activation).
        widths: ``(c1, c2, c3, m1, m2)``: three convolutional widths, then two MLP widths.
        shift_size: channel groups (and pixel window) of the axial shifts.
        deep_supervision: add a 1x1 head per decoder scale; training-mode ``forward`` then returns
            ``[main, aux_1/2, aux_1/4, aux_1/8, aux_1/16]``; eval mode returns ``main`` only.
        channels_last: run in channels-last layout (fastest on CPU with oneDNN, and on tensor cores).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 1,
        widths: Sequence[int] = DEFAULT_WIDTHS,
        shift_size: int = 5,
        deep_supervision: bool = False,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) != 5 or min(widths) < 1:
            raise ValueError(f"widths must be five positive integers (c1, c2, c3, m1, m2), got {widths}")
        c1, c2, c3, m1, m2 = widths
        self.widths = widths
        self.deep_supervision = bool(deep_supervision)
        self.channels_last = bool(channels_last)
        self.enc1 = ConvBN(in_channels, c1)
        self.enc2 = ConvBN(c1, c2)
        self.enc3 = ConvBN(c2, c3)
        self.tok1 = TokenStage(c3, m1, shift_size)
        self.tok2 = TokenStage(m1, m2, shift_size)
        self.dec1 = TokenDecoderStage(m2, m1, shift_size)
        self.dec2 = TokenDecoderStage(m1, c3, shift_size)
        self.dec3 = ConvBN(c3, c2)
        self.dec4 = ConvBN(c2, c1)
        self.dec5 = ConvBN(c1, c1, batch_norm=False)
        self.final = nn.Conv2d(c1, out_channels, 1)
        heads = [nn.Conv2d(c, out_channels, 1) for c in (c1, c2, c3, m1)] if self.deep_supervision else []
        self.aux_heads = nn.ModuleList(heads)
        init_weights(
            self, conv="fan_out"
        )  # the public code's: He (fan-out) convolutions, trunc-normal linears

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, list[torch.Tensor]]:
        """``(B, in_channels, H, W)`` with H, W multiples of 32 -> logits ``(B, out_channels, H, W)``.

        In training mode with deep supervision, a list ``[main, aux_1/2, aux_1/4, aux_1/8, aux_1/16]``.
        """
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        inplace = not torch.is_grad_enabled()
        t1 = torch.relu_(F.max_pool2d(self.enc1(x), 2, 2))
        t2 = torch.relu_(F.max_pool2d(self.enc2(t1), 2, 2))
        t3 = torch.relu_(F.max_pool2d(self.enc3(t2), 2, 2))
        t4 = self.tok1(t3)
        d1 = self.dec1(self.tok2(t4), t4, inplace)
        d2 = self.dec2(d1, t3, inplace)
        d3 = _up_relu_add(self.dec3(d2), t2, inplace)
        d4 = _up_relu_add(self.dec4(d3), t1, inplace)
        d5 = _up_relu_add(self.dec5(d4), None, inplace)
        main = self.final(d5).contiguous()
        if self.deep_supervision and self.training:
            outputs = [main]
            features = [d4, d3, d2, d1]
            for i, head in enumerate(self.aux_heads):
                outputs.append(head(features[i]).contiguous())
            return outputs
        return main


# parameter-name map: reference (public layout) -> ours; token blocks expanded below
_REFERENCE_NAME_MAP = {
    "encoder1": "enc1.conv",
    "encoder2": "enc2.conv",
    "encoder3": "enc3.conv",
    "ebn1": "enc1.bn",
    "ebn2": "enc2.bn",
    "ebn3": "enc3.bn",
    "patch_embed3.proj": "tok1.proj",
    "patch_embed3.norm": "tok1.embed_norm",
    "patch_embed4.proj": "tok2.proj",
    "patch_embed4.norm": "tok2.embed_norm",
    "norm3": "tok1.norm",
    "norm4": "tok2.norm",
    "block1.0": "tok1.block",
    "block2.0": "tok2.block",
    "dblock1.0": "dec1.block",
    "dblock2.0": "dec2.block",
    "dnorm3": "dec1.norm",
    "dnorm4": "dec2.norm",
    "decoder1": "dec1.conv.conv",
    "decoder2": "dec2.conv.conv",
    "decoder3": "dec3.conv",
    "decoder4": "dec4.conv",
    "decoder5": "dec5.conv",
    "dbn1": "dec1.conv.bn",
    "dbn2": "dec2.conv.bn",
    "dbn3": "dec3.bn",
    "dbn4": "dec4.bn",
    "final": "final",
}
_BLOCK_NAME_MAP = {
    "norm2": "norm",
    "mlp.fc1": "fc1",
    "mlp.fc2": "fc2",
    "mlp.dwconv.dwconv": "dwconv",
}


def reference_key_to_unext(key: str) -> str:
    """Translate a parameter/buffer name of the public layout into :class:`UNeXt`'s name."""
    for prefix in sorted(_REFERENCE_NAME_MAP, key=len, reverse=True):
        if key.startswith(prefix + "."):
            rest = key[len(prefix) + 1 :]
            if prefix.endswith(".0"):  # a shifted block
                for old, new in _BLOCK_NAME_MAP.items():
                    if rest.startswith(old + "."):
                        rest = new + rest[len(old) :]
                        break
            return f"{_REFERENCE_NAME_MAP[prefix]}.{rest}"
    raise KeyError(f"no UNeXt counterpart for {key!r}")


def load_reference_state_dict(model: UNeXt, state_dict: dict[str, torch.Tensor]) -> None:
    """Load weights saved from the public UNeXt layout (``archs.UNext``) into :class:`UNeXt`.

    Args:
        model: the target network (same widths and channels as the source).
        state_dict: the public model's ``state_dict()`` (a ``module.`` prefix is accepted).
    """
    translated = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        translated[reference_key_to_unext(key)] = value
    missing, unexpected = model.load_state_dict(translated, strict=False)
    missing = [k for k in missing if not k.startswith("aux_heads.")]
    if missing or unexpected:
        raise KeyError(f"state dict does not fit UNeXt: missing {missing}, unexpected {unexpected}")
