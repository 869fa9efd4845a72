"""Fully convolutional networks FCN-32s, FCN-16s and FCN-8s (Long et al., CVPR 2015), 2D, from scratch.

- Encoder: VGG-16 layout, five blocks of ``(2, 2, 3, 3, 3)`` 3x3 convolutions (+ BatchNorm,
  ``batch_norm=True`` by default because nothing is pretrained here; the paper's VGG has none)
  + ReLU, each block closed by a 2x2 max-pool (pool1..pool5, total stride 32). Block widths are
  ``base_width * (1, 2, 4, 8, 8)``: the classic VGG-16 is ``base_width=64`` (64..512); the default
  32 keeps it trainable on a small CPU.
- fc6 / fc7 as convolutions: ``fc_kernel_size`` (7) then 1x1, ``fc_channels`` wide (4096 in the
  paper, 512 by default), each + ReLU + dropout (0.5 in the paper). Padding keeps the pool5 grid
  (no 100-pixel input padding and cropping as in the authors' Caffe net: inputs are multiples of 32).
- Scores: a 1x1 convolution per scale (score_fr on fc7; score_pool4 and score_pool3 zero-initialised
  as in the paper, so training starts from the coarser net's predictions).
- Upsampling by transposed convolutions initialised to bilinear interpolation and learned:
  FCN-32s: x32 from fc7; FCN-16s: x2, + pool4 score, x16; FCN-8s: x2, + pool4 score, x2, + pool3
  score, x8. Kernel ``2 * factor``, stride ``factor``, padding ``factor / 2`` give exact sizes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pipeline.nets.blocks import check_input_size, init_weights

__all__ = ["FCN", "FCN_VARIANTS", "bilinear_kernel", "VGG16_BLOCKS"]

#: convolutions per VGG-16 block
VGG16_BLOCKS: tuple[int, ...] = (2, 2, 3, 3, 3)
#: variant -> finest skip used (32: none, 16: pool4, 8: pool3 and pool4)
FCN_VARIANTS: dict[str, int] = {"32s": 32, "16s": 16, "8s": 8}


def bilinear_kernel(channels: int, kernel_size: int) -> torch.Tensor:
    """Weights ``(channels, channels, k, k)`` of a transposed convolution that upsamples bilinearly.

    Args:
        channels: input = output channels (each channel upsampled on its own).
        kernel_size: ``2 * factor`` for an upsampling by ``factor``.

    Returns:
        the weight tensor (zero between different channels).
    """
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    steps = torch.arange(kernel_size, dtype=torch.float32)
    profile = 1 - (steps - center).abs() / factor
    weight = torch.zeros(channels, channels, kernel_size, kernel_size)
    for c in range(channels):
        weight[c, c] = profile[:, None] * profile[None, :]
    return weight


def _upsample(channels: int, factor: int) -> nn.ConvTranspose2d:
    layer = nn.ConvTranspose2d(channels, channels, 2 * factor, stride=factor, padding=factor // 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(bilinear_kernel(channels, 2 * factor))
    return layer


def _vgg_block(in_channels: int, out_channels: int, convs: int, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(convs):
        layers.append(nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(nn.ReLU(inplace=True))
    layers.append(nn.MaxPool2d(2, 2))
    return nn.Sequential(*layers)


class FCN(nn.Module):
    """FCN on a VGG-style encoder: ``variant`` ``"8s"`` (default), ``"16s"`` or ``"32s"``.

    Args:
        in_channels: input channels.
        out_channels: output channels (logits).
        variant: ``"8s"`` (skips from pool3 and pool4), ``"16s"`` (pool4) or ``"32s"`` (none).
        base_width: width of the first VGG block; blocks are ``base_width * (1, 2, 4, 8, 8)``
            (64 = the classic VGG-16).
        blocks: convolutions per VGG block (five blocks; VGG-16: ``(2, 2, 3, 3, 3)``).
        fc_channels: width of fc6 and fc7 (4096 in the paper).
        fc_kernel_size: kernel of fc6 (7 in the paper; odd).
        dropout: dropout after fc6 and fc7 (0.5 in the paper).
        batch_norm: BatchNorm after every encoder convolution.

    Raises:
        ValueError: unknown variant, not five blocks, or an even ``fc_kernel_size``.
    """

    __constants__ = ["skips"]

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 1,
        variant: str = "8s",
        base_width: int = 32,
        blocks: Sequence[int] = VGG16_BLOCKS,
        fc_channels: int = 512,
        fc_kernel_size: int = 7,
        dropout: float = 0.5,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        variant = str(variant).lower().removeprefix("fcn")
        if variant not in FCN_VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(FCN_VARIANTS)}, got {variant!r}")
        if len(blocks) != 5:
            raise ValueError(f"blocks must give the convolutions of five VGG blocks, got {blocks}")
        if fc_kernel_size % 2 == 0:
            raise ValueError(f"fc_kernel_size must be odd, got {fc_kernel_size}")
        self.variant = variant
        self.skips = 32 // FCN_VARIANTS[variant] - 1  # 0, 1 or 2 skip fusions
        widths = [base_width * m for m in (1, 2, 4, 8, 8)]
        self.widths = tuple(widths)
        self.block1 = _vgg_block(in_channels, widths[0], blocks[0], batch_norm)
        self.block2 = _vgg_block(widths[0], widths[1], blocks[1], batch_norm)
        self.block3 = _vgg_block(widths[1], widths[2], blocks[2], batch_norm)
        self.block4 = _vgg_block(widths[2], widths[3], blocks[3], batch_norm)
        self.block5 = _vgg_block(widths[3], widths[4], blocks[4], batch_norm)
        self.fc = nn.Sequential(
            nn.Conv2d(widths[4], fc_channels, fc_kernel_size, padding=fc_kernel_size // 2),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Conv2d(fc_channels, fc_channels, 1),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )
        self.score_fr = nn.Conv2d(fc_channels, out_channels, 1)
        # skip branches exist only where the variant uses them (every parameter gets a gradient);
        # parameter-free identities stand in for the others
        self.score_pool4 = nn.Conv2d(widths[3], out_channels, 1) if self.skips >= 1 else nn.Identity()
        self.score_pool3 = nn.Conv2d(widths[2], out_channels, 1) if self.skips >= 2 else nn.Identity()
        self.upscore2 = _upsample(out_channels, 2) if self.skips >= 1 else nn.Identity()
        self.upscore_pool4 = _upsample(out_channels, 2) if self.skips >= 2 else nn.Identity()
        self.upscore_final = _upsample(out_channels, FCN_VARIANTS[variant])
        init_weights(self, conv="fan_out")
        for m in (self.score_pool4, self.score_pool3):  # the paper's zero initialisation of the skips
            if isinstance(m, nn.Conv2d):
                nn.init.zeros_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, H, W)``, H and W multiples of 32 -> logits ``(B, out_channels, H, W)``.

        Raises:
            ValueError: H or W not a multiple of 32 (pad with ``pad_to_stride``).
        """
        check_input_size(x, 32, "FCN")
        pool3 = self.block3(self.block2(self.block1(x)))
        pool4 = self.block4(pool3)
        score = self.score_fr(self.fc(self.block5(pool4)))
        if self.skips >= 1:
            score = self.upscore2(score) + self.score_pool4(pool4)
        if self.skips >= 2:
            score = self.upscore_pool4(score) + self.score_pool3(pool3)
        return self.upscore_final(score)
