"""DeepLabV3+ (Chen et al., ECCV 2018) for 2D segmentation, trained from scratch.

- Encoder: a ResNet (basic blocks, ``layers=(2, 2, 2, 2)`` = ResNet-18 or ``(3, 4, 6, 3)`` =
  ResNet-34) whose last stage uses atrous convolutions (dilation 2) instead of a stride, so that the
  output stride is 16. Module names follow torchvision's ResNet (``conv1, bn1, layer1..4``), so a
  local torchvision-format checkpoint can initialise it (``encoder_weights=PATH``); nothing is
  downloaded.
- ASPP: a 1x1 convolution, three depth-wise separable 3x3 atrous convolutions (rates 6, 12, 18)
  and image-level pooling, concatenated and projected by a 1x1 convolution (256 channels).
- Decoder: bilinear x4, concatenation with the low-level features (stride 4, reduced to 48
  channels by a 1x1 convolution), two depth-wise separable 3x3 convolutions, a 1x1 classifier and
  bilinear x4 back to the input size.

Inputs should be multiples of 16 (the total stride).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.nets.blocks import conv_bn

__all__ = ["DeepLabV3Plus", "ResNetEncoder", "SeparableConv2d"]

logger = logging.getLogger(__name__)


class SeparableConv2d(nn.Sequential):
    """Depth-wise separable ``3x3`` convolution: ``depth-wise (dilated) -> BN -> ReLU -> 1x1 -> BN -> ReLU``.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        dilation: atrous rate of the depth-wise convolution.
    """

    def __init__(self, in_channels: int, out_channels: int, dilation: int = 1) -> None:
        super().__init__(
            nn.Conv2d(
                in_channels,
                in_channels,
                3,
                padding=dilation,
                dilation=dilation,
                groups=in_channels,
                bias=False,
            ),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convolutions), optionally strided or dilated.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: stride of the first convolution.
        dilation: dilation of both convolutions.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(
            in_channels, out_channels, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNetEncoder(nn.Module):
    """ResNet with output stride 16 (last stage dilated), returning low-level and high-level features.

    Args:
        in_channels: input channels.
        layers: blocks per stage.
        widths: widths of the four stages.
    """

    def __init__(
        self,
        in_channels: int = 3,
        layers: Sequence[int] = (2, 2, 2, 2),
        widths: Sequence[int] = (64, 128, 256, 512),
    ) -> None:
        super().__init__()
        if len(layers) != 4 or len(widths) != 4:
            raise ValueError("layers and widths need four stages each")
        self.conv1 = nn.Conv2d(in_channels, widths[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        strides, dilations = (1, 2, 2, 1), (1, 1, 1, 2)
        previous = widths[0]
        for i, (n, w, s, d) in enumerate(zip(layers, widths, strides, dilations, strict=False)):
            blocks = [BasicBlock(previous, w, stride=s, dilation=d)]
            blocks += [BasicBlock(w, w, dilation=d) for _ in range(n - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            previous = w
        self.low_level_channels = widths[0]
        self.out_channels = widths[3]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        low = self.layer1(x)
        high = self.layer4(self.layer3(self.layer2(low)))
        return low, high


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling with depth-wise separable atrous branches.

    Args:
        in_channels: input channels.
        out_channels: channels of every branch and of the projection.
        rates: atrous rates of the three 3x3 branches.
    """

    def __init__(self, in_channels: int, out_channels: int = 256, rates: Sequence[int] = (6, 12, 18)) -> None:
        super().__init__()
        self.branches = nn.ModuleList([conv_bn(in_channels, out_channels, 1)])
        self.branches.extend(SeparableConv2d(in_channels, out_channels, r) for r in rates)
        # image-level features: no BatchNorm on the 1x1 pooled map (it breaks with a batch of one)
        self.image_pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, out_channels, 1), nn.ReLU()
        )
        self.project = conv_bn(out_channels * (len(rates) + 2), out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [branch(x) for branch in self.branches]
        pooled = self.image_pool(x)
        features.append(pooled.expand(-1, -1, x.shape[2], x.shape[3]))
        return self.project(torch.cat(features, dim=1))


class DeepLabV3Plus(nn.Module):
    """DeepLabV3+ with a dilated ResNet encoder (output stride 16) and separable ASPP/decoder.

    Args:
        in_channels: input channels.
        out_channels: output channels (logits).
        layers: ResNet blocks per stage (``(2, 2, 2, 2)`` ResNet-18, ``(3, 4, 6, 3)`` ResNet-34).
        encoder_widths: ResNet stage widths.
        aspp_channels: ASPP / decoder width.
        low_level_channels: width of the reduced low-level features (48 in the paper).
        rates: ASPP atrous rates.
        encoder_weights: optional local checkpoint (torchvision ResNet key names, or this encoder's
            ``state_dict``) to initialise the encoder; keys that do not fit (e.g. ``fc``, a 3-channel
            stem for another input width) are skipped and logged.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 1,
        layers: Sequence[int] = (2, 2, 2, 2),
        encoder_widths: Sequence[int] = (64, 128, 256, 512),
        aspp_channels: int = 256,
        low_level_channels: int = 48,
        rates: Sequence[int] = (6, 12, 18),
        encoder_weights: str | Path | None = None,
    ) -> None:
        super().__init__()
        self.encoder = ResNetEncoder(in_channels, layers, encoder_widths)
        if encoder_weights is not None:
            self.load_encoder(encoder_weights)
        self.aspp = ASPP(self.encoder.out_channels, aspp_channels, rates)
        self.reduce = conv_bn(self.encoder.low_level_channels, low_level_channels, 1)
        self.decoder = nn.Sequential(
            SeparableConv2d(aspp_channels + low_level_channels, aspp_channels),
            SeparableConv2d(aspp_channels, aspp_channels),
        )
        self.classifier = nn.Conv2d(aspp_channels, out_channels, 1)

    def load_encoder(self, path: str | Path) -> list[str]:
        """Initialise the encoder from a local checkpoint; returns the keys that were loaded.

        Raises:
            FileNotFoundError: no such file.
            ValueError: nothing in the checkpoint fits the encoder.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"encoder checkpoint not found: {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        own = self.encoder.state_dict()
        fitting = {}
        for key, value in state.items():
            key = key.removeprefix("module.").removeprefix("encoder.").removeprefix("backbone.")
            if key in own and own[key].shape == value.shape:
                fitting[key] = value
        if not fitting:
            raise ValueError(f"no tensor of {path} fits the DeepLabV3+ encoder")
        self.encoder.load_state_dict(fitting, strict=False)
        skipped = sorted(set(own) - set(fitting))
        if skipped:
            logger.warning("encoder keys not initialised from %s: %s", path, ", ".join(skipped[:10]))
        return sorted(fitting)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits at the input size (a multiple of 16)."""
        low, high = self.encoder(x)
        y = self.aspp(high)
        y = F.interpolate(y, size=low.shape[2:], mode="bilinear", align_corners=False)
        y = self.decoder(torch.cat([y, self.reduce(low)], dim=1))
        y = self.classifier(y)
        return F.interpolate(y, size=x.shape[2:], mode="bilinear", align_corners=False)
