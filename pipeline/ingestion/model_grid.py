"""The model's grid, and the way back: :class:`ToModelGridd` (floor 1).

The networks learnt on the Kaggle slices: axial, 256 x 256, in radiological display convention (axis codes
P, L, S, see :func:`pipeline.ingestion.kaggle.make_affine`), slices of 3 to 6 mm. Any other volume is
brought to that grid by three invertible MONAI steps, and a prediction goes back by their inverses (MONAI
``Invertd``), so the mask lands on exactly the grid the user gave:

1. ``Orientation`` to P, L, S (a reorientation: no resampling);
2. in-plane, ``SpatialPad`` (symmetric, zeros) to a square field of view, then ``Resize`` to 256 x 256: the
   field of view keeps its proportions and fills the frame, as the Kaggle slices do;
3. through-plane, slices thinner than ``thin_below_mm`` (a scanner's voxel size only, see below) are
   resampled to ``slice_mm``, so that the 2.5D networks see neighbours as far apart as in training.

Steps 2 and 3 apply to a scanner's geometry (the ``spacing_known`` meta entry of
:class:`pipeline.ingestion.scan_loader.LoadScansd`). A prepared Kaggle-like volume (P, L, S; its voxel size is
a placeholder) is already in the model's geometry and passes unchanged: there is one chain, and on the data
set it is the identity.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import InvertibleTransform, MapTransform, Orientation, Resize, SpatialPad
from monai.utils import TraceKeys

MODEL_AXCODES = "PLS"
MODEL_SIZE = 256
THIN_BELOW_MM = 3.0
SLICE_MM = 5.0


def model_grid_shape(
    shape: Sequence[int],
    slice_mm: float | None,
    size: int = MODEL_SIZE,
    thin_below: float = THIN_BELOW_MM,
    target_slice: float = SLICE_MM,
) -> tuple[int, int, int]:
    """The ``(H, W, D)`` a volume of ``shape`` (already in P, L, S) gets on the model's grid.

    Args:
        shape: spatial shape ``(H, W, D)``.
        slice_mm: the slice spacing when it is a scanner's (``None``: unknown, slices kept).
        size: the in-plane matrix.
        thin_below: slices thinner than this are resampled to ``target_slice``.
        target_slice: the slice spacing they get.
    """
    depth = int(shape[2])
    if slice_mm is not None and slice_mm < thin_below:
        depth = max(2, int(round(depth * slice_mm / target_slice)))
    return size, size, depth


def _any_instance_inverts(image: MetaTensor, count: int) -> MetaTensor:
    """Let any instance invert the last ``count`` recorded steps (MONAI's ``TraceKeys.NONE`` id): the records
    carry all the inverse needs, and a bundle's parser may build the inverting chain anew."""
    for record in image.applied_operations[-count:]:
        record[TraceKeys.ID] = TraceKeys.NONE
    return image


class ToModelGridd(MapTransform, InvertibleTransform):
    """Bring images (and labels) onto the model's grid (module docstring); ``inverse`` maps them back.

    Args:
        keys: keys to transform (images and labels).
        size: the in-plane matrix (256, the Kaggle slices').
        thin_below_mm: slices thinner than this are resampled through-plane (scanner voxel sizes only: the
            ``spacing_known`` meta entry that :class:`pipeline.ingestion.scan_loader.LoadScansd` sets).
        slice_mm: the slice spacing thin slices get.
        mode: interpolation per key (``"trilinear"`` for images, ``"nearest"`` for labels).
        allow_missing_keys: as in MONAI.
    """

    def __init__(
        self,
        keys: KeysCollection,
        size: int = MODEL_SIZE,
        thin_below_mm: float | None = None,
        slice_mm: float | None = None,
        mode: str | Sequence[str] = "trilinear",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.size = size
        # None: the module's rule as it is when the chain is built (scripts/external_dice.py --thin-below-mm)
        self.thin_below_mm = THIN_BELOW_MM if thin_below_mm is None else thin_below_mm
        self.slice_mm = SLICE_MM if slice_mm is None else slice_mm
        self.mode = [mode] * len(self.keys) if isinstance(mode, str) else list(mode)
        # one instance of each step: MONAI inverts a step only with the instance that applied it
        self.steps = {
            "orientation": Orientation(axcodes=MODEL_AXCODES, labels=None),
            "pad": SpatialPad(spatial_size=-1, method="symmetric"),
            "resize": Resize(spatial_size=-1),
        }

    def _one(self, image: MetaTensor, mode: str) -> MetaTensor:
        steps: list[str] = []
        out = self.steps["orientation"](image)
        steps.append("orientation")
        known = bool(getattr(out, "meta", {}).get("spacing_known", False))
        if not known:  # a prepared Kaggle-like volume: already the model's geometry once reoriented
            self.push_transform(out, extra_info={"steps": steps})
            return _any_instance_inverts(out, len(steps) + 1)
        height, width, depth = out.shape[1:]
        side = max(height, width)
        if (height, width) != (side, side):
            pad = self.steps["pad"]
            pad.spatial_size = (side, side, -1)
            out = pad(out)
            steps.append("pad")
        slice_mm = float(np.linalg.norm(np.asarray(out.affine)[:3, 2]))
        target = model_grid_shape((side, side, depth), slice_mm, self.size, self.thin_below_mm, self.slice_mm)
        if tuple(out.shape[1:]) != target:
            resize = self.steps["resize"]
            resize.spatial_size, resize.mode = target, mode
            resize.anti_aliasing = mode != "nearest" and any(
                t < s for t, s in zip(target, out.shape[1:], strict=True)
            )
            out = resize(out)
            steps.append("resize")
        self.push_transform(out, extra_info={"steps": steps})
        return _any_instance_inverts(out, len(steps) + 1)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, mode in self.key_iterator(d, self.mode):
            d[key] = self._one(d[key], mode)
        return d

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            info = self.pop_transform(image)
            for step in reversed(info["extra_info"]["steps"]):
                image = self.steps[step].inverse(image)
            d[key] = image if isinstance(image, torch.Tensor) else torch.as_tensor(image)
        return d
