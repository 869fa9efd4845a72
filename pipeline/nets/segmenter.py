"""Segmenter (Strudel et al., ICCV 2021): a ViT encoder with a linear or mask-transformer decoder, 2D.

- Patch embedding: a ``patch_size x patch_size`` convolution of stride ``patch_size`` (16 by
  default) maps each patch to a token of width ``hidden_size``; learnable position embeddings
  (one per patch of an ``img_size x img_size`` training image) are added. At another input size
  the embeddings are resized on the 2D patch grid (``pos_interpolation``: ``"bicubic"`` or
  ``"bilinear"``), so any multiple of the patch size works (multi-scale test-time augmentation).
- Encoder: ``depth`` pre-LayerNorm transformer blocks (multi-head self-attention + MLP, residuals;
  ``monai.networks.blocks.TransformerBlock``) and a final LayerNorm. Sizes ``"tiny"`` (depth 12,
  width 192, 3 heads) and ``"small"`` (depth 12, width 384, 6 heads); ``depth``, ``hidden_size``
  and ``num_heads`` override them. No class token: Segmenter decodes the patch tokens only.
- Decoder ``"linear"``: a linear layer maps every patch token to ``out_channels`` logits, the
  patch-level map is upsampled bilinearly to the input size.
- Decoder ``"mask"`` (mask transformer): the patch tokens are projected to the decoder width and
  ``K = out_channels`` learnable class embeddings are appended; ``decoder_depth`` transformer
  blocks process both jointly; after a LayerNorm and one linear projection each, patch tokens and
  class embeddings are L2-normalised and their scalar products give one mask logit per class and
  patch, normalised over the classes by a LayerNorm (as in the authors' design) when ``K > 1``,
  or by a learnable scale and bias when ``K = 1`` (a LayerNorm over one value would be constant);
  the masks are upsampled bilinearly to the input size.

No pretrained weights exist here: the network trains from scratch, which needs more data or
epochs than the convolutional members. Total stride: ``patch_size``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.blocks import TransformerBlock
from torch import nn

from pipeline.nets.blocks import check_input_size, init_weights

__all__ = ["Segmenter", "SEGMENTER_SIZES", "MaskTransformerDecoder", "LinearDecoder"]

#: encoder sizes of the paper: name -> (depth, width, heads)
SEGMENTER_SIZES: dict[str, tuple[int, int, int]] = {"tiny": (12, 192, 3), "small": (12, 384, 6)}


def _blocks(depth: int, width: int, heads: int, mlp_ratio: float, dropout_rate: float) -> nn.ModuleList:
    blocks = nn.ModuleList()
    for _ in range(depth):
        block = TransformerBlock(
            hidden_size=width,
            mlp_dim=int(width * mlp_ratio),
            num_heads=heads,
            dropout_rate=dropout_rate,
            qkv_bias=True,
            use_flash_attention=dropout_rate == 0.0,  # MONAI's fused path would drop out in eval too
        )
        # MONAI creates this LayerNorm even without cross-attention; unused, it would never train
        block.norm_cross_attn = nn.Identity()
        blocks.append(block)
    return blocks


class LinearDecoder(nn.Module):
    """Patch tokens -> class logits by one linear layer, upsampled bilinearly to the image.

    Args:
        hidden_size: token width.
        out_channels: classes.
    """

    def __init__(self, hidden_size: int, out_channels: int) -> None:
        super().__init__()
        self.head = nn.Linear(hidden_size, out_channels)

    def forward(self, tokens: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
        """``(B, N, D)`` patch tokens -> patch-level logits ``(B, K, grid_h, grid_w)``."""
        logits = self.head(tokens)
        return logits.transpose(1, 2).reshape(tokens.shape[0], -1, grid_h, grid_w)


class MaskTransformerDecoder(nn.Module):
    """Segmenter's mask transformer: class embeddings and patch tokens through joint transformer layers.

    Args:
        hidden_size: encoder token width.
        out_channels: classes ``K`` (one learnable class embedding each).
        decoder_size: decoder width.
        depth: transformer layers of the decoder.
        num_heads: attention heads of the decoder.
        mlp_ratio: MLP width over token width.
        dropout_rate: dropout of the transformer layers.
    """

    def __init__(
        self,
        hidden_size: int,
        out_channels: int,
        decoder_size: int,
        depth: int = 2,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        dropout_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_classes = out_channels
        self.scale = decoder_size**-0.5
        self.proj_dec = nn.Linear(hidden_size, decoder_size)
        self.cls_emb = nn.Parameter(torch.randn(1, out_channels, decoder_size) * 0.02)
        self.blocks = _blocks(depth, decoder_size, num_heads, mlp_ratio, dropout_rate)
        self.decoder_norm = nn.LayerNorm(decoder_size)
        self.proj_patch = nn.Parameter(torch.randn(decoder_size, decoder_size) * self.scale)
        self.proj_classes = nn.Parameter(torch.randn(decoder_size, decoder_size) * self.scale)
        # LayerNorm over the classes (the authors' mask_norm) when K > 1; scale and bias when K = 1
        self.mask_norm = nn.LayerNorm(out_channels) if out_channels > 1 else nn.Identity()
        self.mask_scale = nn.Parameter(torch.ones(1)) if out_channels == 1 else None
        self.mask_bias = nn.Parameter(torch.zeros(1)) if out_channels == 1 else None

    def forward(self, tokens: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
        """``(B, N, D)`` patch tokens -> patch-level mask logits ``(B, K, grid_h, grid_w)``."""
        x = self.proj_dec(tokens)
        n = x.shape[1]
        x = torch.cat([x, self.cls_emb.expand(x.shape[0], -1, -1)], dim=1)
        for block in self.blocks:
            x = block(x)
        x = self.decoder_norm(x)
        patches = F.normalize(x[:, :n] @ self.proj_patch, dim=-1)
        classes = F.normalize(x[:, n:] @ self.proj_classes, dim=-1)
        masks = self.mask_norm(patches @ classes.transpose(1, 2))  # (B, N, K)
        scale, bias = self.mask_scale, self.mask_bias
        if scale is not None and bias is not None:
            masks = masks * scale + bias
        return masks.transpose(1, 2).reshape(tokens.shape[0], self.num_classes, grid_h, grid_w)


class Segmenter(nn.Module):
    """Segmenter: ViT encoder on 16x16 patches, linear or mask-transformer decoder (2D).

    Args:
        in_channels: input channels.
        out_channels: output channels (logits; the classes of the mask transformer).
        img_size: training image side (or ``(H, W)``); the position embeddings have its patch grid.
        patch_size: patch side, also the total stride.
        size: ``"tiny"`` (12, 192, 3) or ``"small"`` (12, 384, 6): encoder depth, width and heads.
        depth: encoder depth, overriding ``size``.
        hidden_size: encoder width, overriding ``size``.
        num_heads: encoder heads, overriding ``size``.
        mlp_ratio: MLP width over token width.
        decoder: ``"mask"`` (mask transformer) or ``"linear"``.
        decoder_depth: transformer layers of the mask transformer (2 in the paper).
        decoder_size: width of the mask transformer (default: ``hidden_size``).
        decoder_heads: heads of the mask transformer (default: ``num_heads``).
        dropout_rate: dropout inside the transformer blocks (0 in the paper's segmentation setting).
        pos_interpolation: ``"bicubic"`` or ``"bilinear"`` resizing of the position embeddings.

    Raises:
        ValueError: unknown ``size``, ``decoder`` or ``pos_interpolation``, a width not divisible by
            the heads, or an ``img_size`` that is not a multiple of ``patch_size``.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 1,
        img_size: int | tuple[int, int] = 256,
        patch_size: int = 16,
        size: str = "tiny",
        depth: int | None = None,
        hidden_size: int | None = None,
        num_heads: int | None = None,
        mlp_ratio: float = 4.0,
        decoder: str = "mask",
        decoder_depth: int = 2,
        decoder_size: int | None = None,
        decoder_heads: int | None = None,
        dropout_rate: float = 0.0,
        pos_interpolation: str = "bicubic",
    ) -> None:
        super().__init__()
        if size not in SEGMENTER_SIZES:
            raise ValueError(f"size must be one of {', '.join(SEGMENTER_SIZES)}, got {size!r}")
        if decoder not in ("mask", "linear"):
            raise ValueError(f"decoder must be 'mask' or 'linear', got {decoder!r}")
        if pos_interpolation not in ("bicubic", "bilinear"):
            raise ValueError(f"pos_interpolation must be 'bicubic' or 'bilinear', got {pos_interpolation!r}")
        base_depth, base_width, base_heads = SEGMENTER_SIZES[size]
        depth = base_depth if depth is None else int(depth)
        hidden_size = base_width if hidden_size is None else int(hidden_size)
        num_heads = base_heads if num_heads is None else int(num_heads)
        for width, heads in (
            (hidden_size, num_heads),
            (decoder_size or hidden_size, decoder_heads or num_heads),
        ):
            if width % heads:
                raise ValueError(f"width {width} is not divisible by {heads} heads")
        img = (int(img_size), int(img_size)) if isinstance(img_size, int) else tuple(int(s) for s in img_size)
        if len(img) != 2 or any(s % patch_size or s <= 0 for s in img):
            raise ValueError(
                f"img_size must be positive multiples of patch_size {patch_size}, got {img_size}"
            )
        self.patch_size = int(patch_size)
        self.grid_h, self.grid_w = img[0] // patch_size, img[1] // patch_size
        self.hidden_size = hidden_size
        self.decoder_name = decoder
        self.pos_interpolation = pos_interpolation

        self.patch_embed = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid_h * self.grid_w, hidden_size))
        self.blocks = _blocks(depth, hidden_size, num_heads, mlp_ratio, dropout_rate)
        self.norm = nn.LayerNorm(hidden_size)
        self.decoder: nn.Module
        if decoder == "mask":
            self.decoder = MaskTransformerDecoder(
                hidden_size,
                out_channels,
                decoder_size or hidden_size,
                decoder_depth,
                decoder_heads or num_heads,
                mlp_ratio,
                dropout_rate,
            )
        else:
            self.decoder = LinearDecoder(hidden_size, out_channels)
        init_weights(self, conv="fan_in")
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def position_embedding(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """Position embeddings ``(1, grid_h * grid_w, D)``, resized on the 2D grid when it differs.

        Args:
            grid_h: patch rows of the input.
            grid_w: patch columns of the input.

        Returns:
            the embeddings to add to the patch tokens.
        """
        if grid_h == self.grid_h and grid_w == self.grid_w:
            return self.pos_embed
        grid = self.pos_embed.reshape(1, self.grid_h, self.grid_w, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(grid_h, grid_w), mode=self.pos_interpolation, align_corners=False)
        return grid.flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, H, W)``, H, W multiples of ``patch_size`` -> logits ``(B, out_channels, H, W)``.

        Raises:
            ValueError: H or W not a multiple of ``patch_size`` (pad with ``pad_to_stride``).
        """
        check_input_size(x, self.patch_size, "Segmenter")
        height, width = x.shape[-2], x.shape[-1]
        grid_h, grid_w = height // self.patch_size, width // self.patch_size
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        tokens = tokens + self.position_embedding(grid_h, grid_w)
        for block in self.blocks:
            tokens = block(tokens)
        tokens = self.norm(tokens)
        logits = self.decoder(tokens, grid_h, grid_w)
        return F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
