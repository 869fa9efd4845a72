"""The model's grid, defined in physical space, and the way back: :class:`ToModelGridd`.

The networks learnt on the Kaggle slices: axial, in radiological display convention (axis codes P, L, S, see
:func:`pipeline.ingestion.kaggle.make_affine`), pixels of about 0.8-0.95 mm, slices of 3 to 6 mm. A scan in a
scanner's geometry (the ``spacing_known`` meta entry of :mod:`pipeline.preprocessing.scan_chain`) is brought
to that grid by two invertible MONAI steps, whatever plane it was acquired in, and a prediction goes back
by their inverses (MONAI ``Invertd``), so the mask lands on exactly the grid the user gave:

1. ``Orientation`` to P, L, S: a permutation and flips of the axes, no resampling. A sagittal or coronal
   acquisition becomes axial slices; an oblique one keeps its small rotation (the networks trained with
   in-plane rotations).
2. ``Resize`` (with anti-aliasing when shrinking) to the plan's voxel size **in millimetres**: the in-plane
   pixel to :attr:`GridPlan.pixel_mm`, the slice spacing to :attr:`GridPlan.slice_mm` when it is thinner than
   :attr:`GridPlan.thin_below_mm` (else kept: thick axial slices are what the networks know). A thick
   sagittal series thus gets its through-plane axis interpolated to the in-plane pixel size instead of being
   squashed, and a 1 mm series' slices are averaged to the thickness the 2.5D networks saw.

The in-plane size is then whatever the field of view gives (the inferers pad to the network's stride).

A prepared Kaggle-like volume (P, L, S; its voxel size is a placeholder) is already in the model's geometry
and passes unchanged: there is one chain, and on the data set it is the identity.

The plan (:class:`GridPlan`) is saved in the model file with the run configuration (``grid_*`` options of
:class:`pipeline.transforms.TransformSettings`), as nnU-Net keeps its plans with the model.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import InvertibleTransform, MapTransform, Orientation, Resize
from monai.utils import TraceKeys

from pipeline.ingestion.kaggle import ORIENTATION

__all__ = ["MODEL_AXCODES", "GridPlan", "ToModelGridd", "model_grid_shape", "voxel_sizes"]

MODEL_AXCODES = "".join(ORIENTATION)
SPACING_KNOWN_KEY = "spacing_known"  # meta entry: the voxel size is a scanner's (not a placeholder)


@dataclass(frozen=True)
class GridPlan:
    """The model grid's rule, in millimetres.

    Args:
        pixel_mm: the in-plane pixel size the networks see.
        slice_mm: the slice spacing thin slices are resampled to.
        thin_below_mm: slices thinner than this are resampled to ``slice_mm``; thicker ones are kept.
    """

    pixel_mm: float = 0.9
    slice_mm: float = 5.0
    thin_below_mm: float = 3.0

    def __post_init__(self) -> None:
        for name in ("pixel_mm", "slice_mm"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if float(self.thin_below_mm) < 0:
            raise ValueError(f"thin_below_mm must be >= 0, got {self.thin_below_mm}")

    def target_spacing(self, spacing: Sequence[float]) -> tuple[float, float, float]:
        """The voxel size ``(rows, columns, slices)`` in mm a volume of ``spacing`` (in P, L, S) gets."""
        depth = float(spacing[2])
        return (
            float(self.pixel_mm),
            float(self.pixel_mm),
            float(self.slice_mm) if depth < float(self.thin_below_mm) else depth,
        )


def voxel_sizes(affine: Any) -> np.ndarray:
    """The voxel size along each array axis (the norms of the affine's first three columns), in mm."""
    matrix = np.asarray(affine, dtype=np.float64)[:3, :3]
    return np.linalg.norm(matrix, axis=0)


def model_grid_shape(
    shape: Sequence[int], spacing: Sequence[float], plan: GridPlan | None = None
) -> tuple[int, ...]:
    """The ``(H, W, D)`` a volume of ``shape`` and voxel size ``spacing`` (already in P, L, S) gets.

    Args:
        shape: spatial shape ``(H, W, D)``.
        spacing: its voxel size in mm.
        plan: the grid's rule (default :class:`GridPlan`).
    """
    plan = plan or GridPlan()
    target = plan.target_spacing(spacing)
    return tuple(
        max(2, int(round(int(n) * float(s) / t))) for n, s, t in zip(shape, spacing, target, strict=True)
    )


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
        pixel_mm, slice_mm, thin_below_mm: the plan (:class:`GridPlan`; ``None``: its default).
        mode: interpolation per key (``"trilinear"`` for images, ``"nearest"`` for labels).
        allow_missing_keys: as in MONAI.
    """

    def __init__(
        self,
        keys: KeysCollection,
        pixel_mm: float | None = None,
        slice_mm: float | None = None,
        thin_below_mm: float | None = None,
        mode: str | Sequence[str] = "trilinear",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        default = GridPlan()
        self.plan = GridPlan(
            pixel_mm=default.pixel_mm if pixel_mm is None else float(pixel_mm),
            slice_mm=default.slice_mm if slice_mm is None else float(slice_mm),
            thin_below_mm=default.thin_below_mm if thin_below_mm is None else float(thin_below_mm),
        )
        self.mode = [mode] * len(self.keys) if isinstance(mode, str) else list(mode)
        # one instance of each step: MONAI inverts a step only with the instance that applied it
        self.steps = {
            "orientation": Orientation(axcodes=MODEL_AXCODES, labels=None),
            "resize": Resize(spatial_size=-1),
        }

    def _one(self, image: MetaTensor, mode: str) -> MetaTensor:
        steps: list[str] = []
        out = self.steps["orientation"](image)
        steps.append("orientation")
        known = bool(getattr(out, "meta", {}).get(SPACING_KNOWN_KEY, False))
        if known:
            spacing = voxel_sizes(out.affine)
            target = model_grid_shape(out.shape[1:], spacing, self.plan)
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
