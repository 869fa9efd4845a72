"""Whole-volume inference: slice-by-slice (2D / 2.5D) or sliding-window (3D), with test-time augmentation.

:class:`VolumeInferer` is a MONAI ``Inferer``: ``inferer(volume, network)`` maps a batch of normalised
volumes ``(B, C, H, W, D)`` to the tumour probability ``(B, 1, H, W, D)`` on the volume's device. The
windows (slices or patches) run on ``sw_device`` (the network's device, e.g. the GPU) so that a large
volume can stay on the CPU. :class:`VolumePrepareBatch` keeps large volumes on the CPU.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.engines import PrepareBatch, default_prepare_batch
from monai.inferers import Inferer, SliceInferer, SlidingWindowInferer

from pipeline.inference.quality import TTA_AGREEMENT_KEY, flip_agreement
from pipeline.training.autocast import cpu_bf16_supported
from pipeline.transforms import DEFAULT_PATCH_SIZE, SliceContext

TTA_MODES = ("none", "flip", "scale", "flip+scale")


class VolumeInferer(Inferer):
    """Tumour probability of whole volumes, averaged over test-time augmentations.

    Args:
        spatial_dims: 2 (slice by slice through ``SliceInferer``; 2.5D when ``context > 0``) or 3
            (``SlidingWindowInferer`` over ``patch_size``).
        num_classes: 1 (sigmoid of one logit channel) or 2 (softmax, tumour = channel 1).
        context: neighbouring slices on each side stacked as channels (2.5D networks).
        divisible: pad in-plane to a multiple of this (the network's total stride); cropped back after.
        input_size: in-plane size the network was trained at; each slice is resized to it and the
            probability resized back (``None``: native size).
        patch_size: 3D window ``(H, W, D)``.
        sw_batch_size: slices (or patches) per forward pass.
        overlap: 3D window overlap.
        tta: ``"none"``, ``"flip"`` (left-right and up-down flips), ``"scale"`` (Segmenter's multi-scale:
            ``scales`` of the in-plane size) or ``"flip+scale"``; probabilities are averaged. With flips,
            the agreement of the flipped variants' masks (:func:`pipeline.inference.quality.flip_agreement`,
            one value per batch item) goes into the output's metadata under ``"tta_agreement"`` (the
            quality estimate's ``tta_disagree`` flag).
        scales: the multi-scale factors.
        sw_device: device of the windows (defaults to the network's device).
        cpu_bf16: when the windows run on a CPU with native bf16 (AVX512-BF16 / AMX-BF16,
            :func:`pipeline.training.autocast.cpu_bf16_supported`), run the network under bf16 autocast
            (the networks 1.5-2x faster on a 2-core AMX Xeon; the probabilities stay float32); float32 on
            other CPUs and on CUDA (where the engine's ``amp`` decides).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        num_classes: int = 1,
        context: int = 0,
        divisible: int = 16,
        input_size: Sequence[int] | None = None,
        patch_size: Sequence[int] = DEFAULT_PATCH_SIZE,
        sw_batch_size: int = 32,
        overlap: float = 0.25,
        tta: str = "none",
        scales: Sequence[float] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75),
        sw_device: torch.device | str | None = None,
        cpu_bf16: bool = False,
    ) -> None:
        super().__init__()
        if tta not in TTA_MODES:
            raise ValueError(f"tta must be one of {', '.join(TTA_MODES)}, got {tta!r}")
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        self.spatial_dims, self.num_classes = spatial_dims, num_classes
        self.context = SliceContext(context)
        self.divisible = max(1, divisible)
        self.input_size = tuple(input_size) if input_size else None
        self.patch_size = tuple(patch_size)
        self.sw_batch_size, self.overlap = sw_batch_size, overlap
        # flips of (B, C, H, W, D): none, left-right, up-down (in-plane)
        self.flips: list[tuple[int, ...]] = [()] + ([(3,), (2,)] if "flip" in tta else [])
        self.scales = tuple(scales) if "scale" in tta else (1.0,)
        self.sw_device = sw_device
        self.cpu_bf16 = bool(cpu_bf16)

    def _precision(self, sw_device: Any) -> contextlib.AbstractContextManager:
        """bf16 autocast for windows on a bf16-capable CPU when ``cpu_bf16``; otherwise nothing changes."""
        on_cpu = sw_device is None or torch.device(sw_device).type == "cpu"
        if self.cpu_bf16 and on_cpu and cpu_bf16_supported():
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _probability(self, logits: torch.Tensor) -> torch.Tensor:
        if self.num_classes == 1:
            return torch.sigmoid(logits.float())
        return torch.softmax(logits.float(), dim=1)[:, 1:2]

    def _size_at(self, scale: float, size: Sequence[int]) -> tuple[int, int]:
        base = self.input_size or tuple(size)
        return tuple(
            max(self.divisible, int(round(b * scale / self.divisible)) * self.divisible) for b in base
        )

    def _slices(self, volume: torch.Tensor, network: Callable, scale: float, sw_device: Any) -> torch.Tensor:
        """2D: probability of every slice of ``(B, C', H, W, D)``, run at ``scale`` of the training size."""
        h, w = volume.shape[2:4]
        # native size: pad to the stride (the inferer crops back); otherwise resize to a multiple of it
        target = (h, w) if self.input_size is None and scale == 1.0 else self._size_at(scale, (h, w))
        resized = (h, w) != target

        def run_slices(x: torch.Tensor) -> torch.Tensor:
            if resized:
                x = F.interpolate(x, size=target, mode="bilinear", align_corners=False)
            y = self._probability(network(x))
            if resized:
                y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
            return y

        roi = (
            (h, w) if resized else tuple(int(math.ceil(s / self.divisible) * self.divisible) for s in (h, w))
        )
        inferer = SliceInferer(
            spatial_dim=2,
            roi_size=roi,
            sw_batch_size=self.sw_batch_size,
            sw_device=sw_device,
            device=volume.device,
            padding_mode="constant",
            progress=False,
        )
        return inferer(volume, run_slices)

    def _patches(self, volume: torch.Tensor, network: Callable, sw_device: Any) -> torch.Tensor:
        inferer = SlidingWindowInferer(
            roi_size=self.patch_size,
            sw_batch_size=self.sw_batch_size,
            overlap=self.overlap,
            mode="gaussian",
            sw_device=sw_device,
            device=volume.device,
        )
        return inferer(volume, lambda x: self._probability(network(x)))

    def __call__(
        self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """Probability ``(B, 1, H, W, D)`` of the normalised volumes ``inputs`` ``(B, C, H, W, D)``."""
        sw_device = self.sw_device
        if sw_device is None and isinstance(network, torch.nn.Module):
            sw_device = next(network.parameters()).device
        volume = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        if self.spatial_dims == 2:
            volume = self.context(volume)
        variants: list[torch.Tensor] = []  # per flip: the mean over the scales, back on the input
        scales = self.scales if self.spatial_dims == 2 else (1.0,)
        for dims in self.flips:
            x = torch.flip(volume, dims) if dims else volume
            total: torch.Tensor | None = None
            for scale in scales:
                with self._precision(sw_device):
                    if self.spatial_dims == 2:
                        prob = self._slices(x, network, scale, sw_device)
                    else:
                        prob = self._patches(x, network, sw_device)
                total = prob if total is None else total + prob
            assert total is not None
            variants.append(torch.flip(total, dims) / len(scales) if dims else total / len(scales))
        out = variants[0] if len(variants) == 1 else torch.stack(variants).mean(dim=0)
        if isinstance(inputs, MetaTensor):
            meta = dict(inputs.meta)
            if len(variants) > 1:
                meta[TTA_AGREEMENT_KEY] = flip_agreement(variants).cpu()
            out = MetaTensor(out, meta=meta)
        return out


class VolumePrepareBatch(PrepareBatch):
    """Move image and label to the engine's device unless the volume is large (then keep it on the CPU).

    Args:
        max_device_voxels: volumes with more voxels than this stay on the CPU (the inferer still runs the
            windows on the network's device).
    """

    def __init__(self, max_device_voxels: int = 64 * 1024 * 1024) -> None:
        self.max_device_voxels = max_device_voxels

    def __call__(
        self,
        batchdata: dict[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> Any:
        if batchdata["image"].numel() > self.max_device_voxels:
            device = torch.device("cpu")
        return default_prepare_batch(batchdata, device, non_blocking, **kwargs)
