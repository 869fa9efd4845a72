"""ResU-Net (Zhang, Liu & Wang 2018, "Road extraction by deep residual U-Net"), 2D or 3D.

- Residual unit (pre-activation): ``BN -> ReLU -> 3x3 conv (stride s) -> BN -> ReLU -> 3x3 conv``
  added to a shortcut ``1x1 conv (stride s) -> BN`` of the unit's input.
- The first encoder unit starts with ``conv -> BN -> ReLU -> conv`` (no activation on the raw
  input) and the same kind of shortcut.
- Down-sampling between encoder units by the stride 2 of their first convolution; a residual
  bridge (stride 2) at the bottom.
- Decoder units: ``2x2`` transposed convolution of stride 2, concatenation of the skip, a residual
  unit; a 1x1 convolution gives the logits.

Widths ``features`` (encoder levels, the last one is the bridge): ``(64, 128, 256, 512)`` by default
as in the paper's table, i.e. three down-samplings and a total stride of ``2 ** (len(features) - 1)``.
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.networks.layers.factories import Conv
from torch import nn

from pipeline.nets.blocks import EncoderDecoderUNet, ResidualUnit

__all__ = ["ResUNet", "ResidualUnit"]  # ResidualUnit lives in pipeline.nets.blocks; kept importable here


class ResUNet(EncoderDecoderUNet):
    """Deep residual U-Net.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels (logits).
        features: widths of the encoder levels, the last being the bridge.
        deep_supervision: add a 1x1 head on every decoder output but the last; training-mode
            ``forward`` then returns ``[main, aux_1/2, aux_1/4, ...]``.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 3,
        out_channels: int = 1,
        features: Sequence[int] = (64, 128, 256, 512),
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        features = tuple(int(f) for f in features)
        if len(features) < 2:
            raise ValueError(f"features needs at least two levels, got {features}")
        conv, up = Conv[Conv.CONV, spatial_dims], Conv[Conv.CONVTRANS, spatial_dims]
        self.encoders = nn.ModuleList([ResidualUnit(spatial_dims, in_channels, features[0], 1, first=True)])
        for previous, width in zip(features[:-2], features[1:-1], strict=False):
            self.encoders.append(ResidualUnit(spatial_dims, previous, width, stride=2))
        self.pool = nn.Identity()  # the residual units down-sample themselves
        self.bridge = ResidualUnit(spatial_dims, features[-2], features[-1], stride=2)
        self.upsamples = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for deeper, width in zip(features[:0:-1], features[-2::-1], strict=False):
            self.upsamples.append(up(deeper, deeper, kernel_size=2, stride=2))
            self.decoders.append(ResidualUnit(spatial_dims, deeper + width, width))
        self.head = conv(features[0], out_channels, 1)
        self.deep_supervision = bool(deep_supervision)
        self.aux_heads = nn.ModuleList(
            [conv(w, out_channels, 1) for w in features[1:-1]] if deep_supervision else []
        )
