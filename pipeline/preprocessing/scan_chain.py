"""A user's scans as the model's input: the scan chain, one MONAI dictionary step per job.

A scan case (:func:`pipeline.ingestion.scan_cases.find_scan_case`: a FLAIR and, when there, a T1 and a T1
post-contrast, NIfTI files or DICOM series) becomes one channel-first ``MetaTensor`` on the FLAIR's own voxel
grid, in the data set's channel order (:data:`pipeline.ingestion.sequences.SEQUENCES`: pre-contrast T1, FLAIR,
post-contrast T1), through these steps (:func:`scan_chain`, also :class:`LoadScansd`):

1. :class:`ReadSequencesd`: each sequence read as it is
   (:func:`pipeline.ingestion.scan_reading.read_scan_volume`: any type and range, nibabel's geometry for
   NIfTI, DICOM positions required, a gantry tilt resampled, NaN or Inf and constant images refused in one
   line), as a ``(1, H, W, D)`` MetaTensor with its RAS affine;
2. :class:`StandInFlaird`: a missing T1 or T1 post-contrast takes the data set's own stand-in, the FLAIR in
   its place (the Kaggle data set does the same for patients without that sequence), said in the log;
3. :class:`AlignToFlaird`: each other sequence onto the FLAIR's grid in physical space, through a registration
   backend (:class:`pipeline.preprocessing.registration.Registrator`: rigid by default, kept when it
   improves the match) or MONAI ``ResampleToMatch`` when the scanner geometry is kept; refused when the
   volumes do not overlap in space;
4. :class:`ZeroBackgroundd`: intensities of any range and type shifted so that each channel's background is 0
   and the head (or the brain of a skull-stripped scan) above it, as in the data set's slices (the chain's
   normalisation then ignores scale and offset);
5. MONAI ``ConcatItemsd`` stacks the channels into ``image``, and :class:`ScanMetad` gives it the FLAIR's
   metadata: its affine (so :class:`pipeline.preprocessing.model_grid.ToModelGridd` and MONAI ``Invertd``
   map a prediction back onto exactly the grid the user gave) and what was read, carried forward to the
   writer (:data:`SCAN_META`: the FLAIR's reference, its NIfTI header or DICOM files, the alignment report,
   the notes, the stand-ins), so nothing reads the FLAIR a second time.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import Compose, ConcatItemsd, DeleteItemsd, MapTransform, ResampleToMatch

from pipeline.ingestion.dicom_files import parse_reference
from pipeline.ingestion.errors import LGGDataError
from pipeline.ingestion.scan_reading import image_from_ras, ras_affine, read_scan_volume, voxels_xyz
from pipeline.ingestion.sequences import OTHER_SEQUENCES, SEQUENCES
from pipeline.ingestion.volume_checks import check_regular_file
from pipeline.preprocessing.model_grid import SPACING_KNOWN_KEY
from pipeline.preprocessing.registration import REGISTRATORS, Registrator, check_overlap

logger = logging.getLogger(__name__)

__all__ = [
    "SCAN_META",
    "AlignToFlaird",
    "LoadScansd",
    "ReadSequencesd",
    "ScanMetad",
    "StandInFlaird",
    "ZeroBackgroundd",
    "scan_chain",
    "zero_background",
]

SCAN_META = {
    "flair": "lggseg_flair",  # the FLAIR's scan reference
    "nifti_header": "lggseg_nifti_header",  # the FLAIR's NIfTI header, hex (NIfTI inputs)
    "source_files": "lggseg_source_files",  # the FLAIR's DICOM files in slice order, one per line
    "alignment": "lggseg_alignment",  # one line per other sequence: how it was put onto the FLAIR
    "notes": "lggseg_notes",  # what was said about the scans (tilt, no qform/sform, ...), "; "-joined
    "stand_ins": "lggseg_stand_ins",  # the sequences the FLAIR stands in for, "+"-joined
}
"""The metadata keys of a scan case's image (strings, so they collate and decollate unchanged)."""
BACKGROUND_FRACTION = 0.1  # a channel with at least this fraction of exact zeros has 0 as its background
_STAND_IN = "lggseg_stand_in"  # meta flag of a sequence that is the FLAIR standing in


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


def to_sitk(image: MetaTensor) -> sitk.Image:
    """A ``(1, H, W, D)`` MetaTensor as a SimpleITK image on the same grid (float32)."""
    array = np.asarray(image.detach().cpu().numpy()[0], dtype=np.float32)
    return image_from_ras(array, np.asarray(image.affine, dtype=np.float64))[0]


def from_sitk(image: sitk.Image, meta: Mapping[str, Any] | None = None) -> MetaTensor:
    """A SimpleITK image as a ``(1, H, W, D)`` float32 MetaTensor with its RAS affine."""
    affine = torch.as_tensor(ras_affine(image), dtype=torch.float64)
    tensor = MetaTensor(torch.from_numpy(voxels_xyz(image))[None], affine=affine, meta=dict(meta or {}))
    tensor.meta["affine"] = affine
    return tensor


class ReadSequencesd(MapTransform):
    """Read each sequence's scan reference into a ``(1, H, W, D)`` MetaTensor (step 1, module docstring).

    The MetaTensor's metadata holds the reference (``filename_or_obj``), and for the FLAIR what the writer
    needs (:data:`SCAN_META`). A constant image (every voxel one value) is refused: it holds nothing to
    segment, and an empty mask would look like an answer.

    Args:
        keys: the sequence keys holding scan references (``"flair"``, ``"t1"``, ``"t1c"``).
        allow_missing_keys: as in MONAI (a missing T1 or T1c is the stand-in's job).
    """

    def __init__(self, keys: KeysCollection = SEQUENCES, allow_missing_keys: bool = True) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            reference = d[key]
            if reference is None or isinstance(reference, MetaTensor):
                continue
            path, uid = parse_reference(reference)
            if uid is None and not path.is_dir():  # a named pipe given as a file would block the reader
                check_regular_file(path, f"{str(key).upper()} file")
            scan = read_scan_volume(reference)
            values = sitk.GetArrayViewFromImage(scan.image)
            low, high = float(values.min()), float(values.max())
            if low == high:
                raise LGGDataError(
                    f"{reference}: every voxel of the {str(key).upper()} is {low:g} (a constant image); "
                    "there is nothing to segment"
                )
            meta = {"filename_or_obj": os.fspath(reference), SCAN_META["notes"]: "; ".join(scan.notes)}
            if scan.nifti_header is not None:
                meta[SCAN_META["nifti_header"]] = scan.nifti_header.hex()
            if scan.source_files:
                meta[SCAN_META["source_files"]] = "\n".join(scan.source_files)
            tensor = from_sitk(scan.image, meta)
            affine = torch.as_tensor(scan.affine, dtype=torch.float64)  # a NIfTI file's own, sheared or not
            tensor.affine, tensor.meta["original_affine"] = affine, affine.clone()
            d[key] = tensor
        return d


class StandInFlaird(MapTransform):
    """The FLAIR in place of each missing sequence (step 2), as the data set does for its patients.

    Args:
        keys: the sequences that may be missing (``"t1"``, ``"t1c"``).
        flair_key: the FLAIR's key.
    """

    def __init__(self, keys: KeysCollection = OTHER_SEQUENCES, flair_key: str = "flair") -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.flair_key = flair_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        case = str(d.get("case") or d[self.flair_key].meta.get("filename_or_obj", ""))
        for key in self.keys:
            if d.get(key) is not None:
                continue
            stand_in = d[self.flair_key].clone()
            stand_in.meta[_STAND_IN] = True
            d[key] = stand_in
            logger.info("%s: no %s; the FLAIR stands in for it (as in the data set)", case, str(key).upper())
        return d


class AlignToFlaird(MapTransform):
    """Each other sequence onto the FLAIR's grid (step 3): registered by the backend when it finds a
    transform, else resampled in the scanner geometry with MONAI ``ResampleToMatch`` (linear).

    Args:
        keys: the sequences to align (``"t1"``, ``"t1c"``); stand-ins are left as they are.
        flair_key: the FLAIR's key.
        registrator: the backend (:data:`pipeline.preprocessing.registration.REGISTRATORS`, by name or
            instance); ``None`` or ``"none"``: the scanner geometry.
        report_key: where the alignment reports go (``{sequence: line}``), for the image's metadata.
    """

    def __init__(
        self,
        keys: KeysCollection = OTHER_SEQUENCES,
        flair_key: str = "flair",
        registrator: Registrator | str | None = "rigid",
        report_key: str = "alignment",
    ) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.flair_key, self.report_key = flair_key, report_key
        if registrator is None or isinstance(registrator, str):
            registrator = REGISTRATORS[registrator or "none"]()
        self.registrator = registrator
        self.resample = ResampleToMatch(mode="bilinear", padding_mode="zeros")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        flair = d[self.flair_key]
        case = str(d.get("case") or flair.meta.get("filename_or_obj", ""))
        fixed = to_sitk(flair)
        reports = dict(d.get(self.report_key) or {})
        for key in self.key_iterator(d):
            moving = d[key]
            if moving.meta.get(_STAND_IN):
                continue
            where = str(moving.meta.get("filename_or_obj", key))
            moving_image = to_sitk(moving)
            check_overlap(fixed, moving_image, str(key), where)
            transform, alignment = self.registrator.register(fixed, moving_image, str(key))
            if transform is None:
                aligned = self.resample(moving, flair)
            else:
                resampled = sitk.Resample(
                    moving_image, fixed, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32
                )
                aligned = from_sitk(resampled, moving.meta)
            d[key] = MetaTensor(
                torch.as_tensor(aligned).float(), affine=flair.affine.clone(), meta=moving.meta
            )
            reports[str(key)] = alignment.describe()
            logger.info("%s: %s", case, reports[str(key)])
        d[self.report_key] = reports
        return d


class ZeroBackgroundd(MapTransform):
    """Each channel shifted so that its background is 0 (step 4, :func:`zero_background`).

    Args:
        keys: the sequence keys.
        background_fraction: see :func:`zero_background`.
    """

    def __init__(
        self, keys: KeysCollection = SEQUENCES, background_fraction: float = BACKGROUND_FRACTION
    ) -> None:
        super().__init__(keys)
        self.background_fraction = background_fraction

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            array = np.asarray(image.detach().cpu().numpy()[0])
            out = torch.from_numpy(zero_background(array, self.background_fraction))[None]
            d[key] = MetaTensor(out, affine=image.affine, meta=image.meta)
        return d


class ScanMetad(MapTransform):
    """The stacked image's metadata (step 5): the FLAIR's geometry and what was read, for the writer.

    Args:
        keys: the stacked image's key (``"image"``).
        flair_key: the FLAIR's key (its MetaTensor, before the sequences are deleted).
        report_key: the alignment reports' key (:class:`AlignToFlaird`).
        stand_in_keys: the sequences the FLAIR may stand in for.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        flair_key: str = "flair",
        report_key: str = "alignment",
        stand_in_keys: Sequence[str] = OTHER_SEQUENCES,
    ) -> None:
        super().__init__(keys)
        self.flair_key, self.report_key, self.stand_in_keys = flair_key, report_key, tuple(stand_in_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        flair = d[self.flair_key]
        case = str(d.get("case") or flair.meta.get("filename_or_obj", ""))
        stand_ins = [k for k in self.stand_in_keys if d.get(k) is not None and d[k].meta.get(_STAND_IN)]
        affine = torch.as_tensor(flair.affine, dtype=torch.float64)
        notes = [flair.meta.get(SCAN_META["notes"], "")] + [
            d[k].meta.get(SCAN_META["notes"], "") for k in self.stand_in_keys if d.get(k) is not None
        ]
        meta = {
            "affine": affine,
            "original_affine": affine.clone(),
            "spatial_shape": np.asarray(flair.shape[1:]),
            "original_channel_dim": 0,
            "space": "RAS",
            "filename_or_obj": case,  # outputs are named after the case
            SPACING_KNOWN_KEY: True,  # a scanner's voxel size (the Kaggle volumes' is a placeholder)
            SCAN_META["flair"]: str(flair.meta.get("filename_or_obj", "")),
            SCAN_META["nifti_header"]: flair.meta.get(SCAN_META["nifti_header"], ""),
            SCAN_META["source_files"]: flair.meta.get(SCAN_META["source_files"], ""),
            SCAN_META["alignment"]: "\n".join((d.get(self.report_key) or {}).values()),
            SCAN_META["notes"]: "; ".join(dict.fromkeys(n for n in notes if n)),
            SCAN_META["stand_ins"]: "+".join(stand_ins),
        }
        for key in self.key_iterator(d):
            d[key] = MetaTensor(torch.as_tensor(d[key]).float(), affine=affine, meta=meta)
        d.pop(self.report_key, None)
        return d


def scan_chain(image_key: str = "image", registrator: Registrator | str | None = "rigid") -> Compose:
    """The scan chain's steps (module docstring), from a case's sequence references to ``image_key``.

    Args:
        image_key: the key of the stacked image.
        registrator: the registration backend (see :class:`AlignToFlaird`).

    Returns:
        a MONAI ``Compose``.
    """
    return Compose(
        [
            ReadSequencesd(SEQUENCES),
            StandInFlaird(OTHER_SEQUENCES),
            AlignToFlaird(OTHER_SEQUENCES, registrator=registrator),
            ZeroBackgroundd(SEQUENCES),
            ConcatItemsd(keys=list(SEQUENCES), name=image_key, dim=0),
            ScanMetad(image_key),
            DeleteItemsd(keys=list(SEQUENCES)),
        ]
    )


class LoadScansd(MapTransform):
    """Load a scan case's sequences as one 3-channel image on the FLAIR's grid: :func:`scan_chain`.

    Args:
        keys: the output key (``"image"``).
        register: rigidly register the other sequences onto the FLAIR when that improves the match
            (``False``: the scanner geometry as it is).
        allow_missing_keys: as in MONAI.
    """

    def __init__(
        self, keys: KeysCollection = "image", register: bool = True, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.register = register
        self.chains = {key: scan_chain(key, "rigid" if register else "none") for key in self.keys}

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            for step in self.chains[key].transforms:  # one by one: a step's one-line error reaches the caller
                d = step(d)
        return {k: v for k, v in d.items() if v is not None}  # a missing sequence: nothing to collate
