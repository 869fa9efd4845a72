"""Intensity normalisation of channel-first volumes: :class:`BrainNormalize` / :class:`BrainNormalized`.

Per channel, clip to the ``[lower, upper]`` percentiles of the brain voxels (any channel above a threshold),
z-score on the brain voxels, non-brain set to 0: the scale and offset of the scanner's units do not matter.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

__all__ = ["BrainNormalize", "BrainNormalized"]


class BrainNormalize(Transform):
    """Channel-wise percentile clip and z-score on brain voxels of a channel-first volume.

    Args:
        lower: lower percentile of the brain voxels to clip to (per channel).
        upper: upper percentile of the brain voxels to clip to (per channel).
        threshold: a voxel is brain when any channel is above this value.
        dtype: output dtype.
    """

    def __init__(
        self,
        lower: float = 1.0,
        upper: float = 99.0,
        threshold: float = 0.0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if not 0 <= lower < upper <= 100:
            raise ValueError(f"need 0 <= lower < upper <= 100, got lower={lower}, upper={upper}")
        self.lower, self.upper, self.threshold, self.dtype = lower, upper, threshold, dtype

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        data = torch.as_tensor(img).to(torch.float32)
        brain = (data > self.threshold).any(dim=0)
        out = torch.zeros_like(data)
        if bool(brain.any()):
            for c in range(data.shape[0]):
                values = data[c][brain]
                low, high = np.percentile(values.numpy(), [self.lower, self.upper])
                values = values.clamp(float(low), float(high))
                std = values.std(unbiased=False)
                out[c][brain] = (values - values.mean()) / (std if std > 0 else 1.0)
        out = out.to(self.dtype)
        if isinstance(img, MetaTensor):
            return MetaTensor(out, meta=img.meta, applied_operations=img.applied_operations)
        return out


class BrainNormalized(MapTransform):
    """Dictionary version of :class:`BrainNormalize`.

    Args:
        keys: keys of the images to normalise.
        lower, upper, threshold, dtype: see :class:`BrainNormalize`.
        allow_missing_keys: don't raise when a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        lower: float = 1.0,
        upper: float = 99.0,
        threshold: float = 0.0,
        dtype: torch.dtype = torch.float32,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.normalize = BrainNormalize(lower, upper, threshold, dtype)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.normalize(d[key])
        return d
