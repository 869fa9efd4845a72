"""Building blocks the architectures share, as MONAI keeps ``monai/networks/blocks/``.

- :func:`init_weights`: the initialisation of convolutions, linear layers and LayerNorms (UNeXt, Segmenter,
  FCN, HRNet);
- :func:`check_input_size`: the "H and W must be multiples of the stride" check (FCN, HRNet, Segmenter);
- :func:`conv_bn`: ``conv -> BatchNorm (-> ReLU)`` as one ``nn.Sequential`` (HRNet, DeepLabV3+);
- :class:`ResidualUnit`: ResU-Net's pre-activation residual unit (MONAI's ``ResidualUnit`` is a
  post-activation unit with other arguments and parameter names, so it cannot stand in);
- :class:`EncoderDecoderUNet`: the forward pass of the U-shaped networks with concatenated skips (U-Net,
  ResU-Net).

Parameter names (``state_dict`` keys) of the blocks are part of the model-file format: keep them.
"""

from __future__ import annotations

import math

import torch
from monai.networks.layers.factories import Conv, Norm
from torch import nn

__all__ = ["init_weights", "check_input_size", "conv_bn", "ResidualUnit", "EncoderDecoderUNet", "CONV_INITS"]

#: convolution initialisations of :func:`init_weights`
CONV_INITS = ("fan_out", "fan_in")


def init_weights(model: nn.Module, conv: str = "fan_out") -> None:
    """Initialise every ``Conv2d``, ``Linear`` and ``LayerNorm`` of ``model``, in place; biases are zeroed.

    - ``Conv2d``: ``conv="fan_out"``: He normal over the fan-out of one group,
      ``N(0, 2 / (k_h * k_w * out_channels / groups))`` (ResNet's and the public UNeXt's initialisation;
      the same as ``torch.nn.init.kaiming_normal_(mode="fan_out")`` for ungrouped convolutions);
      ``conv="fan_in"``: truncated normal of std ``sqrt(1 / (in_channels * k_h * k_w))`` (ViT patch
      embeddings).
    - ``Linear``: truncated normal of std 0.02 (ViT, UNeXt).
    - ``LayerNorm``: unit weight, zero bias.

    Other modules (BatchNorm, transposed convolutions, free parameters) are left as they are.

    Args:
        model: the network (its sub-modules are visited in ``model.modules()`` order, so a seed gives the
            same weights as before).
        conv: ``"fan_out"`` or ``"fan_in"``.

    Raises:
        ValueError: unknown ``conv``.
    """
    if conv not in CONV_INITS:
        raise ValueError(f"conv must be one of {', '.join(CONV_INITS)}, got {conv!r}")
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
        elif isinstance(m, nn.Conv2d):
            kernel = m.kernel_size[0] * m.kernel_size[1]
            if conv == "fan_out":
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / (kernel * m.out_channels // m.groups)))
            else:
                nn.init.trunc_normal_(m.weight, std=math.sqrt(1.0 / (m.in_channels * kernel)))
        else:
            continue
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def check_input_size(x: torch.Tensor, stride: int, network: str) -> None:
    """Raise unless the height and width of ``x`` (its last two dimensions) are multiples of ``stride``.

    TorchScript-compatible (networks call it in ``forward``).

    Args:
        x: the input batch ``(B, C, H, W)``.
        stride: the network's total stride.
        network: the network's name, for the message.

    Raises:
        ValueError: H or W not a multiple of ``stride`` (the message points to ``pad_to_stride``).
    """
    height, width = x.shape[-2], x.shape[-1]
    if height % stride != 0 or width % stride != 0:
        raise ValueError(
            f"{network} needs H and W multiples of {stride}, got {height}x{width} "
            "(pad with pipeline.networks.pad_to_stride)"
        )


def conv_bn(
    in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, relu: bool = True
) -> nn.Sequential:
    """``Conv2d (no bias, "same" padding) -> BatchNorm2d (-> ReLU)``.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: odd kernel size.
        stride: convolution stride.
        relu: end with an (in-place) ReLU.

    Returns:
        the ``nn.Sequential`` (parameter names ``0.weight``, ``1.weight``, ``1.bias``, ...).
    """
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class ResidualUnit(nn.Module):
    """Pre-activation residual unit with a projection shortcut (ResU-Net, Zhang et al. 2018), 2D or 3D.

    ``BN -> ReLU -> 3x3 conv (stride s) -> BN -> ReLU -> 3x3 conv`` added to ``1x1 conv (stride s) -> BN``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels.
        stride: stride of the first convolution and of the shortcut.
        first: the network's first unit (``conv -> BN -> ReLU -> conv``, no pre-activation).
    """

    def __init__(
        self, spatial_dims: int, in_channels: int, out_channels: int, stride: int = 1, first: bool = False
    ) -> None:
        super().__init__()
        conv, norm = Conv[Conv.CONV, spatial_dims], Norm[Norm.BATCH, spatial_dims]
        layers: list[nn.Module] = []
        if not first:
            layers += [norm(in_channels), nn.ReLU(inplace=False)]
        layers += [
            conv(in_channels, out_channels, 3, stride=stride, padding=1),
            norm(out_channels),
            nn.ReLU(inplace=True),
            conv(out_channels, out_channels, 3, padding=1),
        ]
        self.body = nn.Sequential(*layers)
        self.shortcut = nn.Sequential(
            conv(in_channels, out_channels, 1, stride=stride, bias=False), norm(out_channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class EncoderDecoderUNet(nn.Module):
    """The forward pass shared by the U-shaped networks with concatenated skips (U-Net, ResU-Net).

    Subclasses build ``encoders``, ``pool`` (applied after each encoder; ``nn.Identity`` when the encoder
    blocks down-sample themselves), ``bridge``, ``upsamples``, ``decoders``, ``head``, ``aux_heads`` and set
    ``deep_supervision``.
    """

    def forward(self, x: torch.Tensor):
        """Logits of the spatial size of ``x`` (a multiple of the total stride); with deep supervision in
        training mode a list ``[main, aux...]``, finest auxiliary first."""
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bridge(x)
        decoded = []
        for up, decoder, skip in zip(self.upsamples, self.decoders, reversed(skips), strict=False):
            x = decoder(torch.cat([up(x), skip], dim=1))
            decoded.append(x)
        main = self.head(x)
        if self.deep_supervision and self.training:
            # decoded runs coarse to fine; the heads take every decoder output but the last, finest first
            return [main] + [head(f) for head, f in zip(self.aux_heads, decoded[-2::-1], strict=False)]
        return main
