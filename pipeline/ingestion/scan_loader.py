"""A user's scans as the model's input: :class:`LoadScansd` (floor 1).

A scan case (:func:`pipeline.ingestion.scans.find_scan_case`: a FLAIR and, when there, a T1 and a T1
post-contrast, NIfTI files or DICOM series) becomes one channel-first ``MetaTensor`` on the FLAIR's own
voxel grid, in the data set's channel order (pre-contrast T1, FLAIR, post-contrast T1):

- the FLAIR is read as it is (:func:`pipeline.ingestion.scans.read_scan`: any type and range, NaN or Inf
  refused in one line);
- each other sequence is resampled onto the FLAIR's grid in physical space, rigidly registered when that
  improves the match (:func:`pipeline.ingestion.registration.align_to_flair`), and the result is logged;
- a missing T1 or T1 post-contrast takes the data set's own stand-in, the FLAIR in its place (the Kaggle
  data set does the same for patients without that sequence), said in the log;
- intensities of any range and type are shifted so that each channel's background is 0 and the head (or
  the brain of a skull-stripped scan) above it (:func:`zero_background`), as in the data set's slices; the
  chain's normalisation (percentile clip and z-score on the voxels above 0) ignores scale and offset.

The affine is the FLAIR's (RAS, as MONAI's readers give it), so
:class:`pipeline.ingestion.model_grid.ToModelGridd` and MONAI's ``Invertd`` map a prediction back onto exactly
the grid the user gave.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from pipeline.ingestion.registration import align_to_flair
from pipeline.ingestion.scans import read_scan

logger = logging.getLogger(__name__)

CHANNEL_SEQUENCES = ("t1", "flair", "t1c")  # the data set's channels: pre-contrast, FLAIR, post-contrast


def ras_affine(image: sitk.Image) -> np.ndarray:
    """The voxel-to-world affine of a SimpleITK image in RAS (MONAI's and nibabel's convention).

    ITK's direction, spacing and origin are in LPS; voxel ``(i, j, k)`` is ``array[k, j, i]`` of
    ``sitk.GetArrayFromImage``.
    """
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction * np.asarray(image.GetSpacing(), dtype=np.float64)
    affine[:3, 3] = image.GetOrigin()
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine


def voxels_xyz(image: sitk.Image) -> np.ndarray:
    """The image's voxels as a float32 ``(i, j, k)`` array."""
    return np.ascontiguousarray(sitk.GetArrayFromImage(image).transpose(2, 1, 0), dtype=np.float32)


BACKGROUND_FRACTION = 0.1  # a channel with at least this fraction of exact zeros has 0 as its background


def zero_background(channel: np.ndarray, background_fraction: float = BACKGROUND_FRACTION) -> np.ndarray:
    """One channel's intensities shifted so that its background is 0 and everything else above it.

    A skull-stripped (BraTS-style) or zero-padded scan has an exact-zero background, and its brain may hold
    values below 0 (interpolation ringing, z-scored data): when at least ``background_fraction`` of the
    voxels are exactly 0, they stay the background and the other voxels are shifted to start at 1. Any
    other scan (scanner units, air with noise) is shifted so that its minimum is 0. A shift of the whole
    channel alone would lift a stripped scan's background above 0, and the normalisation would then count
    it as brain.

    Args:
        channel: a 3D array of one sequence (any type and range).
        background_fraction: the fraction of exact zeros that marks a zero background.

    Returns:
        a float32 array of the same shape, background 0.
    """
    data = np.asarray(channel, dtype=np.float32)
    zeros = data == 0
    if zeros.mean() < background_fraction or zeros.all():
        return data - data.min()
    out = np.zeros_like(data)
    inside = data[~zeros]
    out[~zeros] = inside - inside.min() + 1.0
    return out


class LoadScansd(MapTransform):
    """Load a scan case's sequences as one 3-channel image on the FLAIR's grid (module docstring).

    Args:
        keys: the output key(s) (``"image"``).
        register: rigidly register the other sequences onto the FLAIR when that improves the match
            (``False``: the scanner geometry as it is).
        allow_missing_keys: as in MONAI.
    """

    def __init__(
        self, keys: KeysCollection = "image", register: bool = True, allow_missing_keys: bool = False
    ):
        super().__init__(keys, allow_missing_keys)
        self.register = register

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        case = str(d.get("case") or d["flair"])
        flair = read_scan(d["flair"])
        channels: dict[str, np.ndarray] = {"flair": voxels_xyz(flair)}
        for sequence in ("t1", "t1c"):
            reference = d.get(sequence)
            if not reference:
                channels[sequence] = channels["flair"]
                logger.info(
                    "%s: no %s; the FLAIR stands in for it (as in the data set)", case, sequence.upper()
                )
                continue
            moving = read_scan(reference)
            aligned, alignment = align_to_flair(flair, moving, sequence, self.register, where=str(reference))
            channels[sequence] = voxels_xyz(aligned)
            logger.info("%s: %s", case, alignment.describe())
        array = np.stack([channels[s] for s in CHANNEL_SEQUENCES])
        array = np.stack([zero_background(channel) for channel in array])
        affine = torch.as_tensor(ras_affine(flair), dtype=torch.float64)
        meta = {
            "affine": affine,
            "original_affine": affine.clone(),
            "spatial_shape": np.asarray(array.shape[1:]),
            "original_channel_dim": 0,
            "space": "RAS",
            "filename_or_obj": case,  # outputs are named after the case
            "spacing_known": True,  # a scanner's voxel size (the Kaggle volumes' is a placeholder)
        }
        for key in self.key_iterator(d):
            d[key] = MetaTensor(torch.from_numpy(array), affine=affine, meta=meta)
        return {k: v for k, v in d.items() if v is not None}  # a missing sequence: nothing to collate
