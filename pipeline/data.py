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

import contextlib
import csv
import ctypes
import io
import json
import logging
import os
import random
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import tifffile

from pipeline.safety import (
    MANIFEST_FILENAME,
    STAGING_MARKER,
    UnsafeOutputError,
    atomic_path,
    atomic_write_text,
    check_output_location,
    foreign_files,
    owned_files,
    process_alive,
    remove_owned,
    staging_folder,
    write_manifest,
)

logger = logging.getLogger(__name__)

CHANNEL_NAMES: tuple[str, str, str] = ("pre-contrast", "FLAIR", "post-contrast")
LABEL_NAMES: dict[str, str] = {"0": "background", "1": "FLAIR abnormality"}
IMAGE_FILENAME = "image.nii.gz"
LABEL_FILENAME = "label.nii.gz"
DATALIST_FILENAME = "datalist.json"
PATIENTS_TABLE_FILENAME = "patients.csv"
CLINICAL_TABLE_FILENAME = "data.csv"
ORIENTATION = ("P", "L", "S")

_SLICE_NAME = re.compile(r"^(?P<stem>.+?)_(?P<index>\d+)(?P<mask>_mask)?\.tiff?$", re.IGNORECASE)
_INSTITUTION = re.compile(r"^TCGA_(?P<inst>[A-Z0-9]{2})_")
_ALLOWED_MASK_VALUES = ({0, 255}, {0, 1})


class LGGDataError(ValueError):
    """A problem with the input data, naming the patient and the file(s) concerned.

    Args:
        problems: one human-readable message per problem, each naming the file or folder.
        patient: the patient folder name, when the problems belong to one patient.
        failures: for a run where some patients failed, ``{patient: problems}`` (the CLI exits with 1);
            otherwise empty (bad usage or input as a whole: the CLI exits with 2).
    """

    def __init__(
        self,
        problems: str | Sequence[str],
        patient: str | None = None,
        failures: dict[str, str] | None = None,
    ) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.patient = patient
        self.failures = dict(failures or {})
        prefix = f"patient {patient}: " if patient else ""
        if len(self.problems) == 1:
            message = prefix + self.problems[0]
        else:
            message = prefix + f"{len(self.problems)} problems:\n  - " + "\n  - ".join(self.problems)
        super().__init__(message)


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
        image: uint8 array ``(3, H, W, D)``, channels :data:`CHANNEL_NAMES`.
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


def institution_of(patient_id: str) -> str:
    """Institution code from a TCGA patient or folder name (``TCGA_CS_4941_...`` -> ``CS``).

    Args:
        patient_id: folder or patient name.

    Returns:
        the two-character code, or ``"unknown"`` when the name does not follow the TCGA pattern.
    """
    match = _INSTITUTION.match(patient_id)
    return match.group("inst") if match else "unknown"


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
        LGGDataError: listing every problem found: unexpected TIFF names, images without masks and masks
            without images, duplicate slice numbers, gaps in the numbering, no slice at all.
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
            if image.ndim != 3 or image.shape[-1] != len(CHANNEL_NAMES) or image.dtype != np.uint8:
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


def save_nifti(array: np.ndarray, affine: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an array as (compressed) NIfTI atomically: to a temporary name, then rename.

    Args:
        array: spatial axes first (H, W, D[, C]).
        affine: 4x4 voxel-to-world matrix (RAS, mm).
        path: destination, ``.nii`` or ``.nii.gz``.

    Returns:
        the written path.
    """
    path = Path(path)
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    if array.ndim == 4:
        image.header.set_intent("vector", (), name="MRI channels")
    with atomic_path(path) as tmp:
        nib.save(image, tmp)
    return path


def write_patient_nifti(volume: PatientVolume, patient_dir: str | os.PathLike) -> dict[str, Path]:
    """Write one patient's ``image.nii.gz`` (H, W, D, 3) and ``label.nii.gz`` (H, W, D).

    Args:
        volume: the stacked volumes from :func:`read_patient_folder`.
        patient_dir: the patient's output folder (created).

    Returns:
        ``{"image": path, "label": path}``.
    """
    patient_dir = Path(patient_dir)
    patient_dir.mkdir(parents=True, exist_ok=True)
    image = np.ascontiguousarray(volume.image.transpose(1, 2, 3, 0))  # channel-last for NIfTI
    return {
        "image": save_nifti(image, volume.affine, patient_dir / IMAGE_FILENAME),
        "label": save_nifti(volume.label[0], volume.affine, patient_dir / LABEL_FILENAME),
    }


def read_clinical_table(path: str | os.PathLike) -> dict[str, dict[str, str]]:
    """Read the Kaggle ``data.csv`` (one row a patient, keyed by ``Patient`` e.g. ``TCGA_CS_4941``).

    The text may be UTF-8 (with or without a byte-order mark) or, failing that, Latin-1 (a warning is
    logged). Cells beyond the header are ignored; missing cells are empty.

    Args:
        path: the CSV file.

    Returns:
        ``{case id: {column: value}}`` with the values as text (empty when unknown).

    Raises:
        LGGDataError: the file cannot be read or parsed, or has no ``Patient`` column.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise LGGDataError(
            f"{path}: cannot read the clinical table ({error.strerror or error}); fix or move it away"
        ) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
        logger.warning("%s: not UTF-8 text, read as Latin-1", path)
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        rows = list(reader)
        header = [name.strip() for name in reader.fieldnames or []]
    except csv.Error as error:
        raise LGGDataError(
            f"{path}: cannot parse the clinical table ({error}); fix or move it away"
        ) from None
    if "Patient" not in header:
        raise LGGDataError(
            f"{path}: no 'Patient' column in the clinical table (columns: {', '.join(header) or 'none'}); "
            "fix its header or move it away"
        )
    table: dict[str, dict[str, str]] = {}
    for row in rows:
        row = {k.strip(): (v or "").strip() for k, v in row.items() if isinstance(k, str)}
        if row.get("Patient"):
            table[row.pop("Patient")] = row
    return table


def make_folds(patients: Sequence[str], num_folds: int = 5, seed: int = 0) -> dict[str, int]:
    """Patient-level folds stratified by institution, reproducible from a seed.

    Patients of each institution are shuffled with the seed and dealt round-robin; the dealing continues
    across institutions, so fold sizes differ by at most one and every institution is spread over the
    folds in proportion.

    Args:
        patients: patient ids (folder names carrying the institution code).
        num_folds: number of folds K (2 <= K <= number of patients).
        seed: random seed.

    Returns:
        ``{patient: fold}`` with folds in ``0..K-1``.
    """
    if not 2 <= num_folds <= len(patients):
        raise ValueError(
            f"num_folds must be between 2 and the number of patients ({len(patients)}), got {num_folds}"
        )
    rng = random.Random(seed)
    by_institution: dict[str, list[str]] = {}
    for patient in sorted(set(patients)):
        by_institution.setdefault(institution_of(patient), []).append(patient)
    folds: dict[str, int] = {}
    position = 0
    for institution in sorted(by_institution):
        members = by_institution[institution]
        rng.shuffle(members)
        for patient in members:
            folds[patient] = position % num_folds
            position += 1
    return folds


@dataclass
class PrepareResult:
    """What :func:`prepare_dataset` wrote.

    Args:
        output_dir: the output folder.
        patients: per-patient summary rows (also in ``patients.csv``).
        problems: the patients skipped with ``skip_invalid`` and why.
    """

    output_dir: Path
    patients: list[dict[str, object]]
    problems: dict[str, str]


def _missing_sequences(image: np.ndarray) -> str:
    """Channels that duplicate FLAIR (the data set's stand-in for a missing sequence)."""
    missing = [CHANNEL_NAMES[c] for c in (0, 2) if np.array_equal(image[c], image[1])]
    return ";".join(missing)


def _prepare_one(folder: Path, staging: Path, spacing: tuple[float, float, float]) -> dict[str, object]:
    volume = read_patient_folder(folder, spacing)
    write_patient_nifti(volume, staging / volume.patient_id)
    height, width, depth = volume.label.shape[1:]
    return {
        "patient": volume.patient_id,
        "institution": volume.institution,
        "num_slices": depth,
        "height": height,
        "width": width,
        "tumour_slices": int(volume.label[0].any(axis=(0, 1)).sum()),
        "tumour_voxels": int(volume.label.sum()),
        "tumour_volume_mm3": float(volume.label.sum() * np.prod(spacing)),
        "missing_sequences": _missing_sequences(volume.image),
    }


PROBLEMS_FILENAME = "problems.json"


def _check_options(
    num_folds: int, spacing: Sequence[float], workers: int | None
) -> tuple[float, float, float]:
    """Validate ``prepare``'s options before any work; returns the spacing as floats."""
    try:
        values = tuple(float(s) for s in spacing)
        make_affine(values)
    except (TypeError, ValueError):
        raise LGGDataError(
            f"--spacing {' '.join(map(str, spacing))}: expected three positive voxel sizes in mm; "
            "e.g. --spacing 1 1 1"
        ) from None
    if isinstance(num_folds, bool) or not isinstance(num_folds, int) or num_folds < 2:
        raise LGGDataError(f"--folds {num_folds}: at least 2 folds are needed; e.g. --folds 5")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise LGGDataError(f"--workers {workers}: expected a positive number of processes; e.g. --workers 2")
    return values  # type: ignore[return-value]


def _planned_files(folders: Sequence[Path]) -> list[str]:
    """Every file ``prepare`` may write into the output, relative (posix), volumes first, datalist last."""
    names = [f"{f.name}/{name}" for f in folders for name in (IMAGE_FILENAME, LABEL_FILENAME)]
    return [*names, PATIENTS_TABLE_FILENAME, PROBLEMS_FILENAME, DATALIST_FILENAME]


def _clashes(output_dir: Path, planned: Iterable[str], owned: set[str]) -> list[str]:
    """Planned names that exist in ``output_dir`` but were not written by lggseg (or are in the way)."""
    found = []
    for rel in planned:
        target = output_dir / rel
        parent = target.parent
        if parent != output_dir and (parent.is_symlink() or (parent.exists() and not parent.is_dir())):
            found.append(parent.relative_to(output_dir).as_posix())
        elif (target.exists() or target.is_symlink()) and (rel not in owned or target.is_dir()):
            found.append(rel)
    return sorted(set(found))


def _check_output_contents(output_dir: Path, planned: Sequence[str], overwrite: bool) -> None:
    """Refuse an output folder holding results without ``overwrite``, or holding foreign files at all
    without ``overwrite``; even with it, refuse when a file lggseg did not write has a name it would write."""
    if not output_dir.is_dir() or not any(output_dir.iterdir()):
        return
    owned = owned_files(output_dir)
    foreign = foreign_files(output_dir)
    has_results = any((output_dir / rel).exists() for rel in owned)
    if not overwrite and (has_results or foreign):
        if has_results:
            raise LGGDataError(
                f"{output_dir}: output folder already holds results; pass --overwrite to replace them "
                "(files lggseg did not write are kept)"
            )
        raise LGGDataError(
            f"{output_dir}: output folder is not empty and holds {len(foreign)} files lggseg did not write "
            f"(e.g. {foreign[0]}); choose a new or empty folder, or pass --overwrite to "
            "write beside them (they are kept)"
        )
    clashes = _clashes(output_dir, planned, owned)
    if clashes:
        raise LGGDataError(
            f"{output_dir}: holds {len(clashes)} files lggseg did not write under names it would write "
            f"(e.g. {clashes[0]}); they are never overwritten: move them away or choose another folder"
        )


def prepare_dataset(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    num_folds: int = 5,
    seed: int = 0,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    overwrite: bool = False,
    skip_invalid: bool = False,
    workers: int | None = None,
    progress: Callable[[Iterable, int], Iterable] | None = None,
) -> PrepareResult:
    """Convert a Kaggle ``kaggle_3m`` folder into per-patient NIfTI volumes, a datalist and folds.

    Options, paths and the output folder are checked before any conversion. Everything is written into a
    staging folder beside ``output_dir`` (see :func:`pipeline.safety.staging_folder`) and moved into place
    only when every patient succeeded, so a failed or interrupted run leaves ``output_dir`` as it was.
    The files written are listed in ``output_dir/.lggseg-manifest.json``; no file that is not listed there
    is ever replaced or removed (see :mod:`pipeline.safety`).

    Args:
        input_dir: the ``kaggle_3m`` folder (patient sub-folders, optional ``data.csv``).
        output_dir: where to write; outside ``input_dir``; empty or new unless ``overwrite``.
        num_folds: number of patient-level folds, stratified by institution (2 to the number of patients).
        seed: seed of the fold assignment.
        spacing: voxel size in mm (row, column, slice).
        overwrite: replace the results of an earlier run in ``output_dir`` and write into a folder that
            holds other files; files lggseg did not write are kept, and a name clash with one is refused.
        skip_invalid: write the valid patients and list the invalid ones in ``problems`` instead of failing.
        workers: parallel processes (default: the number of CPUs); they die with this process.
        progress: optional ``(iterable, total) -> iterable`` wrapper that shows progress (e.g. ``tqdm``).

    Returns:
        the :class:`PrepareResult`.

    Raises:
        LGGDataError: bad options, the input is missing or empty, a bad ``data.csv``, the output holds
            results (or foreign files) and ``overwrite`` is off, or (without ``skip_invalid``) a patient is
            invalid: then ``failures`` lists every problem of every patient.
        UnsafeOutputError: the output equals, contains or is inside the input, is a file, or is not writable.
        OSError: writing failed (disk full, ...); nothing is left half-written.
    """
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    spacing = _check_options(num_folds, spacing, workers)
    folders = discover_patients(input_dir, include_empty=True)
    clinical_path = input_dir / CLINICAL_TABLE_FILENAME
    check_output_location(output_dir, [input_dir, *folders, clinical_path])
    if num_folds > len(folders):
        raise LGGDataError(
            f"--folds {num_folds}: more folds than the {len(folders)} patients in {input_dir}; "
            f"choose --folds {min(5, len(folders))} or fewer"
            if len(folders) >= 2
            else f"{input_dir}: {len(folders)} patient is too few for folds; at least 2 are needed"
        )
    clinical = read_clinical_table(clinical_path) if clinical_path.exists() else {}
    planned = _planned_files(folders)
    _check_output_contents(output_dir, planned, overwrite)

    with contextlib.ExitStack() as stack:
        try:
            staging = stack.enter_context(staging_folder(output_dir))
        except OSError as error:
            raise UnsafeOutputError(
                output_dir.parent,
                f"cannot create a staging folder here ({error.strerror or error})",
                "choose another output folder or fix the permissions",
            ) from None
        rows, problems = _prepare_patients(folders, staging, spacing, workers, progress)
        if problems and not skip_invalid:
            raise LGGDataError(
                [f"patient {p}: {m}" for p, m in sorted(problems.items())],
                failures=problems,
            )
        if len(rows) < num_folds:
            raise LGGDataError(
                f"{input_dir}: {len(rows)} valid patients are too few for {num_folds} folds; "
                "fix the invalid patients or pass a smaller --folds",
                failures=problems,
            )
        folds = make_folds([r["patient"] for r in rows], num_folds, seed)
        for row in rows:
            row["fold"] = folds[row["patient"]]
            row.update({f"clinical_{k}": v for k, v in clinical.get(case_id_of(row["patient"]), {}).items()})
        rows.sort(key=lambda r: r["patient"])
        _write_datalist(staging / DATALIST_FILENAME, rows, num_folds, seed, spacing)
        _write_patients_table(staging / PATIENTS_TABLE_FILENAME, rows)
        if problems:
            _write_json(staging / PROBLEMS_FILENAME, problems)
        written = [rel for rel in planned if (staging / rel).is_file()]
        _move_into_place(staging, output_dir, written, planned, command="prepare")
    return PrepareResult(output_dir=output_dir, patients=rows, problems=problems)


def _move_into_place(
    staging: Path, output_dir: Path, written: list[str], planned: list[str], command: str
) -> None:
    """Move the finished files from ``staging`` into ``output_dir``, touching only lggseg's own files.

    A new output folder is the staging folder renamed (one atomic step). Into an existing folder, the files
    are first claimed in the manifest, then renamed one by one (volumes first, ``datalist.json`` last);
    files of an earlier run that this run did not write again are removed; the manifest ends up listing
    exactly what this run wrote.
    """
    if not output_dir.exists():
        write_manifest(staging, written, command=command, replace=True)
        (staging / STAGING_MARKER).unlink()
        try:
            os.replace(staging, output_dir)
            return
        except OSError:
            if not output_dir.is_dir():  # created meanwhile: fall through to the careful path
                raise
            (staging / MANIFEST_FILENAME).unlink()
    owned = owned_files(output_dir)
    clashes = _clashes(output_dir, planned, owned)
    if clashes:  # appeared since the check before the conversion
        raise LGGDataError(
            f"{output_dir}: {clashes[0]} appeared during the run and lggseg did not write it; "
            "nothing was replaced: move it away and run again"
        )
    write_manifest(output_dir, written, command=command)
    for rel in written:
        target = output_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / rel, target)
    remove_owned(output_dir, owned - set(written))
    write_manifest(output_dir, written, command=command, replace=True)


def _prepare_patients(
    folders: Sequence[Path],
    staging: Path,
    spacing: tuple[float, float, float],
    workers: int | None,
    progress: Callable[[Iterable, int], Iterable] | None,
) -> tuple[list[dict[str, object]], dict[str, str]]:
    rows: list[dict[str, object]] = []
    problems: dict[str, str] = {}
    workers = max(1, min(workers or os.cpu_count() or 1, len(folders)))
    wrap = progress or (lambda iterable, total: iterable)
    if workers == 1:
        outcomes = ((folder, _call(_prepare_one, folder, staging, spacing)) for folder in folders)
        for folder, (row, error) in wrap(outcomes, len(folders)):
            _collect(folder, row, error, rows, problems)
        return rows, problems
    pool = ProcessPoolExecutor(max_workers=workers, initializer=_worker_init, initargs=(os.getpid(),))
    try:
        futures = {pool.submit(_call, _prepare_one, folder, staging, spacing): folder for folder in folders}
        for future in wrap(as_completed(futures), len(folders)):
            row, error = future.result()
            _collect(futures[future], row, error, rows, problems)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return rows, problems


def _worker_init(parent_pid: int) -> None:
    """Make a worker process die with its parent, even when the parent is killed with ``kill -9``.

    On Linux the kernel sends the worker ``SIGKILL`` when its parent dies (``prctl(PR_SET_PDEATHSIG)``);
    everywhere, a daemon thread also checks every half second that the parent is still there. ``Ctrl-C``
    is left to the parent, which cancels the pending patients and removes the staging folder.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux") and os.getppid() == parent_pid:
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent_pid and not process_alive(parent_pid):  # the parent died before prctl
        os._exit(1)

    def watch() -> None:
        while process_alive(parent_pid):
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="lggseg-parent-watch", daemon=True).start()


def _call(function: Callable, *args: object) -> tuple[object, str | None]:
    """Run ``function`` and return ``(result, None)`` or ``(None, message)`` for data errors."""
    try:
        return function(*args), None
    except LGGDataError as error:
        return None, "\n  ".join(error.problems) if len(error.problems) > 1 else error.problems[0]
    except OSError as error:
        return None, f"cannot write output: {error}"


def _collect(folder: Path, row, error, rows: list, problems: dict) -> None:
    if error is None:
        rows.append(row)
    else:
        problems[folder.name] = error
        logger.error("patient %s: %s", folder.name, error)


def _write_json(path: Path, payload: object) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


def _write_datalist(path: Path, rows: list[dict[str, object]], num_folds: int, seed: int, spacing) -> None:
    entries = [
        {
            "image": f"{row['patient']}/{IMAGE_FILENAME}",
            "label": f"{row['patient']}/{LABEL_FILENAME}",
            "patient": row["patient"],
            "institution": row["institution"],
            "fold": row["fold"],
            "num_slices": row["num_slices"],
        }
        for row in rows
    ]
    _write_json(
        path,
        {
            "name": "LGG FLAIR abnormality (kaggle_3m)",
            "description": "Per-patient volumes stacked from the LGG Segmentation Dataset (Buda et al. 2019)",
            "reference": "doi:10.1016/j.compbiomed.2019.05.002",
            "licence": "CC BY-NC-SA 4.0",
            "tensorImageSize": "4D",
            "modality": {str(i): name for i, name in enumerate(CHANNEL_NAMES)},
            "channel_names": {str(i): name for i, name in enumerate(CHANNEL_NAMES)},
            "labels": LABEL_NAMES,
            "spacing_mm": list(spacing),
            "orientation": "".join(ORIENTATION),
            "num_folds": num_folds,
            "seed": seed,
            "clinical_table": PATIENTS_TABLE_FILENAME,
            "numTraining": len(entries),
            "training": entries,
        },
    )


def _write_patients_table(path: Path, rows: list[dict[str, object]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, text.getvalue())


def load_datalist(
    datalist_path: str | os.PathLike,
    folds: Iterable[int] | None = None,
    exclude_folds: Iterable[int] | None = None,
) -> list[dict]:
    """Load a ``datalist.json`` written by :func:`prepare_dataset`, optionally selecting folds.

    It calls ``monai.data.load_decathlon_datalist`` (image and label paths become absolute) and restores the
    ``patient`` ids: MONAI also turns any other string that names an existing path into an absolute path, and
    each patient id is the name of its folder.

    Args:
        datalist_path: the ``datalist.json`` file.
        folds: keep only entries of these folds (default: all).
        exclude_folds: drop entries of these folds (e.g. the validation fold for training).

    Returns:
        the ``training`` entries, each with absolute ``image``/``label`` paths and ``patient``,
        ``institution``, ``fold``, ``num_slices``.

    Raises:
        LGGDataError: missing or unreadable datalist, or an entry naming a file that does not exist.
    """
    from monai.data import load_decathlon_datalist

    datalist_path = Path(datalist_path)
    if not datalist_path.is_file():
        raise LGGDataError(f"datalist {datalist_path} does not exist")
    try:
        entries = load_decathlon_datalist(str(datalist_path), True, "training")
    except (ValueError, KeyError, json.JSONDecodeError) as error:
        raise LGGDataError(
            f"{datalist_path}: not a decathlon datalist with a 'training' list ({error})"
        ) from None
    keep = None if folds is None else set(folds)
    drop = set(exclude_folds or ())
    selected = []
    for entry in entries:
        if "patient" in entry:
            entry["patient"] = Path(str(entry["patient"])).name
        fold = entry.get("fold")
        if (keep is not None and fold not in keep) or fold in drop:
            continue
        missing = [str(entry[k]) for k in ("image", "label") if k in entry and not Path(entry[k]).exists()]
        if missing:
            raise LGGDataError(
                f"{datalist_path}: entry {entry.get('patient', '?')} names missing files: {missing}"
            )
        selected.append(entry)
    return selected


def load_label_volume(path: str | os.PathLike) -> tuple[np.ndarray, str]:
    """Read a label (or predicted label) NIfTI and bring it to the project's orientation (P, L, S).

    Args:
        path: a NIfTI label volume, e.g. ``label.nii.gz`` or a prediction written by ``lggseg infer``.

    Returns:
        ``(mask, convention)``: a uint8 (H, W, D) array with values 0/1 where ``mask[..., k]`` is slice k + 1,
        and a note of any reorientation applied.

    Raises:
        LGGDataError: unreadable file, not 3D (a trailing channel axis of size 1 is accepted), or values other
            than {0, 1} / {0, 255}.
    """
    path = Path(path)
    try:
        image = nib.load(path)
        data = np.asanyarray(image.dataobj)
    except Exception as error:
        raise LGGDataError(f"{path}: cannot read the NIfTI label ({type(error).__name__}: {error})") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise LGGDataError(f"{path}: expected a 3D label volume, got shape {data.shape}")
    values = {float(v) for v in np.unique(data)}
    if not (values <= {0.0, 1.0} or values <= {0.0, 255.0}):
        raise LGGDataError(f"{path}: label values {sorted(values)[:8]} are not in {{0, 1}} or {{0, 255}}")
    current = nib.orientations.io_orientation(image.affine)
    wanted = nib.orientations.axcodes2ornt(ORIENTATION)
    note = ""
    if not np.array_equal(current, wanted):
        data = nib.orientations.apply_orientation(data, nib.orientations.ornt_transform(current, wanted))
        note = f"reoriented from {''.join(nib.orientations.ornt2axcodes(current))} to {''.join(ORIENTATION)}"
    return (np.asarray(data) > 0).astype(np.uint8), note


def export_kaggle(
    label_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    patient_id: str | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Write a label volume back as per-slice ``<patient>_<k>_mask.tif`` files (values 0/255, Kaggle layout).

    Mask files are listed in ``output_dir/.lggseg-manifest.json``. A mask file lggseg did not write (an
    original Kaggle mask, say) is never replaced, even with ``overwrite``; other files are left alone.

    Args:
        label_path: the label NIfTI (from ``prepare`` or a prediction).
        output_dir: folder for the masks (created).
        patient_id: file-name prefix; default the name of the label's parent folder.
        overwrite: replace mask files of this patient that an earlier export wrote (and remove those of
            slices the new label no longer has).

    Returns:
        the written files, slice 1 first.

    Raises:
        LGGDataError: bad label file, mask files of an earlier export present without ``overwrite``, or
            mask files lggseg did not write under the names it would write.
        UnsafeOutputError: the output is a file or cannot be written.
    """
    label_path, output_dir = Path(label_path), Path(output_dir)
    patient_id = patient_id or label_path.resolve().parent.name
    if not patient_id or Path(patient_id).name != patient_id:
        raise LGGDataError(
            f"--patient {patient_id!r}: not a valid file-name prefix; e.g. --patient TCGA_CS_4941"
        )
    check_output_location(output_dir)  # writes only *_mask.tif names, never the label
    mask, _ = load_label_volume(label_path)
    names = [output_dir / f"{patient_id}_{k + 1}_mask.tif" for k in range(mask.shape[-1])]
    owned = owned_files(output_dir)
    existing = [p for p in names if p.exists() or p.is_symlink()]
    foreign = [p.name for p in existing if p.name not in owned or p.is_dir()]
    if foreign:
        raise LGGDataError(
            f"{output_dir}: holds {len(foreign)} mask files lggseg did not write (e.g. {foreign[0]}); "
            "they are never overwritten, even with --overwrite: choose another folder or move them away"
        )
    if existing and not overwrite:
        raise LGGDataError(
            f"{output_dir}: already holds {len(existing)} mask files of an earlier export "
            f"(e.g. {existing[0].name}); pass --overwrite to replace them"
        )
    pattern = re.compile(rf"^{re.escape(patient_id)}_\d+_mask\.tif$")
    stale = {rel for rel in owned if pattern.match(rel)} - {p.name for p in names}
    output_dir.mkdir(parents=True, exist_ok=True)
    write_manifest(output_dir, [p.name for p in names], command="export-kaggle")
    with contextlib.ExitStack() as stack:  # every file is renamed into place only when all are written
        for k, name in enumerate(names):
            tifffile.imwrite(stack.enter_context(atomic_path(name)), (mask[..., k] * 255).astype(np.uint8))
    remove_owned(output_dir, stale)
    return names


def split_folds(
    entries: Sequence[Mapping[str, Any]], fold: int, val_fold: int | None = None
) -> dict[str, list[dict]]:
    """Patient-level split of datalist entries: ``fold`` is the test fold, ``val_fold`` (default: the next
    fold present) the validation fold, every other fold trains.

    Args:
        entries: entries with a ``fold`` (from :func:`load_datalist`).
        fold: the test fold.
        val_fold: the validation fold (must differ from ``fold``).

    Returns:
        ``{"train": [...], "val": [...], "test": [...], "val_fold": int}``.

    Raises:
        ValueError: ``val_fold == fold``, or an empty part.
    """
    folds = sorted({int(e["fold"]) for e in entries})
    if val_fold is None and fold in folds:
        val_fold = folds[(folds.index(fold) + 1) % len(folds)]
    if val_fold == fold:
        raise ValueError(
            f"validation fold {val_fold} is the test fold: the checkpoint would be chosen on the test "
            "patients; pick another validation fold"
        )
    parts = {
        "test": [dict(e) for e in entries if e["fold"] == fold],
        "val": [dict(e) for e in entries if e["fold"] == val_fold],
        "train": [dict(e) for e in entries if e["fold"] not in (fold, val_fold)],
    }
    for name, part in parts.items():
        if not part:
            raise ValueError(
                f"the {name} split of fold={fold}, val_fold={val_fold} is empty (folds present: {folds})"
            )
    return {**parts, "val_fold": val_fold}
