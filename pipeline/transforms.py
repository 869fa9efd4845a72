"""The chains of MONAI dictionary transforms, composed in one place.

One function, :func:`build_transforms`, composes every chain the project uses (training, validation,
inference); the CLI, the engines, the bundle and the MONAI Label app all call it, so there is a single copy
of each chain. The transforms themselves live in :mod:`pipeline.preprocessing` (loading by input form, the
scan chain, the model grid, registration, normalisation, augmentations, components); the 2.5D slice
sampling is here, beside the settings that drive it.

Layout: images are channel-first volumes ``(C, H, W, D)`` (C = 3: pre-contrast, FLAIR, post-contrast;
slice ``k`` along the last axis), labels ``(1, H, W, D)`` with values 0/1.

The inference chain, for any input form (:mod:`pipeline.ingestion.forms`):

1. :class:`~pipeline.preprocessing.loading.LoadVolumed`: the loader of the case's form (a user's scans: the
   scan chain of :mod:`pipeline.preprocessing.scan_chain`, read -> stand-in -> align -> zero background ->
   stack);
2. :class:`~pipeline.preprocessing.model_grid.ToModelGridd`: the model's grid in millimetres (invertible);
3. :class:`~pipeline.preprocessing.intensity.BrainNormalized`: percentile clip and z-score on the brain.

- :class:`SliceContext` / :func:`gather_slices`: 2.5D input, the ``k`` neighbouring slices of every
  channel as extra channels (``C * (2k + 1)`` channels, channel-major; zeros beyond the volume).
- :class:`RandSliceByPosNegd`: tumour-weighted 2D slice sampling from a cached volume, with a
  configurable positive:negative ratio (positive = the slice holds tumour).
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import (
    CastToTyped,
    Compose,
    DivisiblePadd,
    EnsureTyped,
    MapTransform,
    RandCropByPosNegLabeld,
    Randomizable,
    Resized,
    SpatialPadd,
    Transform,
)
from monai.transforms.traits import MultiSampleTrait

from pipeline.preprocessing.augmentations import (
    STRIPPED_SUFFIX,
    RandSequenceDropoutd,
    RandSkullStripd,
    SkullStrippedViewd,
    training_augmentations,
)
from pipeline.preprocessing.components import RemoveSmallComponents, RemoveSmallComponentsd
from pipeline.preprocessing.intensity import BrainNormalize, BrainNormalized
from pipeline.preprocessing.loading import IMAGE_KEY, LABEL_KEY, LoadLGGPatient, LoadLGGPatientd, LoadVolumed
from pipeline.preprocessing.model_grid import GridPlan, ToModelGridd

__all__ = [
    "DEFAULT_PATCH_SIZE",
    "IMAGE_KEY",
    "LABEL_KEY",
    "BrainNormalize",
    "BrainNormalized",
    "LoadLGGPatient",
    "LoadLGGPatientd",
    "LoadVolumed",
    "RandSliceByPosNegd",
    "RemoveSmallComponents",
    "RemoveSmallComponentsd",
    "SliceContext",
    "TransformSettings",
    "build_transforms",
    "gather_slices",
]

DEFAULT_PATCH_SIZE = (128, 128, 16)  # 3D training patch and sliding window (H, W, D): thick slices


def gather_slices(volume: torch.Tensor, indices: torch.Tensor, context: int = 0) -> torch.Tensor:
    """Slices of a ``(C, H, W, D)`` volume with ``context`` neighbours on each side as extra channels.

    Args:
        volume: channel-first volume ``(C, H, W, D)``.
        indices: slice indices along ``D`` (1D integer tensor of length ``n``).
        context: number of neighbouring slices on each side (0: plain 2D).

    Returns:
        ``(C * (2 * context + 1), H, W, n)``; channel ``c * (2k + 1) + j`` holds channel ``c`` of slice
        ``index + j - k``; slices beyond the volume are zeros.
    """
    volume = torch.as_tensor(volume)
    depth = volume.shape[-1]
    offsets = torch.arange(-context, context + 1)
    idx = torch.as_tensor(indices, dtype=torch.long)[None, :] + offsets[:, None]  # (2k+1, n)
    valid = (idx >= 0) & (idx < depth)
    out = volume[..., idx.clamp(0, depth - 1)]  # (C, H, W, 2k+1, n)
    if not bool(valid.all()):
        out = out * valid.to(out.dtype)
    c, h, w = volume.shape[:3]
    return out.permute(0, 3, 1, 2, 4).reshape(c * (2 * context + 1), h, w, idx.shape[1])


class SliceContext(Transform):
    """2.5D input for a whole volume: neighbouring slices of every channel as extra channels.

    Args:
        context: number of neighbouring slices on each side (0 leaves the volume unchanged).
    """

    def __init__(self, context: int = 0) -> None:
        if context < 0:
            raise ValueError(f"context must be >= 0, got {context}")
        self.context = context

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        """Map ``(C, H, W, D)`` (or batched ``(B, C, H, W, D)``) to ``C * (2k + 1)`` channels."""
        if self.context == 0:
            return img
        depth = img.shape[-1]
        if img.ndim == 5:
            return torch.stack([self(v) for v in img])
        return gather_slices(img, torch.arange(depth), self.context)


class RandSliceByPosNegd(Randomizable, MapTransform, MultiSampleTrait):
    """Sample 2D (or 2.5D) slices from a volume, weighted towards tumour-bearing slices.

    Each of the ``num_samples`` slices is positive (holds tumour) with probability ``pos / (pos + neg)``
    and negative (tumour-free) otherwise; when a volume has no slice of the drawn kind, any slice of the
    other kind is taken. A fraction ``prob_edge_negative`` of the negative draws comes from the outermost
    ``edge_slices`` slices at each end of the volume (vertex, skull base: hard negatives that uniform
    sampling rarely shows; any negative slice when none lies there). The image becomes
    ``(C * (2k + 1), H, W)`` (see :func:`gather_slices`), the label the centre slice ``(1, H, W)``; other keys
    are copied, and ``slice_index`` records the slice.

    With ``crop_size`` each sampled slice is then cropped to ``(h, w)`` (padded first where smaller) by
    MONAI's ``RandCropByPosNegLabeld``: centred on a tumour pixel of a positive slice, on a brain pixel
    (any channel non-zero after :class:`BrainNormalize`) of a negative one, shifted to stay inside the
    slice. The augmentations that follow then run on the crop; inference still sees whole slices.

    Args:
        keys: image keys to slice with context (the label key is sliced without context).
        label_key: key of the ``(1, H, W, D)`` label.
        num_samples: number of slices per volume.
        pos: weight of positive slices.
        neg: weight of negative slices.
        context: neighbouring slices on each side as extra channels (2.5D).
        dtype: dtype of the sampled image and label (the cached volume may be stored as float16).
        crop_size: in-plane crop ``(h, w)`` of every sample (``None``: whole slices).
        prob_edge_negative: probability that a negative draw is taken from the edge slices.
        edge_slices: number of slices at each end of the volume that count as edge slices.
    """

    # where each sample hands the crop its candidate centres (MONAI pops them)
    FG_INDICES_KEY, BG_INDICES_KEY = "crop_fg_indices", "crop_bg_indices"

    def __init__(
        self,
        keys: KeysCollection = IMAGE_KEY,
        label_key: str = LABEL_KEY,
        num_samples: int = 4,
        pos: float = 1.0,
        neg: float = 1.0,
        context: int = 0,
        dtype: torch.dtype = torch.float32,
        crop_size: Sequence[int] | None = None,
        prob_edge_negative: float = 0.0,
        edge_slices: int = 3,
    ) -> None:
        super().__init__(keys)
        if pos < 0 or neg < 0 or pos + neg == 0:
            raise ValueError(f"pos and neg must be >= 0 and not both 0, got pos={pos}, neg={neg}")
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if not 0.0 <= prob_edge_negative <= 1.0:
            raise ValueError(f"prob_edge_negative must be in [0, 1], got {prob_edge_negative}")
        if edge_slices < 1:
            raise ValueError(f"edge_slices must be >= 1, got {edge_slices}")
        if crop_size is not None and (len(crop_size) != 2 or min(crop_size) < 1):
            raise ValueError(f"crop_size must be two positive sizes (h, w), got {tuple(crop_size)}")
        self.label_key, self.num_samples, self.context, self.dtype = label_key, num_samples, context, dtype
        self.pos_ratio = pos / (pos + neg)
        self.prob_edge_negative, self.edge_slices = prob_edge_negative, edge_slices
        self._indices = torch.zeros(0, dtype=torch.long)
        self.crop_size = None if crop_size is None else tuple(int(c) for c in crop_size)
        self.cropper: RandCropByPosNegLabeld | None = None
        if self.crop_size is not None:
            crop_keys = [*self.keys, label_key]
            self.pad = SpatialPadd(crop_keys, spatial_size=self.crop_size)
            self.cropper = RandCropByPosNegLabeld(
                crop_keys,
                label_key,
                spatial_size=self.crop_size,
                pos=1.0,  # a positive slice: centred on tumour (the slice draw set the pos:neg ratio)
                neg=0.0,  # a negative slice has no tumour pixel: MONAI takes a background centre
                num_samples=1,
                fg_indices_key=self.FG_INDICES_KEY,
                bg_indices_key=self.BG_INDICES_KEY,
            )
            self.cropper.set_random_state(state=self.R)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        """Seed the slice draws; the crop draws share the same generator."""
        super().set_random_state(seed, state)
        if self.cropper is not None:
            self.cropper.set_random_state(state=self.R)
        return self

    def randomize(self, positive: torch.Tensor) -> None:
        """Draw the slice indices given the boolean tumour flag of every slice."""
        positive = positive.bool()
        pos_idx = torch.nonzero(positive).flatten()
        neg_idx = torch.nonzero(~positive).flatten()
        edge_idx = neg_idx
        if self.prob_edge_negative > 0:
            depth = len(positive)
            edge_idx = neg_idx[(neg_idx < self.edge_slices) | (neg_idx >= depth - self.edge_slices)]
        chosen = []
        for _ in range(self.num_samples):
            want_pos = self.R.rand() < self.pos_ratio
            pool = pos_idx if (want_pos and len(pos_idx)) or not len(neg_idx) else neg_idx
            # an extra draw only when the option is on: the default draws stay those of earlier versions
            if pool is neg_idx and self.prob_edge_negative > 0 and self.R.rand() < self.prob_edge_negative:
                pool = edge_idx if len(edge_idx) else neg_idx
            chosen.append(int(pool[self.R.randint(len(pool))]))
        self._indices = torch.tensor(chosen, dtype=torch.long)

    def _crop(self, sample: dict[Hashable, Any]) -> dict[Hashable, Any]:
        """Crop one sampled slice (see the class docstring)."""
        assert self.cropper is not None
        sample = self.pad(sample)
        label = torch.as_tensor(sample[self.label_key])[0] > 0
        brain = (torch.as_tensor(sample[self.first_key(sample)]) != 0).any(dim=0)
        outside = ~label & brain if bool((~label & brain).any()) else ~label
        sample[self.FG_INDICES_KEY] = torch.nonzero(label.flatten()).flatten()
        sample[self.BG_INDICES_KEY] = torch.nonzero(outside.flatten()).flatten()
        with warnings.catch_warnings():  # a negative slice has no foreground: MONAI says so each time
            warnings.filterwarnings("ignore", message="Num foregrounds", category=UserWarning)
            return self.cropper(sample)[0]

    def __call__(self, data: Mapping[Hashable, Any]) -> list[dict[Hashable, Any]]:
        d = dict(data)
        label = torch.as_tensor(d[self.label_key])
        self.randomize(label.reshape(-1, label.shape[-1]).bool().any(dim=0))
        sliced: dict[Hashable, torch.Tensor] = {
            self.label_key: torch.as_tensor(label[..., self._indices]).to(self.dtype)
        }
        for key in self.key_iterator(d):
            sliced[key] = gather_slices(d[key], self._indices, self.context).to(self.dtype)
        samples = []
        for i, z in enumerate(self._indices.tolist()):
            sample = {k: v for k, v in d.items() if k not in sliced}
            sample.update({k: v[..., i].contiguous() for k, v in sliced.items()})
            sample["slice_index"] = z
            samples.append(sample if self.cropper is None else self._crop(sample))
        return samples


@dataclass
class TransformSettings:
    """Everything :func:`build_transforms` needs; the engines fill it from the run configuration.

    Args:
        spatial_dims: 2 (slices, optionally 2.5D) or 3 (patches).
        context: neighbouring slices on each side as extra channels (2D only).
        input_size: in-plane training size ``(H, W)``; volumes are resized to it for training
            (``None``: native size). Evaluation always runs on the native volume.
        patch_size: 3D training patch ``(H, W, D)``.
        num_samples: slices (or patches) drawn per volume per visit.
        pos, neg: positive:negative sampling ratio.
        divisible: pad training samples in-plane to a multiple of this (the network's total stride).
        clip_lower, clip_upper, brain_threshold: see :class:`BrainNormalize`.
        cache_float16: store cached normalised volumes as float16 (halves the cache's memory).
        augment: apply training augmentation.
        prob_flip, prob_rotate90, prob_rotate, rotate_degrees, prob_elastic, prob_scale_intensity,
            prob_shift_intensity, prob_gamma: probabilities and range of the augmentations.
        prob_skull_strip: probability of training on the skull-stripped view of the volume
            (:mod:`pipeline.preprocessing.augmentations`; BraTS-style input).
        prob_sequence_dropout: probability of FLAIR in place of pre- and/or post-contrast T1.
        prob_zoom, zoom_range: probability and in-plane scale range (the pixel size differs per patient).
        prob_bias_field, prob_histogram_shift, prob_smooth, prob_noise: probabilities of MONAI's bias
            field, histogram shift (contrast), Gaussian smoothing (resolution) and Gaussian noise.
        grid_pixel_mm, grid_slice_mm, grid_thin_below_mm: the model grid's rule for scans in a scanner's
            geometry (:class:`pipeline.preprocessing.model_grid.GridPlan`), saved in the model file.
        crop_size: 2D training: crop every sampled slice to ``(h, w)`` before the augmentations, centred on
            tumour in a positive slice (``None``: whole slices; inference always runs on whole slices).
        prob_edge_negative, edge_slices: 2D training: the fraction of the negative slice draws taken from
            the outermost ``edge_slices`` slices at each end of the volume (see :class:`RandSliceByPosNegd`).
    """

    spatial_dims: int = 2
    context: int = 0
    input_size: tuple[int, int] | None = None
    patch_size: tuple[int, int, int] = DEFAULT_PATCH_SIZE
    num_samples: int = 8
    pos: float = 1.0
    neg: float = 1.0
    divisible: int = 1
    clip_lower: float = 1.0
    clip_upper: float = 99.0
    brain_threshold: float = 0.0
    cache_float16: bool = True
    augment: bool = True
    prob_flip: float = 0.5
    prob_rotate90: float = 0.0
    prob_rotate: float = 0.3
    rotate_degrees: float = 15.0
    prob_elastic: float = 0.1
    prob_scale_intensity: float = 0.3
    prob_shift_intensity: float = 0.3
    prob_gamma: float = 0.2
    prob_skull_strip: float = 0.0
    prob_sequence_dropout: float = 0.0
    prob_zoom: float = 0.0
    zoom_range: tuple[float, float] = (0.75, 1.3)
    prob_bias_field: float = 0.0
    prob_histogram_shift: float = 0.0
    prob_smooth: float = 0.0
    prob_noise: float = 0.0
    grid_pixel_mm: float = GridPlan.pixel_mm
    grid_slice_mm: float = GridPlan.slice_mm
    grid_thin_below_mm: float = GridPlan.thin_below_mm
    crop_size: tuple[int, int] | None = None
    prob_edge_negative: float = 0.0
    edge_slices: int = 3

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> TransformSettings:
        """Pick the fields of this class from a larger configuration mapping."""
        names = set(asdict(cls()))
        return cls(**{k: v for k, v in config.items() if k in names})


def build_transforms(mode: str, settings: TransformSettings | Mapping[str, Any] | None = None) -> Compose:
    """Compose the transform chain of one job.

    Args:
        mode: ``"train"`` (load, resize to ``input_size``, normalise, [cache boundary], sample slices or
            patches, augment), ``"val"`` (load and normalise the whole native volume with its label) or
            ``"infer"`` (as ``"val"``, without a label).
        settings: :class:`TransformSettings` or a mapping holding its fields.

    Returns:
        a ``Compose``; in ``"train"`` mode everything before the first random transform is
        deterministic, so ``CacheDataset`` / ``PersistentDataset`` cache the normalised volumes.
    """
    if mode not in {"train", "val", "infer"}:
        raise ValueError(f"mode must be 'train', 'val' or 'infer', got {mode!r}")
    s = settings if isinstance(settings, TransformSettings) else TransformSettings.from_dict(settings or {})
    if s.spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {s.spatial_dims}")
    keys = [IMAGE_KEY] if mode == "infer" else [IMAGE_KEY, LABEL_KEY]
    xf: list[Transform] = [
        LoadVolumed(keys),
        EnsureTyped(IMAGE_KEY, dtype=torch.float32),
    ]
    if mode != "train":
        modes = ["trilinear" if k == IMAGE_KEY else "nearest" for k in keys]
        xf += [
            ToModelGridd(  # the model's grid in millimetres; Invertd maps predictions back
                keys, s.grid_pixel_mm, s.grid_slice_mm, s.grid_thin_below_mm, mode=modes
            ),
            BrainNormalized(IMAGE_KEY, s.clip_lower, s.clip_upper, s.brain_threshold),
        ]
        if mode == "val":
            xf.append(EnsureTyped(LABEL_KEY, dtype=torch.uint8))
        return Compose(xf)
    if s.input_size is not None:
        size = (*tuple(s.input_size), -1)
        xf.append(Resized(keys, spatial_size=size, mode=("area", "nearest")))
    cache_dtype = torch.float16 if s.cache_float16 else torch.float32
    strip = s.augment and s.prob_skull_strip > 0
    if strip:  # both views cached, each normalised on its own brain voxels as inference does
        xf.append(SkullStrippedViewd(IMAGE_KEY, LABEL_KEY))
    images = [IMAGE_KEY, IMAGE_KEY + STRIPPED_SUFFIX] if strip else [IMAGE_KEY]
    xf += [
        BrainNormalized(images, s.clip_lower, s.clip_upper, s.brain_threshold, dtype=cache_dtype),
        EnsureTyped(LABEL_KEY, dtype=torch.uint8),
    ]
    if strip:  # the first random transform: the cache boundary
        xf.append(RandSkullStripd(IMAGE_KEY, prob=s.prob_skull_strip))
    if s.augment and s.prob_sequence_dropout > 0:
        xf.append(RandSequenceDropoutd(IMAGE_KEY, prob=s.prob_sequence_dropout))
    if s.spatial_dims == 2:
        xf.append(
            RandSliceByPosNegd(
                IMAGE_KEY,
                LABEL_KEY,
                s.num_samples,
                s.pos,
                s.neg,
                s.context,
                crop_size=s.crop_size,
                prob_edge_negative=s.prob_edge_negative,
                edge_slices=s.edge_slices,
            )
        )
        if s.divisible > 1:
            xf.append(DivisiblePadd(keys, k=s.divisible))
    else:
        patch = tuple(s.patch_size)
        xf += [
            SpatialPadd(keys, spatial_size=patch),
            RandCropByPosNegLabeld(
                keys, LABEL_KEY, spatial_size=patch, pos=s.pos, neg=s.neg, num_samples=s.num_samples
            ),
            CastToTyped(keys, dtype=torch.float32),
        ]
    if s.augment:
        xf += training_augmentations(s, keys, IMAGE_KEY)
    xf.append(EnsureTyped(keys, dtype=torch.float32, track_meta=False))
    return Compose(xf)
