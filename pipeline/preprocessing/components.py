"""Connected components: :class:`RemoveSmallComponents` / :class:`RemoveSmallComponentsd` (a binary mask) and
:class:`FilterComponentsd` (artefact components of a probability, removed on the model's grid)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from scipy import ndimage

__all__ = ["FilterComponentsd", "RemoveSmallComponents", "RemoveSmallComponentsd"]


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


class FilterComponentsd(MapTransform):
    """Remove artefact components from a tumour probability, never the tumour for an artefact.

    The probability is thresholded into components (3D, full connectivity); the probability of the
    components removed is set to 0, so the mask made from it afterwards (on any grid) leaves them out:

    1. ``edge_slices``: a component that lies entirely within the outermost ``edge_slices`` slices (top or
       bottom of the volume: the vertex and the skull base, where a small bright head section looks like
       tumour) is removed, unless no other component is left;
    2. ``min_mass_fraction``: a component whose summed probability is under this fraction of the largest
       component's is removed. Unlike keeping only the largest component, a tumour is never deleted because
       an artefact is larger: both are kept when they are of one order.

    Run it on the model's grid (axial slices along the last axis), before the probability goes back to the
    case's grid.

    Args:
        keys: the probability's keys (``(1, H, W, D)``).
        threshold: the mask's probability threshold.
        edge_slices: see 1 (0: off).
        min_mass_fraction: see 2 (0: off).
        allow_missing_keys: as in MONAI.
    """

    def __init__(
        self,
        keys: KeysCollection,
        threshold: float = 0.5,
        edge_slices: int = 0,
        min_mass_fraction: float = 0.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if edge_slices < 0 or not 0.0 <= min_mass_fraction <= 1.0:
            raise ValueError(
                "edge_slices must be >= 0 and min_mass_fraction in [0, 1], "
                f"got {edge_slices}, {min_mass_fraction}"
            )
        self.threshold, self.edge_slices, self.min_mass_fraction = threshold, edge_slices, min_mass_fraction

    def keep(self, prob: np.ndarray) -> np.ndarray:
        """The voxels of the components kept (a boolean array of ``prob``'s shape, ``(H, W, D)``)."""
        mask = prob > self.threshold
        labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
        if count <= 1:
            return np.ones_like(mask)
        index = np.arange(1, count + 1)
        kept = np.ones(count, dtype=bool)
        if self.edge_slices:
            depth = mask.shape[-1]
            first = ndimage.minimum(np.arange(depth)[None, None, :] * np.ones_like(labels), labels, index)
            last = ndimage.maximum(np.arange(depth)[None, None, :] * np.ones_like(labels), labels, index)
            edge = (np.asarray(last) < self.edge_slices) | (np.asarray(first) >= depth - self.edge_slices)
            if not edge.all():
                kept &= ~edge
        if self.min_mass_fraction:
            mass = np.asarray(ndimage.sum(prob, labels, index))
            kept &= mass >= self.min_mass_fraction * mass[kept].max()
        return (labels == 0) | np.isin(labels, index[kept])

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if not self.edge_slices and not self.min_mass_fraction:
            return d
        for key in self.key_iterator(d):
            pred = d[key]
            prob = torch.as_tensor(pred).detach().float().cpu().numpy()
            keep = np.stack([self.keep(channel) for channel in prob])
            out = torch.as_tensor(pred) * torch.from_numpy(keep).to(torch.as_tensor(pred).device)
            d[key] = (
                MetaTensor(out, meta=pred.meta, applied_operations=pred.applied_operations)
                if isinstance(pred, MetaTensor)
                else out
            )
        return d
