"""HRNetV2 for semantic segmentation (Sun et al., CVPR 2019; Wang et al., TPAMI 2020), 2D, from scratch.

- Stem: two 3x3 stride-2 convolutions (+ BN + ReLU, ``stem_channels`` wide): stride 4.
- Stage 1: ``stage1_blocks`` bottleneck residual blocks (``stage1_channels`` x 4 wide) at stride 4.
- Stages 2, 3, 4: 2, 3, 4 parallel branches at strides 4, 8, 16, 32 with widths
  ``width * (1, 2, 4, 8)``; a transition before each stage adapts the existing branches and starts
  the new lowest-resolution one with a 3x3 stride-2 convolution of the previous lowest. A stage is
  ``num_modules[s]`` high-resolution modules; a module runs ``num_blocks`` basic residual blocks
  on every branch, then exchanges information between all of them: each output branch sums every
  input branch, brought to its resolution and width by strided 3x3 convolutions (downwards; one
  per halving, BN, ReLU between them) or a 1x1 convolution + BN and bilinear upsampling
  (upwards), followed by a ReLU. The highest resolution is kept throughout.
- HRNetV2 head: all four branches upsampled bilinearly to stride 4 and concatenated
  (``15 * width`` channels), 1x1 convolution + BN + ReLU, 1x1 convolution to the classes, bilinear
  upsampling x4 to the input size.

Default: a small network in the spirit of HRNetV2-W18-small (width 18, two bottleneck blocks in
stage 1, two basic blocks per branch, ``num_modules=(1, 3, 2)``). HRNetV2-W18 is ``stage1_blocks=4,
num_blocks=4, num_modules=(1, 4, 3)``; W32/W48 set ``width`` to 32/48. Total stride 32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.nets.blocks import check_input_size, conv_bn, init_weights

__all__ = ["HRNet", "HRModule", "BasicBlock", "Bottleneck"]


class BasicBlock(nn.Module):
    """Residual block of two 3x3 convolutions (+ BN), ReLU after the sum.

    Args:
        channels: input = output channels.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(channels, channels), conv_bn(channels, channels, relu=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same shape as ``x``."""
        return F.relu(self.body(x) + x)


class Bottleneck(nn.Module):
    """Bottleneck residual block ``1x1 -> 3x3 -> 1x1 (x4 wider)``, projection shortcut if widths differ.

    Args:
        in_channels: input channels.
        channels: inner width (output is ``4 * channels``).
    """

    expansion = 4

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        out_channels = channels * self.expansion
        self.body = nn.Sequential(
            conv_bn(in_channels, channels, 1),
            conv_bn(channels, channels, 3),
            conv_bn(channels, out_channels, 1, relu=False),
        )
        self.shortcut = (
            conv_bn(in_channels, out_channels, 1, relu=False)
            if in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, H, W)`` -> ``(B, 4 * channels, H, W)``."""
        return F.relu(self.body(x) + self.shortcut(x))


class _Upsample(nn.Module):
    """1x1 convolution + BN to the target width, then bilinear upsampling to a reference size."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.proj = conv_bn(in_channels, out_channels, 1, relu=False)

    def forward(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.proj(x), size=like.shape[-2:], mode="bilinear", align_corners=False)


class _Downsample(nn.Module):
    """``steps`` 3x3 stride-2 convolutions + BN (ReLU between them, not after the last)."""

    def __init__(self, in_channels: int, out_channels: int, steps: int) -> None:
        super().__init__()
        layers = [conv_bn(in_channels, in_channels, 3, 2) for _ in range(steps - 1)]
        layers.append(conv_bn(in_channels, out_channels, 3, 2, relu=False))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class _Same(nn.Module):
    """The branch itself (the exchange unit's identity term)."""

    def forward(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return x


class _Exchange(nn.Module):
    """Sums, for one output branch, every input branch brought to its resolution and width."""

    def __init__(self, widths: Sequence[int], target: int) -> None:
        super().__init__()
        terms: list[nn.Module] = []
        for j, width in enumerate(widths):
            if j == target:
                terms.append(_Same())
            elif j > target:
                terms.append(_Upsample(width, widths[target]))
            else:
                terms.append(_Downsample(width, widths[target], target - j))
        self.terms = nn.ModuleList(terms)
        self.target = target

    def forward(self, branches: list[torch.Tensor]) -> torch.Tensor:
        like = branches[self.target]
        total = like
        for j, term in enumerate(self.terms):
            if j != self.target:
                total = total + term(branches[j], like)
        return F.relu(total)


class HRModule(nn.Module):
    """High-resolution module: ``num_blocks`` basic blocks per branch, then the multi-resolution fusion.

    Args:
        widths: channels of each branch, highest resolution first.
        num_blocks: basic residual blocks per branch.
    """

    def __init__(self, widths: Sequence[int], num_blocks: int) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(*(BasicBlock(w) for _ in range(num_blocks))) for w in widths
        )
        self.fusions = nn.ModuleList(_Exchange(widths, i) for i in range(len(widths)))

    def forward(self, branches: list[torch.Tensor]) -> list[torch.Tensor]:
        """One tensor per branch in, one per branch out (same shapes)."""
        processed: list[torch.Tensor] = []
        for i, branch in enumerate(self.branches):
            processed.append(branch(branches[i]))
        fused: list[torch.Tensor] = []
        for fusion in self.fusions:
            fused.append(fusion(processed))
        return fused


class _Transition(nn.Module):
    """Adapts the branches of one stage to the next and starts the new lowest-resolution branch."""

    def __init__(self, previous: Sequence[int], widths: Sequence[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, width in enumerate(widths):
            if i < len(previous):
                layers.append(conv_bn(previous[i], width) if previous[i] != width else nn.Identity())
            else:
                layers.append(conv_bn(previous[-1], width, 3, 2))
        self.layers = nn.ModuleList(layers)
        self.previous = len(previous)

    def forward(self, branches: list[torch.Tensor]) -> list[torch.Tensor]:
        out: list[torch.Tensor] = []
        for i, layer in enumerate(self.layers):
            out.append(layer(branches[i] if i < self.previous else branches[-1]))
        return out


class _Stage(nn.Module):
    """One HRNet stage: the transition from the previous branches, then ``modules`` HR modules."""

    def __init__(self, previous: Sequence[int], widths: Sequence[int], modules: int, num_blocks: int) -> None:
        super().__init__()
        self.transition = _Transition(previous, widths)
        self.hr_modules = nn.ModuleList(HRModule(widths, num_blocks) for _ in range(modules))

    def forward(self, branches: list[torch.Tensor]) -> list[torch.Tensor]:
        branches = self.transition(branches)
        for module in self.hr_modules:
            branches = module(branches)
        return branches


class HRNet(nn.Module):
    """HRNetV2 segmentation network (2D): four parallel resolutions, repeated fusion, concatenated head.

    Args:
        in_channels: input channels.
        out_channels: output channels (logits).
        width: channels of the highest-resolution branch (the ``W`` of HRNetV2-W18/W32/W48); the
            branches are ``width * (1, 2, 4, 8)``.
        num_modules: high-resolution modules in stages 2, 3 and 4.
        num_blocks: basic blocks per branch in every module.
        stage1_blocks: bottleneck blocks of stage 1.
        stage1_channels: inner width of the stage-1 bottlenecks (output four times wider).
        stem_channels: width of the two stem convolutions.
        head_channels: width of the head's 1x1 convolution (default: the concatenated width,
            ``15 * width``, as in HRNetV2).

    Raises:
        ValueError: not three ``num_modules``, or a non-positive count.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 1,
        width: int = 18,
        num_modules: Sequence[int] = (1, 3, 2),
        num_blocks: int = 2,
        stage1_blocks: int = 2,
        stage1_channels: int = 64,
        stem_channels: int = 64,
        head_channels: int | None = None,
    ) -> None:
        super().__init__()
        num_modules = tuple(int(m) for m in num_modules)
        if len(num_modules) != 3 or min(num_modules) < 1:
            raise ValueError(f"num_modules must be three positive counts (stages 2-4), got {num_modules}")
        if min(width, num_blocks, stage1_blocks, stage1_channels, stem_channels) < 1:
            raise ValueError("width, num_blocks, stage1_blocks and the channel counts must be positive")
        self.width = width
        self.stem = nn.Sequential(
            conv_bn(in_channels, stem_channels, 3, 2), conv_bn(stem_channels, stem_channels, 3, 2)
        )
        stage1: list[nn.Module] = []
        channels = stem_channels
        for _ in range(stage1_blocks):
            stage1.append(Bottleneck(channels, stage1_channels))
            channels = stage1_channels * Bottleneck.expansion
        self.stage1 = nn.Sequential(*stage1)
        previous = [channels]
        stages: list[nn.Module] = []
        for stage, modules in enumerate(num_modules, start=2):
            widths = [width * 2**i for i in range(stage)]
            stages.append(_Stage(previous, widths, modules, num_blocks))
            previous = widths
        self.stages = nn.ModuleList(stages)
        concat = sum(previous)
        head_channels = concat if head_channels is None else int(head_channels)
        self.head = nn.Sequential(
            conv_bn(concat, head_channels, 1), nn.Conv2d(head_channels, out_channels, 1)
        )
        init_weights(self, conv="fan_out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, H, W)``, H and W multiples of 32 -> logits ``(B, out_channels, H, W)``.

        Raises:
            ValueError: H or W not a multiple of 32 (pad with ``pad_to_stride``).
        """
        check_input_size(x, 32, "HRNet")
        branches = [self.stage1(self.stem(x))]
        for stage in self.stages:
            branches = stage(branches)
        size = branches[0].shape[-2:]
        features = [branches[0]] + [
            F.interpolate(b, size=size, mode="bilinear", align_corners=False) for b in branches[1:]
        ]
        logits = self.head(torch.cat(features, dim=1))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
