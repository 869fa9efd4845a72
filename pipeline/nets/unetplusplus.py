"""U-Net++ (Zhou et al. 2018/2020) on MONAI's ``BasicUNetPlusPlus``, with inference-time pruning.

MONAI provides the nested, densely connected body (node ``X(i, j)`` takes ``X(i, 0..j-1)`` and the
up-sampled ``X(i+1, j-1)``) and one 1x1 head per top-row node ``X(0, 1..4)``. This wrapper adds the
project's conventions:

- deep supervision: in training mode ``forward`` returns ``[X(0,4), X(0,3), X(0,2), X(0,1)]`` logits
  (main first; the loss sums over heads); in eval mode the logits of one head only;
- pruning: ``pruning_level=L`` (1..4) predicts from ``X(0, L)`` in eval mode and computes only the
  sub-network it needs (levels 0..L), trading accuracy for speed. Levels below 4 need heads trained
  with deep supervision;
- without deep supervision, the unused heads of ``X(0, 1..3)`` are removed.

Total stride 16.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import BasicUNetPlusPlus

__all__ = ["UNetPlusPlus"]


class UNetPlusPlus(BasicUNetPlusPlus):
    """U-Net++ with deep supervision and inference-time pruning.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels (logits).
        features: MONAI's six widths (five levels and the last decoder node).
        deep_supervision: heads on ``X(0, 1..4)``, all returned in training mode.
        pruning_level: the top-row node ``X(0, L)`` used in eval mode (1..4).
        **kwargs: ``act``, ``norm``, ``bias``, ``dropout``, ``upsample`` of ``BasicUNetPlusPlus``.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 3,
        out_channels: int = 1,
        features: Sequence[int] = (32, 32, 64, 128, 256, 32),
        deep_supervision: bool = False,
        pruning_level: int = 4,
        **kwargs,
    ) -> None:
        super().__init__(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=out_channels,
            features=features,
            deep_supervision=deep_supervision,
            **kwargs,
        )
        pruning_level = int(pruning_level)
        if pruning_level not in (1, 2, 3, 4):
            raise ValueError(f"pruning_level must be 1, 2, 3 or 4, got {pruning_level}")
        if pruning_level < 4 and not deep_supervision:
            raise ValueError(
                "pruning_level < 4 needs deep_supervision=True (the shallow heads must be trained)"
            )
        self.pruning_level = pruning_level
        if not deep_supervision:
            del self.final_conv_0_1, self.final_conv_0_2, self.final_conv_0_3

    def forward(self, x: torch.Tensor):
        """Logits of the same size as ``x`` (multiple of 16); in training mode with deep supervision,
        ``[X(0,4), X(0,3), X(0,2), X(0,1)]`` logits."""
        level = 4 if self.training else self.pruning_level
        x_0_0 = self.conv_0_0(x)
        x_1_0 = self.conv_1_0(x_0_0)
        x_0_1 = self.upcat_0_1(x_1_0, x_0_0)
        top = [x_0_1]
        if level >= 2:
            x_2_0 = self.conv_2_0(x_1_0)
            x_1_1 = self.upcat_1_1(x_2_0, x_1_0)
            x_0_2 = self.upcat_0_2(x_1_1, torch.cat([x_0_0, x_0_1], dim=1))
            top.append(x_0_2)
            if level >= 3:
                x_3_0 = self.conv_3_0(x_2_0)
                x_2_1 = self.upcat_2_1(x_3_0, x_2_0)
                x_1_2 = self.upcat_1_2(x_2_1, torch.cat([x_1_0, x_1_1], dim=1))
                x_0_3 = self.upcat_0_3(x_1_2, torch.cat([x_0_0, x_0_1, x_0_2], dim=1))
                top.append(x_0_3)
                if level >= 4:
                    x_4_0 = self.conv_4_0(x_3_0)
                    x_3_1 = self.upcat_3_1(x_4_0, x_3_0)
                    x_2_2 = self.upcat_2_2(x_3_1, torch.cat([x_2_0, x_2_1], dim=1))
                    x_1_3 = self.upcat_1_3(x_2_2, torch.cat([x_1_0, x_1_1, x_1_2], dim=1))
                    x_0_4 = self.upcat_0_4(x_1_3, torch.cat([x_0_0, x_0_1, x_0_2, x_0_3], dim=1))
                    top.append(x_0_4)
        if self.training and self.deep_supervision:
            heads = [self.final_conv_0_4, self.final_conv_0_3, self.final_conv_0_2, self.final_conv_0_1]
            return [head(node) for head, node in zip(heads, reversed(top), strict=False)]
        if level == 4:
            return self.final_conv_0_4(top[-1])
        if level == 3:
            return self.final_conv_0_3(top[-1])
        if level == 2:
            return self.final_conv_0_2(top[-1])
        return self.final_conv_0_1(top[-1])
