"""Training augmentations: MONAI's, with the project's settings, and those that make the Kaggle slices look
like what users bring (issue: model 0.3).

The LGG data set is one kind of image: skull on, 3 sequences, 256x256 slices of unknown pixel size,
intensities scaled to 0-255. Users bring skull-stripped BraTS-style volumes, FLAIR alone, other pixel
sizes and scanners. Three transforms here fill what MONAI lacks; the rest are MONAI's
(``RandZoomd``, ``RandBiasFieldd``, ``RandHistogramShiftd``, ``RandGaussianSmoothd``, ...):

- :func:`derive_brain_mask`: a brain mask of a head volume from the image alone (threshold, erosion
  that cuts the scalp off at the dark skull, largest 3D component, dilation, convex hull per slice),
  the label always inside. No trained skull-stripping tool is available offline.
- :class:`SkullStrippedViewd`: deterministic (before the cache), stores the skull-stripped copy of the
  image next to it, so both are normalised on their own brain voxels as the inference path does.
- :class:`RandSkullStripd`: picks the stripped copy with a probability, after the cache.
- :class:`RandSequenceDropoutd`: puts FLAIR in place of pre- and/or post-contrast T1, as the data set
  itself does for missing sequences and the own-scans path does for FLAIR-only studies.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    MapTransform,
    Rand2DElasticd,
    Rand3DElasticd,
    RandAdjustContrastd,
    RandBiasFieldd,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandHistogramShiftd,
    RandomizableTransform,
    RandRotate90d,
    RandRotated,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandZoomd,
    Transform,
)
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.morphology import convex_hull_image

from pipeline.ingestion.sequences import FLAIR_CHANNEL as FLAIR_CHANNEL  # their home; imported here too
from pipeline.ingestion.sequences import NUM_CHANNELS
from pipeline.ingestion.sequences import OTHER_CHANNELS as OTHER_CHANNELS

STRIPPED_SUFFIX = "_stripped"


def _disk(radius: int) -> np.ndarray:
    """In-plane disk structuring element of a ``(H, W, D)`` volume (one slice thick)."""
    yy, xx = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return ((yy**2 + xx**2) <= radius**2)[..., None]


def derive_brain_mask(
    image: np.ndarray | torch.Tensor, label: np.ndarray | torch.Tensor | None = None, radius: int = 7
) -> np.ndarray:
    """A brain mask of a channel-first head volume, from its intensities alone.

    Foreground is the channel mean above Otsu's threshold; an in-plane erosion by ``radius`` pixels
    detaches the scalp from the brain at the dark skull; the largest 3D component, dilated back and
    kept inside the foreground, is the brain core; its convex hull per slice adds the sulci and
    ventricles (dark in FLAIR). The label, when given, is always inside the mask. Imperfect at the skull
    base and the vertex, where the skull is thin (checked by eye on overlays of real patients).

    Args:
        image: ``(C, H, W, D)`` head volume (any intensity range, background near its minimum).
        label: optional ``(1, H, W, D)`` or ``(H, W, D)`` mask forced inside the brain.
        radius: erosion / dilation radius in pixels.

    Returns:
        a boolean ``(H, W, D)`` array.
    """
    data = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image, dtype=np.float32)
    mean = data.mean(axis=0)
    mean = mean - mean.min()
    inside = mean[mean > 0]
    if inside.size == 0 or float(inside.min()) == float(inside.max()):
        brain = mean > 0
    else:
        foreground = mean > threshold_otsu(inside)
        disk = _disk(radius)
        core = ndi.binary_erosion(foreground, disk)
        labels, count = ndi.label(core)
        if count == 0:
            brain = foreground
        else:
            sizes = ndi.sum(core, labels, range(1, count + 1))
            brain = ndi.binary_dilation(labels == int(np.argmax(sizes)) + 1, disk) & foreground
    if label is not None:
        lab = np.asarray(label.detach().cpu() if isinstance(label, torch.Tensor) else label)
        brain = brain | (lab.reshape(brain.shape) > 0)
    for k in range(brain.shape[-1]):
        if brain[..., k].any():
            brain[..., k] = convex_hull_image(brain[..., k])
    return brain


class SkullStrippedViewd(MapTransform):
    """Add a skull-stripped copy of the image under ``<image key>_stripped`` (zero outside the brain).

    Deterministic, so it runs before the cache; :class:`RandSkullStripd` chooses between the two later.
    The copy keeps the image's metadata; both are normalised afterwards on their own non-zero voxels.

    Args:
        keys: the image key.
        label_key: the label forced inside the brain mask (``None``: none).
        radius: see :func:`derive_brain_mask`.
    """

    def __init__(self, keys: KeysCollection, label_key: str | None = "label", radius: int = 7) -> None:
        super().__init__(keys)
        self.label_key, self.radius = label_key, radius

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        label = d.get(self.label_key) if self.label_key is not None else None
        for key in self.key_iterator(d):
            image = d[key]
            brain = torch.as_tensor(derive_brain_mask(image, label, self.radius))[None]
            tensor = image.as_tensor() if isinstance(image, MetaTensor) else torch.as_tensor(image)
            # outside the brain: the channel minimum, as a stripped scan has it
            outside = tensor.amin(dim=tuple(range(1, tensor.ndim)), keepdim=True)
            stripped = torch.where(brain, tensor, outside.expand_as(tensor))
            if isinstance(image, MetaTensor):
                stripped = MetaTensor(stripped, meta=dict(image.meta))
            d[f"{key}{STRIPPED_SUFFIX}"] = stripped
        return d


class RandSkullStripd(RandomizableTransform, MapTransform):
    """With probability ``prob``, replace the image by its skull-stripped copy; always drop the copy.

    Args:
        keys: the image key(s) that have a ``<key>_stripped`` copy (:class:`SkullStrippedViewd`).
        prob: probability of the stripped view.
    """

    def __init__(self, keys: KeysCollection, prob: float = 0.3) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        for key in self.key_iterator(d):
            stripped = d.pop(f"{key}{STRIPPED_SUFFIX}", None)
            if self._do_transform and stripped is not None:
                d[key] = stripped
        return d


class RandSequenceDropoutd(RandomizableTransform, MapTransform):
    """With probability ``prob``, put the FLAIR channel in place of pre-contrast T1, post-contrast T1 or
    both (each a third of the time): what the data set does for a missing sequence and what the own-scans
    path does for a FLAIR-only study. Works on ``(3, ...)`` images, before 2.5D slice stacking.

    Args:
        keys: image key(s).
        prob: probability of a dropout.
    """

    def __init__(self, keys: KeysCollection, prob: float = 0.1) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        self.dropped: tuple[int, ...] = ()

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        choices = ((OTHER_CHANNELS[0],), (OTHER_CHANNELS[1],), OTHER_CHANNELS)
        self.dropped = choices[int(self.R.randint(len(choices)))] if self._do_transform else ()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        if not self.dropped:
            return d
        for key in self.key_iterator(d):
            image = d[key]
            if image.shape[0] != NUM_CHANNELS:
                raise ValueError(
                    f"sequence dropout needs {NUM_CHANNELS} channels (pre, FLAIR, post), got {image.shape[0]}"
                )
            out = image.clone()
            for channel in self.dropped:
                out[channel] = image[FLAIR_CHANNEL]
            d[key] = out
        return d


def training_augmentations(s: Any, keys: Sequence[str], image_key: str = "image") -> list[Transform]:
    """Training augmentation of 2D slices (``spatial_dims=2``) or 3D patches, MONAI's transforms with the
    probabilities of the settings (:class:`pipeline.transforms.TransformSettings`).

    Args:
        s: the settings (``prob_*``, ``rotate_degrees``, ``zoom_range``, ``spatial_dims``).
        keys: the image and label keys (labels are interpolated with nearest neighbour).
        image_key: the image's key (intensity augmentations apply to it only).

    Returns:
        the transforms, in order.
    """
    img = image_key
    modes = ["bilinear" if k == img else "nearest" for k in keys]
    rad = np.deg2rad(s.rotate_degrees)
    xf: list[Transform] = [RandFlipd(keys, prob=s.prob_flip, spatial_axis=1)]  # left-right
    if s.prob_rotate90:
        xf.append(RandRotate90d(keys, prob=s.prob_rotate90, spatial_axes=(0, 1)))
    axis = {"range_x": rad} if s.spatial_dims == 2 else {"range_z": rad}  # in-plane either way
    xf.append(RandRotated(keys, **axis, prob=s.prob_rotate, mode=modes, padding_mode="zeros"))
    if s.prob_elastic:
        warp = {"prob": s.prob_elastic, "mode": modes, "padding_mode": "zeros"}
        if s.spatial_dims == 2:
            xf.append(Rand2DElasticd(keys, spacing=(32, 32), magnitude_range=(1, 2), **warp))
        else:
            xf.append(Rand3DElasticd(keys, sigma_range=(5, 7), magnitude_range=(50, 100), **warp))
    if s.prob_zoom:
        low, high = (float(z) for z in s.zoom_range)
        in_plane = (
            {"min_zoom": low, "max_zoom": high}
            if s.spatial_dims == 2
            else {"min_zoom": (low, low, 1.0), "max_zoom": (high, high, 1.0)}
        )
        xf.append(
            RandZoomd(keys, prob=s.prob_zoom, **in_plane, mode=modes, padding_mode="constant", keep_size=True)
        )
    xf += [
        RandScaleIntensityd(img, factors=0.1, prob=s.prob_scale_intensity),
        RandShiftIntensityd(img, offsets=0.1, prob=s.prob_shift_intensity),
        RandAdjustContrastd(img, gamma=(0.7, 1.5), prob=s.prob_gamma, retain_stats=True),
    ]
    optional = [
        (s.prob_bias_field, lambda p: RandBiasFieldd(img, degree=3, coeff_range=(0.0, 0.3), prob=p)),
        (s.prob_histogram_shift, lambda p: _histogram_shift(img, p)),
        (
            s.prob_smooth,
            lambda p: RandGaussianSmoothd(
                img, sigma_x=(0.5, 1.5), sigma_y=(0.5, 1.5), sigma_z=(0.0, 0.0), prob=p
            ),
        ),
        (s.prob_noise, lambda p: RandGaussianNoised(img, std=0.1, prob=p)),
    ]
    xf += [make(prob) for prob, make in optional if prob]
    return xf


def _histogram_shift(keys: KeysCollection, prob: float) -> RandHistogramShiftd:
    """MONAI's ``RandHistogramShiftd``, without its warning on each all-background patch.

    A patch of one intensity (background only) is returned unchanged, which is right; MONAI warns each
    time with the value in the text, so the filter never folds the repeats and a training log fills up.
    """
    warnings.filterwarnings("ignore", message="The image's intensity is a single value", category=UserWarning)
    return RandHistogramShiftd(keys, num_control_points=(5, 10), prob=prob)
