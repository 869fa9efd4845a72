"""The classic U-Net (Ronneberger et al. 2015, with BatchNorm), 2D or 3D, base width a parameter.

Four encoder blocks (two ``3x3 conv -> BN -> ReLU``, then 2x2 max-pool), a bridge block, four decoder
blocks (``2x2`` transposed convolution of stride 2 halving the width, concatenation of the skip,
two ``3x3 conv -> BN -> ReLU``) and a 1x1 convolution. Widths ``b, 2b, 4b, 8b, 16b``: ``b = 64`` is
the classic form (31.0 M parameters for 3 -> 1 channels), ``b = 32`` brain-segmentation-pytorch's
(7.8 M). Total stride 16.
"""

from __future__ import annotations

from monai.networks.layers.factories import Conv, Norm, Pool
from torch import nn

from pipeline.nets.blocks import EncoderDecoderUNet

__all__ = ["UNet", "DoubleConv"]


class DoubleConv(nn.Sequential):
    """``(conv 3x3 -> BN -> ReLU) x 2``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels of both convolutions.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int) -> None:
        conv, norm = Conv[Conv.CONV, spatial_dims], Norm[Norm.BATCH, spatial_dims]
        super().__init__(
            conv(in_channels, out_channels, 3, padding=1, bias=False),
            norm(out_channels),
            nn.ReLU(inplace=True),
            conv(out_channels, out_channels, 3, padding=1, bias=False),
            norm(out_channels),
            nn.ReLU(inplace=True),
        )


class UNet(EncoderDecoderUNet):
    """Classic U-Net with BatchNorm.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels (logits).
        base_width: width of the first block; the others double, up to ``16 * base_width``.
        deep_supervision: add a 1x1 head on the decoder outputs at 1/8, 1/4 and 1/2 scale;
            training-mode ``forward`` then returns ``[main, aux_1/2, aux_1/4, aux_1/8]``.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 3,
        out_channels: int = 1,
        base_width: int = 64,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        widths = [base_width * 2**i for i in range(5)]
        conv, up = Conv[Conv.CONV, spatial_dims], Conv[Conv.CONVTRANS, spatial_dims]
        self.pool = Pool[Pool.MAX, spatial_dims](2)
        self.encoders = nn.ModuleList()
        previous = in_channels
        for w in widths[:4]:
            self.encoders.append(DoubleConv(spatial_dims, previous, w))
            previous = w
        self.bridge = DoubleConv(spatial_dims, widths[3], widths[4])
        self.upsamples = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for w in reversed(widths[:4]):
            self.upsamples.append(up(2 * w, w, kernel_size=2, stride=2))
            self.decoders.append(DoubleConv(spatial_dims, 2 * w, w))
        self.head = conv(widths[0], out_channels, 1)
        self.deep_supervision = bool(deep_supervision)
        self.aux_heads = nn.ModuleList(
            [conv(w, out_channels, 1) for w in (widths[1], widths[2], widths[3])] if deep_supervision else []
        )
