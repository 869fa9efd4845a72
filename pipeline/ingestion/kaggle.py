"""LGG ingestion: raw Kaggle patient folders -> validated 3D volumes, NIfTI files, datalist and folds.

Input layout (the Kaggle download, ``kaggle_3m``)::

    kaggle_3m/data.csv                                   optional clinical/genomic table, one row a patient
    kaggle_3m/TCGA_<inst>_<id>_<date>/TCGA_<inst>_<id>_<date>_<k>.tif        slice k (1-based), HxWx3 uint8
    kaggle_3m/TCGA_<inst>_<id>_<date>/TCGA_<inst>_<id>_<date>_<k>_mask.tif   its mask, HxW, {0,255} or {0,1}

Output layout (:func:`prepare_dataset`)::

    out/<patient>/image.nii.gz    uint8, array shape (H, W, D, 3): channels pre-contrast, FLAIR, post-contrast
    out/<patient>/label.nii.gz    uint8, array shape (H, W, D): 0 background, 1 FLAIR abnormality
    out/datalist.json             MONAI decathlon datalist; entries carry patient, institution, fold
    out/patients.csv              side table keyed by patient: data.csv fields, fold, slices, tumour volume

Geometry (one affine for image and label, see :func:`make_affine`): voxel ``[i, j, k]`` is row ``i`` and
column ``j`` of TIFF slice ``k + 1``, so ``volume[..., k]`` is TIFF ``k + 1`` exactly. The TIFFs are axial
slices shown in radiological convention (anterior up, patient's right on the left of the image), so rows
run anterior -> posterior, columns right -> left and slices (assumed) inferior -> superior: the voxel axes
are P, L, S (``nibabel.aff2axcodes`` gives ``('P', 'L', 'S')``), which makes 3D Slicer show the volume
as the TIFFs look. The true spacing is not stored in the TIFFs; it is a parameter (default 1x1x1 mm).

Every problem is reported with the patient and file it concerns (:class:`LGGDataError`). Outputs follow the
project rule of :mod:`pipeline.safety` (no command deletes or overwrites a file it did not write): options and
the output location are checked before any work, results are written to a staging folder and renamed into
place, the files written are listed in the output's manifest, and only those are ever replaced or removed.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile

from pipeline.ingestion.errors import LGGDataError
from pipeline.ingestion.sequences import CHANNEL_NAMES as CHANNEL_NAMES  # its home; imported here too
from pipeline.ingestion.sequences import NUM_CHANNELS
from pipeline.ingestion.volume_checks import is_regular_file

logger = logging.getLogger(__name__)

LABEL_NAMES: dict[str, str] = {"0": "background", "1": "FLAIR abnormality"}
ORIENTATION = ("P", "L", "S")

_SLICE_NAME = re.compile(r"^(?P<stem>.+?)_(?P<index>\d+)(?P<mask>_mask)?\.tiff?$", re.IGNORECASE)
UNKNOWN_INSTITUTION = "unknown"  # the institution of a patient whose name does not carry one
_INSTITUTION = re.compile(r"^TCGA_(?P<inst>[A-Z0-9]{2})_")
_ALLOWED_MASK_VALUES = ({0, 255}, {0, 1})


@dataclass
class PatientSlices:
    """The slice files of one patient folder, validated and sorted by slice number.

    Args:
        folder: the patient folder.
        image_files: slice images, ``image_files[k]`` is slice ``k + 1``.
        mask_files: the masks, paired with ``image_files``.
    """

    folder: Path
    image_files: list[Path]
    mask_files: list[Path]

    @property
    def patient_id(self) -> str:
        return self.folder.name

    @property
    def institution(self) -> str:
        return institution_of(self.folder.name)


@dataclass
class PatientVolume:
    """One patient's stacked volumes.

    Args:
        patient_id: the folder name, e.g. ``TCGA_CS_4941_19960909``.
        image: uint8 array ``(3, H, W, D)``, channels :data:`~pipeline.ingestion.sequences.CHANNEL_NAMES`.
        label: uint8 array ``(1, H, W, D)`` with values 0/1.
        affine: 4x4 voxel-to-world (RAS, mm) matrix shared by image and label.
        slices: the slice files the volume was read from.
    """

    patient_id: str
    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    slices: PatientSlices = field(repr=False)

    @property
    def institution(self) -> str:
        return institution_of(self.patient_id)


def institution_of(patient_id: str | None) -> str:
    """Institution code from a TCGA patient or folder name (``TCGA_CS_4941_...`` -> ``CS``).

    Args:
        patient_id: folder or patient name.

    Returns:
        the two-character code, or ``"unknown"`` when the name does not follow the TCGA pattern.
    """
    match = _INSTITUTION.match(str(patient_id or ""))
    return match.group("inst") if match else UNKNOWN_INSTITUTION


def case_id_of(patient_id: str) -> str:
    """The ``data.csv`` key of a folder name: ``TCGA_CS_4941_19960909`` -> ``TCGA_CS_4941``."""
    parts = patient_id.split("_")
    return "_".join(parts[:3]) if len(parts) >= 3 else patient_id


def make_affine(spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """The voxel-to-world (RAS, mm) affine shared by every volume; axes are P, L, S (module docstring).

    Args:
        spacing: voxel size in mm along (row, column, slice).

    Returns:
        a 4x4 float64 matrix.
    """
    if len(spacing) != 3 or not all(np.isfinite(float(s)) and float(s) > 0 for s in spacing):
        raise ValueError(f"spacing must be three positive numbers, got {tuple(spacing)}")
    row, col, slc = (float(s) for s in spacing)
    affine = np.zeros((4, 4))
    affine[1, 0] = -row  # rows run towards posterior (-A)
    affine[0, 1] = -col  # columns run towards the patient's left (-R)
    affine[2, 2] = slc  # slices run towards superior
    affine[3, 3] = 1.0
    return affine


def check_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    """Check a ``--spacing`` option (three positive voxel sizes in mm), the one check every command uses.

    Returns:
        the spacing as floats.

    Raises:
        LGGDataError: one line naming the option and an example.
    """
    try:
        values = tuple(float(s) for s in spacing)
        make_affine(values)
    except (TypeError, ValueError):
        raise LGGDataError(
            f"--spacing {' '.join(map(str, spacing))}: expected three positive voxel sizes in mm; "
            "e.g. --spacing 1 1 1"
        ) from None
    return values  # type: ignore[return-value]


def _is_hidden(path: Path) -> bool:
    """Hidden or system entries, never patients or slices (``.DS_Store``, ``._x.tif``, ``__MACOSX``)."""
    return path.name.startswith((".", "__MACOSX")) or path.name.lower() in {"thumbs.db", "desktop.ini"}


def _has_tiff(folder: Path) -> bool:
    return any(f.suffix.lower() in {".tif", ".tiff"} and not _is_hidden(f) for f in folder.iterdir())


def discover_patients(root: str | os.PathLike, include_empty: bool = False) -> list[Path]:
    """The patient folders under a ``kaggle_3m`` directory: sub-folders that hold TIFF files.

    Hidden and system entries (``.DS_Store``, ``__MACOSX``, ``._*`` copies) are ignored. Sub-folders
    without TIFF files are logged as a warning, or returned too with ``include_empty`` so that the caller
    reports them as problems (``prepare`` does).

    Args:
        root: the data set directory.
        include_empty: also return visible sub-folders that hold no TIFF file.

    Returns:
        patient folders sorted by name.

    Raises:
        LGGDataError: the folder is missing, or no sub-folder holds TIFF slices.
    """
    root = Path(root)
    if not root.is_dir():
        raise LGGDataError(
            f"{root}: input folder does not exist or is not a folder; pass the kaggle_3m folder as --input"
        )
    try:
        subfolders = sorted(p for p in root.iterdir() if p.is_dir() and not _is_hidden(p))
        with_tiffs = [p for p in subfolders if _has_tiff(p)]
    except OSError as error:
        raise LGGDataError(f"{root}: cannot list the input folder ({error.strerror or error})") from None
    if not with_tiffs:
        nested = sorted(root.glob("**/kaggle_3m"))
        hint = f" (did you mean {nested[0]}?)" if nested else ""
        raise LGGDataError(
            f"{root}: input folder holds no patient folder with .tif slices{hint}; "
            "pass the kaggle_3m folder as --input"
        )
    empty = [p for p in subfolders if p not in with_tiffs]
    if empty and not include_empty:
        logger.warning(
            "ignoring %d folders without .tif slices: %s", len(empty), ", ".join(p.name for p in empty)
        )
    return subfolders if include_empty else with_tiffs


def scan_patient_folder(folder: str | os.PathLike) -> PatientSlices:
    """List, pair and sort (numerically) the slices of one patient folder, without reading pixels.

    Args:
        folder: a patient folder in the Kaggle layout.

    Returns:
        the paired slice files, sorted by slice number.

    Raises:
        LGGDataError: listing every problem found: unexpected TIFF names, TIFF names that are not regular
            files (a named pipe would block the reader forever), images without masks and masks without
            images, duplicate slice numbers, gaps in the numbering, no slice at all.
    """
    folder = Path(folder)
    patient = folder.name
    if not folder.is_dir():
        raise LGGDataError(f"patient folder {folder} does not exist", patient)
    images: dict[int, list[Path]] = {}
    masks: dict[int, list[Path]] = {}
    problems: list[str] = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in {".tif", ".tiff"} or _is_hidden(path):
            continue
        if not is_regular_file(path):
            problems.append(f"{path.name}: not a regular file (a folder, named pipe, socket or device)")
            continue
        match = _SLICE_NAME.match(path.name)
        if match is None:
            problems.append(f"{path.name}: not a slice name of the form <patient>_<k>[_mask].tif")
            continue
        index = int(match.group("index"))
        (masks if match.group("mask") else images).setdefault(index, []).append(path)
    for kind, table in (("image", images), ("mask", masks)):
        for index, paths in sorted(table.items()):
            if len(paths) > 1:
                names = ", ".join(p.name for p in paths)
                problems.append(f"duplicate slice number {index} ({kind}): {names}")
    for index in sorted(set(images) - set(masks)):
        problems.append(
            f"{images[index][0].name}: image without mask (expected {_mask_name(images[index][0])})"
        )
    for index in sorted(set(masks) - set(images)):
        problems.append(f"{masks[index][0].name}: mask without image")
    numbers = sorted(set(images) | set(masks))
    if not numbers:
        problems.append("no .tif slice found in the folder (empty, or not a patient folder)")
    else:
        missing = sorted(set(range(1, numbers[-1] + 1)) - set(numbers))
        if missing:
            problems.append(f"gap in slice numbers: {_ranges(missing)} missing (slices run 1..{numbers[-1]})")
    if problems:
        raise LGGDataError(problems, patient)
    return PatientSlices(
        folder=folder,
        image_files=[images[k][0] for k in numbers],
        mask_files=[masks[k][0] for k in numbers],
    )


def _mask_name(image_path: Path) -> str:
    return f"{image_path.stem}_mask{image_path.suffix}"


def _ranges(numbers: Sequence[int]) -> str:
    """``[2, 3, 4, 7]`` -> ``"2-4, 7"``."""
    parts, start, prev = [], numbers[0], numbers[0]
    for n in [*numbers[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if n is not None:
            start = prev = n
    return ", ".join(parts)


def _read_tiff(path: Path) -> np.ndarray:
    try:
        return tifffile.imread(path)
    except Exception as error:  # tifffile raises many types for damaged files
        raise LGGDataError(
            f"{path.name}: unreadable or truncated TIFF ({type(error).__name__}: {error})"
        ) from None


def read_patient_folder(
    folder: str | os.PathLike, spacing: Sequence[float] = (1.0, 1.0, 1.0)
) -> PatientVolume:
    """Read, validate and stack one patient folder into 3D volumes.

    This is the one reader behind ``lggseg prepare`` and the ``LoadLGGPatientd`` transform.

    Args:
        folder: a patient folder in the Kaggle layout.
        spacing: voxel size in mm (row, column, slice) for the affine.

    Returns:
        the patient's image ``(3, H, W, D)`` and label ``(1, H, W, D)`` volumes (uint8) and affine.

    Raises:
        LGGDataError: listing every problem: those of :func:`scan_patient_folder`, unreadable or truncated
            TIFFs, images that are not HxWx3 uint8, slices whose shape differs from the first, masks whose
            shape differs from their image, mask values other than {0, 255} or {0, 1}.
    """
    slices = scan_patient_folder(folder)
    patient = slices.patient_id
    problems: list[str] = []
    image_slices: list[np.ndarray] = []
    mask_slices: list[np.ndarray] = []
    reference: tuple[Path, tuple[int, ...]] | None = None
    mask_values: set[int] = set()
    for image_path, mask_path in zip(slices.image_files, slices.mask_files, strict=True):
        try:
            image = _read_tiff(image_path)
        except LGGDataError as error:
            problems.extend(error.problems)
            image = None
        try:
            mask = _read_tiff(mask_path)
        except LGGDataError as error:
            problems.extend(error.problems)
            mask = None
        if image is not None:
            if image.ndim != 3 or image.shape[-1] != NUM_CHANNELS or image.dtype != np.uint8:
                problems.append(
                    f"{image_path.name}: expected an HxWx3 uint8 image, got shape {image.shape} {image.dtype}"
                )
                image = None
            elif reference is None:
                reference = (image_path, image.shape)
            elif image.shape != reference[1]:
                problems.append(
                    f"{image_path.name}: shape {image.shape} differs from {reference[0].name} {reference[1]}"
                )
                image = None
        if mask is not None:
            if mask.ndim == 3 and mask.shape[-1] == 1:
                mask = mask[..., 0]
            if mask.ndim != 2:
                problems.append(f"{mask_path.name}: expected a 2D mask, got shape {mask.shape}")
                mask = None
            elif image is not None and mask.shape != image.shape[:2]:
                problems.append(
                    f"{mask_path.name}: mask shape {mask.shape} differs from its image {image.shape[:2]}"
                )
                mask = None
            else:
                values = {int(v) for v in np.unique(mask)}
                if not any(values <= allowed for allowed in _ALLOWED_MASK_VALUES):
                    shown = sorted(values)[:8]
                    problems.append(
                        f"{mask_path.name}: mask values {shown} are not in {{0, 255}} or {{0, 1}}"
                    )
                    mask = None
                else:
                    mask_values |= values
        if image is not None and mask is not None:
            image_slices.append(image)
            mask_slices.append(mask)
    if not problems and not any(mask_values <= allowed for allowed in _ALLOWED_MASK_VALUES):
        problems.append(f"masks mix the conventions {{0, 255}} and {{0, 1}} (values {sorted(mask_values)})")
    if problems:
        raise LGGDataError(problems, patient)
    image_volume = np.ascontiguousarray(np.stack(image_slices, axis=-1).transpose(2, 0, 1, 3))  # (3, H, W, D)
    label_volume = (np.stack(mask_slices, axis=-1) > 0).astype(np.uint8)[None]  # (1, H, W, D)
    return PatientVolume(
        patient_id=patient, image=image_volume, label=label_volume, affine=make_affine(spacing), slices=slices
    )
