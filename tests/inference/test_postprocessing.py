"""Post-processing: MONAI's KeepLargestConnectedComponentd plus RemoveSmallComponentsd give exactly what the
former hand-written filter gave (3D, full connectivity, the same ties)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy import ndimage

from pipeline.inference.postprocessing import build_postprocessing
from pipeline.transforms import RemoveSmallComponents


def _former_filter(mask: torch.Tensor, keep_largest: int, min_size: int) -> torch.Tensor:
    """The hand-written filter the post-processing used before (scipy, 26 neighbours in 3D)."""
    if not keep_largest and not min_size:
        return mask
    binary = mask.numpy() > 0
    keep_all = np.zeros_like(binary)
    for c in range(binary.shape[0]):
        labels, num = ndimage.label(binary[c], structure=ndimage.generate_binary_structure(3, 3))
        if num == 0:
            continue
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        keep = sizes >= max(min_size, 1)
        if keep_largest:
            largest = np.zeros_like(keep)
            largest[np.argsort(sizes)[::-1][:keep_largest]] = True
            keep &= largest
        keep[0] = False
        keep_all[c] = keep[labels]
    return torch.as_tensor(keep_all).to(mask.dtype)


@pytest.mark.parametrize("seed", range(4))
def test_monai_filters_match_the_former_filter_on_random_blobs(seed):
    rng = np.random.default_rng(seed)
    for _ in range(40):
        shape = (1, *(int(s) for s in rng.integers(3, 16, 3)))
        mask = torch.as_tensor(rng.random(shape) < rng.uniform(0.05, 0.45)).float()
        keep_largest, min_size = int(rng.integers(0, 4)), int(rng.integers(0, 6))
        got = build_postprocessing(0.5, keep_largest, min_size)({"pred": mask.clone()})["pred"]
        expected = _former_filter(mask, keep_largest, min_size)
        assert torch.equal(torch.as_tensor(got), expected), (shape, keep_largest, min_size)


def test_components_touching_by_a_corner_are_one_and_min_size_is_kept():
    mask = torch.zeros(1, 6, 6, 6)
    mask[0, 0, 0, 0] = mask[0, 1, 1, 1] = mask[0, 2, 2, 2] = 1  # one component of 3 (corners touch)
    mask[0, 5, 5, 0] = mask[0, 5, 5, 1] = 1  # one of 2
    assert int(RemoveSmallComponents(min_size=3)(mask).sum()) == 3  # exactly min_size voxels: kept
    assert int(RemoveSmallComponents(min_size=3, connectivity=1)(mask).sum()) == 0  # faces only: 1+1+1, 2
    largest = build_postprocessing(0.5, keep_largest=1)({"pred": MetaTensor(mask)})["pred"]
    assert isinstance(largest, MetaTensor) and int(largest.sum()) == 3
    assert torch.equal(RemoveSmallComponents(min_size=1)(mask), mask)
