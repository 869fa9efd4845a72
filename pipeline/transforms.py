"""MONAI dictionary transforms for LGG volumes and the composed chains (floor 2).

One function, :func:`build_transforms`, composes every chain the project uses (training, validation,
inference); the CLI, the engines and the bundle all call it, so there is a single copy of each chain.

Layout: images are channel-first volumes ``(C, H, W, D)`` (C = 3: pre-contrast, FLAIR, post-contrast;
slice ``k`` along the last axis), labels ``(1, H, W, D)`` with values 0/1.

- :class:`BrainNormalized`: per channel, clip to the ``[p_low, p_high]`` percentiles of the brain
  voxels (any channel above a threshold), z-score on the brain voxels, non-brain set to 0.
- :class:`SliceContext` / :func:`gather_slices`: 2.5D input, the ``k`` neighbouring slices of every
  channel as extra channels (``C * (2k + 1)`` channels, channel-major; zeros beyond the volume).
- :class:`RandSliceByPosNegd`: tumour-weighted 2D slice sampling from a cached volume, with a
  configurable positive:negative ratio (positive = the slice holds tumour).
- :class:`RemoveSmallComponentsd`: post-processing, drop components under ``min_size`` voxels (3D, full
  connectivity; the largest components are kept by MONAI's ``KeepLargestConnectedComponentd``).
"""

from __future__ import annotations

import os
import warnings
import zlib
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    CastToTyped,
    Compose,
    DivisiblePadd,
    EnsureTyped,
    LoadImage,
    MapTransform,
    Rand2DElasticd,
    Rand3DElasticd,
    RandAdjustContrastd,
    RandBiasFieldd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandHistogramShiftd,
    Randomizable,
    RandRotate90d,
    RandRotated,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandZoomd,
    Resized,
    SpatialPadd,
    Transform,
)
from monai.transforms.traits import MultiSampleTrait
from scipy import ndimage

from pipeline.augmentations import STRIPPED_SUFFIX, RandSequenceDropoutd, RandSkullStripd, SkullStrippedViewd
from pipeline.ingestion.kaggle import CHANNEL_NAMES, read_patient_folder
from pipeline.ingestion.model_grid import ToModelGridd
from pipeline.ingestion.scan_loader import LoadScansd
from pipeline.ingestion.scans import SCAN_KIND, parse_reference
from pipeline.ingestion.volume_checks import (
    check_image_volume,
    check_nifti_header,
    check_regular_file,
    unreadable_data,
)

IMAGE_KEY = "image"
DEFAULT_PATCH_SIZE = (128, 128, 16)  # 3D training patch and sliding window (H, W, D): thick slices
LABEL_KEY = "label"


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
            (:mod:`pipeline.augmentations`; BraTS-style input).
        prob_sequence_dropout: probability of FLAIR in place of pre- and/or post-contrast T1.
        prob_zoom, zoom_range: probability and in-plane scale range (the pixel size differs per patient).
        prob_bias_field, prob_histogram_shift, prob_smooth, prob_noise: probabilities of MONAI's bias
            field, histogram shift (contrast), Gaussian smoothing (resolution) and Gaussian noise.
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
    crop_size: tuple[int, int] | None = None
    prob_edge_negative: float = 0.0
    edge_slices: int = 3

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> TransformSettings:
        """Pick the fields of this class from a larger configuration mapping."""
        names = set(asdict(cls()))
        return cls(**{k: v for k, v in config.items() if k in names})


class LoadLGGPatient(Transform):
    """Load a raw Kaggle patient folder as channel-first 3D ``MetaTensor`` image and label.

    It reads through :func:`pipeline.ingestion.kaggle.read_patient_folder`, the same validated reader as
    ``lggseg prepare``, so the result equals ``LoadImage(ensure_channel_first=True)`` of the prepared NIfTI
    files: image ``(3, H, W, D)``, label ``(1, H, W, D)`` (values 0/1), the same affine and dtype.

    Args:
        spacing: voxel size in mm (row, column, slice) for the affine.
        dtype: data type of both outputs (``LoadImage``'s default, float32).
    """

    def __init__(self, spacing: Sequence[float] = (1.0, 1.0, 1.0), dtype: Any = np.float32) -> None:
        self.spacing = tuple(float(s) for s in spacing)
        self.dtype = dtype

    def __call__(self, folder: str | os.PathLike) -> tuple[MetaTensor, MetaTensor]:
        """Return ``(image, label)`` of the patient folder; raises ``LGGDataError`` on bad input."""
        volume = read_patient_folder(folder, self.spacing)
        affine = torch.as_tensor(volume.affine, dtype=torch.float64)
        outputs = []
        for array in (volume.image, volume.label):
            meta = {
                "filename_or_obj": str(folder),
                "patient": volume.patient_id,
                "institution": volume.institution,
                "original_channel_dim": 0,
                "spatial_shape": np.asarray(array.shape[1:]),
                "original_affine": volume.affine.copy(),
                "space": "RAS",
            }
            tensor = torch.from_numpy(array.astype(self.dtype))
            outputs.append(MetaTensor(tensor, affine=affine.clone(), meta=meta))
        return outputs[0], outputs[1]


class LoadLGGPatientd(MapTransform):
    """Dictionary wrapper of :class:`LoadLGGPatient`: train straight from raw Kaggle patient folders.

    The first key holds the patient folder and receives the image; the second key (if any) receives the
    label read from the same folder, whatever it held before (e.g. nothing, or the folder again).

    Example::

        LoadLGGPatientd(keys=("image", "label"))({"image": "kaggle_3m/TCGA_CS_4941_19960909"})

    Args:
        keys: ``(image_key, label_key)`` or just ``image_key``.
        spacing: voxel size in mm (row, column, slice).
        dtype: data type of the outputs.
        allow_missing_keys: don't raise when the label key is absent from ``keys``' data.
    """

    def __init__(
        self,
        keys: KeysCollection = (IMAGE_KEY, LABEL_KEY),
        spacing: Sequence[float] = (1.0, 1.0, 1.0),
        dtype: Any = np.float32,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) > 2:
            raise ValueError(f"LoadLGGPatientd takes an image key and an optional label key, got {self.keys}")
        self.loader = LoadLGGPatient(spacing, dtype)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image_key = self.keys[0]
        image, label = self.loader(d[image_key])
        d[image_key] = image
        if len(self.keys) == 2:
            d[self.keys[1]] = label
        return d


class LoadVolumed(MapTransform):
    """Load an LGG case: a NIfTI image/label pair, or a raw Kaggle patient folder given as ``image``.

    A NIfTI file goes through ``LoadImage(ensure_channel_first=True)``; a folder goes through
    ``LoadLGGPatientd`` (the raw-folder loader). Both give ``image (3, H, W, D)``, ``label (1, H, W, D)``.
    Each input is checked here, a problem failing the case in one line that names the file
    (:mod:`pipeline.ingestion.volume_checks`): not a regular file, an unreadable or truncated NIfTI file, an
    image whose channels are not the model's three (:data:`pipeline.ingestion.kaggle.CHANNEL_NAMES`), fewer
    than 2 slices, NaN or Inf voxels; a missing file is a ``FileNotFoundError``.

    Args:
        keys: image and (optional) label keys.
        allow_missing_keys: don't raise when the label is missing (inference).
    """

    def __init__(
        self, keys: KeysCollection = (IMAGE_KEY, LABEL_KEY), allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.nifti = LoadImage(reader="NibabelReader", ensure_channel_first=True, image_only=True)
        self.folder = LoadLGGPatientd(self.keys)
        self.scans = LoadScansd(IMAGE_KEY)

    def _load_nifti(self, key: Hashable, path: str | os.PathLike) -> Any:
        if not os.path.exists(path):
            raise FileNotFoundError(f"{key} file not found: {path}")
        check_regular_file(path, f"{key} file")  # a named pipe would block the reader forever
        check_nifti_header(path)
        try:
            return self.nifti(path)
        except (EOFError, OSError, ValueError, RuntimeError, zlib.error) as error:
            raise unreadable_data(path, error) from None  # the one line says it all (innermost_error)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if d.get("kind") == SCAN_KIND:  # a user's scans: FLAIR [+ T1, T1c], registered onto the FLAIR
            for sequence in ("flair", "t1", "t1c"):  # a named pipe given as a file would block the reader
                path, uid = parse_reference(d[sequence]) if d.get(sequence) else (None, None)
                if path is not None and uid is None and not path.is_dir():
                    check_regular_file(path, f"{sequence.upper()} file")
            return self.scans(d)
        image = d.get(IMAGE_KEY)
        if isinstance(image, (str, os.PathLike)) and os.path.isdir(image):
            d = self.folder(d)
        else:
            for key in self.key_iterator(d):
                if isinstance(d[key], (str, os.PathLike)):
                    d[key] = self._load_nifti(key, d[key])
        if isinstance(image, (str, os.PathLike)) and IMAGE_KEY in self.keys:
            check_image_volume(d[IMAGE_KEY], image, CHANNEL_NAMES)
        return d


def _augmentations(s: TransformSettings, keys: Sequence[str]) -> list[Transform]:
    """Training augmentation of 2D slices (``spatial_dims=2``) or 3D patches."""
    img = IMAGE_KEY
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
            ToModelGridd(keys, mode=modes),  # the model's grid; Invertd maps predictions back
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
        xf += _augmentations(s, keys)
    xf.append(EnsureTyped(keys, dtype=torch.float32, track_meta=False))
    return Compose(xf)
