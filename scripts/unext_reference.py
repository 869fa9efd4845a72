"""Reference UNeXt: the public implementation's algorithm, re-written for side-by-side benchmarks.

This module is **not** a network to train: it exists so that ``scripts/benchmark_networks.py`` and
the tests can compare :class:`pipeline.nets.unext.UNeXt` with the design of the public UNeXt code
(jeya-maria-jose/UNeXt-pytorch, ``archs.py``, class ``UNext``) on the same machine. It follows that
design operation by operation, including the parts that make it slow:

- tokens are kept as ``(B, N, C)`` and transposed/reshaped back to ``(B, C, H, W)`` around every
  depth-wise convolution and shift (with ``.contiguous()`` copies);
- the axial shift zero-pads the map by ``shift_size // 2`` on every side, splits the channels into
  ``shift_size`` groups with ``torch.chunk``, rolls each group by a different offset, concatenates
  the groups and narrows the result back to ``H x W`` (first along dim 2 = H, before ``fc1``; then
  along dim 3 = W, before ``fc2``, exactly as the public code orders them);
- a dropout of probability 0 after the activation and after ``fc2`` (kept: it is what runs there).

It has no dependency beyond PyTorch (no ``timm``/``mmcv``): ``trunc_normal_`` is PyTorch's own and
``DropPath`` with rate 0 is the identity. Parameter names differ from :mod:`pipeline.nets.unext`; use
:func:`pipeline.nets.unext.load_reference_state_dict` to copy weights across.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ReferenceUNeXt"]


def _init_weights(m: nn.Module) -> None:
    """The public code's initialisation (ViT-style linears, He-style convs)."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.constant_(m.bias, 0)
    elif isinstance(m, nn.LayerNorm):
        nn.init.constant_(m.bias, 0)
        nn.init.constant_(m.weight, 1.0)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        m.weight.data.normal_(0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            m.bias.data.zero_()


class _RefDWConv(nn.Module):
    """Depth-wise 3x3 convolution applied to ``(B, N, C)`` tokens."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, bias=True, groups=dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, _, c = x.shape
        x = x.transpose(1, 2).view(b, c, h, w)
        x = self.dwconv(x)
        return x.flatten(2).transpose(1, 2)


class _RefShiftMLP(nn.Module):
    """Shifted MLP: shift(H) -> fc1 -> dwconv -> GELU -> shift(W) -> fc2, the naive way."""

    def __init__(self, dim: int, shift_size: int = 5, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, dim)
        self.dwconv = _RefDWConv(dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(dim, dim)
        self.drop = nn.Dropout(drop)
        self.shift_size = shift_size
        self.pad = shift_size // 2
        self.apply(_init_weights)

    def _shift(self, x: torch.Tensor, h: int, w: int, dim: int) -> torch.Tensor:
        b, _, c = x.shape
        xn = x.transpose(1, 2).view(b, c, h, w).contiguous()
        xn = F.pad(xn, (self.pad, self.pad, self.pad, self.pad), "constant", 0)
        xs = torch.chunk(xn, self.shift_size, 1)
        x_shift = [
            torch.roll(x_c, s, dim) for x_c, s in zip(xs, range(-self.pad, self.pad + 1), strict=False)
        ]
        x_cat = torch.cat(x_shift, 1)
        x_cat = torch.narrow(x_cat, 2, self.pad, h)
        x_s = torch.narrow(x_cat, 3, self.pad, w)
        x_s = x_s.reshape(b, c, h * w).contiguous()
        return x_s.transpose(1, 2)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = self.fc1(self._shift(x, h, w, 2))
        x = self.dwconv(x, h, w)
        x = self.act(x)
        x = self.drop(x)
        x = self.fc2(self._shift(x, h, w, 3))
        return self.drop(x)


class _RefShiftedBlock(nn.Module):
    """``x + shiftmlp(LayerNorm(x))`` on tokens."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.drop_path = nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _RefShiftMLP(dim)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return x + self.drop_path(self.mlp(self.norm2(x), h, w))


class _RefOverlapPatchEmbed(nn.Module):
    """3x3 stride-2 convolution to tokens, then LayerNorm."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=3, stride=2, padding=1)
        self.norm = nn.LayerNorm(embed_dim)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        _, _, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        return self.norm(x), h, w


class ReferenceUNeXt(nn.Module):
    """The public UNeXt design (for benchmarks and equivalence tests only).

    Args:
        in_channels: input channels (the public code hard-codes 3).
        out_channels: output channels (``num_classes`` there).
        widths: the five stage widths ``(c1, c2, c3, m1, m2)``; the public ones by default.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 1,
        widths: Sequence[int] = (16, 32, 128, 160, 256),
    ) -> None:
        super().__init__()
        c1, c2, c3, m1, m2 = (int(w) for w in widths)
        self.encoder1 = nn.Conv2d(in_channels, c1, 3, stride=1, padding=1)
        self.encoder2 = nn.Conv2d(c1, c2, 3, stride=1, padding=1)
        self.encoder3 = nn.Conv2d(c2, c3, 3, stride=1, padding=1)
        self.ebn1 = nn.BatchNorm2d(c1)
        self.ebn2 = nn.BatchNorm2d(c2)
        self.ebn3 = nn.BatchNorm2d(c3)
        self.norm3 = nn.LayerNorm(m1)
        self.norm4 = nn.LayerNorm(m2)
        self.dnorm3 = nn.LayerNorm(m1)
        self.dnorm4 = nn.LayerNorm(c3)
        self.block1 = nn.ModuleList([_RefShiftedBlock(m1)])
        self.block2 = nn.ModuleList([_RefShiftedBlock(m2)])
        self.dblock1 = nn.ModuleList([_RefShiftedBlock(m1)])
        self.dblock2 = nn.ModuleList([_RefShiftedBlock(c3)])
        self.patch_embed3 = _RefOverlapPatchEmbed(c3, m1)
        self.patch_embed4 = _RefOverlapPatchEmbed(m1, m2)
        self.decoder1 = nn.Conv2d(m2, m1, 3, stride=1, padding=1)
        self.decoder2 = nn.Conv2d(m1, c3, 3, stride=1, padding=1)
        self.decoder3 = nn.Conv2d(c3, c2, 3, stride=1, padding=1)
        self.decoder4 = nn.Conv2d(c2, c1, 3, stride=1, padding=1)
        self.decoder5 = nn.Conv2d(c1, c1, 3, stride=1, padding=1)
        self.dbn1 = nn.BatchNorm2d(m1)
        self.dbn2 = nn.BatchNorm2d(c3)
        self.dbn3 = nn.BatchNorm2d(c2)
        self.dbn4 = nn.BatchNorm2d(c1)
        self.final = nn.Conv2d(c1, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        out = F.relu(F.max_pool2d(self.ebn1(self.encoder1(x)), 2, 2))
        t1 = out
        out = F.relu(F.max_pool2d(self.ebn2(self.encoder2(out)), 2, 2))
        t2 = out
        out = F.relu(F.max_pool2d(self.ebn3(self.encoder3(out)), 2, 2))
        t3 = out

        out, h, w = self.patch_embed3(out)
        for blk in self.block1:
            out = blk(out, h, w)
        out = self.norm3(out)
        out = out.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous()
        t4 = out

        out, h, w = self.patch_embed4(out)
        for blk in self.block2:
            out = blk(out, h, w)
        out = self.norm4(out)
        out = out.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous()

        out = F.relu(F.interpolate(self.dbn1(self.decoder1(out)), scale_factor=(2, 2), mode="bilinear"))
        out = torch.add(out, t4)
        _, _, h, w = out.shape
        out = out.flatten(2).transpose(1, 2)
        for blk in self.dblock1:
            out = blk(out, h, w)
        out = self.dnorm3(out)
        out = out.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous()

        out = F.relu(F.interpolate(self.dbn2(self.decoder2(out)), scale_factor=(2, 2), mode="bilinear"))
        out = torch.add(out, t3)
        _, _, h, w = out.shape
        out = out.flatten(2).transpose(1, 2)
        for blk in self.dblock2:
            out = blk(out, h, w)
        out = self.dnorm4(out)
        out = out.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous()

        out = F.relu(F.interpolate(self.dbn3(self.decoder3(out)), scale_factor=(2, 2), mode="bilinear"))
        out = torch.add(out, t2)
        out = F.relu(F.interpolate(self.dbn4(self.decoder4(out)), scale_factor=(2, 2), mode="bilinear"))
        out = torch.add(out, t1)
        out = F.relu(F.interpolate(self.decoder5(out), scale_factor=(2, 2), mode="bilinear"))
        return self.final(out)
