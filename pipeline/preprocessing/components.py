"""Connected components of a binary mask: :class:`RemoveSmallComponents` / :class:`RemoveSmallComponentsd`."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from scipy import ndimage

__all__ = ["RemoveSmallComponents", "RemoveSmallComponentsd"]


class RemoveSmallComponents(Transform):
    """Drop the connected components of a binary mask that have fewer than ``min_size`` voxels, channel by
    channel. MONAI's ``RemoveSmallObjects`` would do, but its threshold follows scikit-image's: from
    scikit-image 0.26 it also drops components of exactly ``min_size`` voxels; this one keeps them whatever
    is installed. (The largest components are kept by MONAI's ``KeepLargestConnectedComponent``.)

    Args:
        min_size: smallest component kept, in voxels (<= 1: keep every component).
        connectivity: scipy connectivity rank (1: faces only; ``None``: full, 26 neighbours in 3D).
    """

    def __init__(self, min_size: int = 0, connectivity: int | None = None) -> None:
        self.min_size, self.connectivity = min_size, connectivity

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        """Filter a channel-first binary mask ``(C, *spatial)``; returns it with the input's type."""
        if self.min_size <= 1:
            return img
        mask = torch.as_tensor(img).detach().cpu().numpy() > 0
        structure = ndimage.generate_binary_structure(mask.ndim - 1, self.connectivity or mask.ndim - 1)
        keep = np.zeros_like(mask)
        for c in range(mask.shape[0]):
            labels, _ = ndimage.label(mask[c], structure=structure)
            sizes = np.bincount(labels.ravel())
            sizes[0] = 0  # background
            keep[c] = (sizes >= self.min_size)[labels]
        out = torch.as_tensor(keep, device=torch.as_tensor(img).device).to(torch.as_tensor(img).dtype)
        if isinstance(img, MetaTensor):
            return MetaTensor(out, meta=img.meta, applied_operations=img.applied_operations)
        return out


class RemoveSmallComponentsd(MapTransform):
    """Dictionary version of :class:`RemoveSmallComponents`.

    Args:
        keys: keys of the binary masks.
        min_size, connectivity: see :class:`RemoveSmallComponents`.
        allow_missing_keys: don't raise when a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        min_size: int = 0,
        connectivity: int | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.filter = RemoveSmallComponents(min_size, connectivity)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.filter(d[key])
        return d
