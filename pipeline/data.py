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

Every problem is reported with the patient and file it concerns (:class:`LGGDataError`); outputs are written
to temporary names and renamed, so an interrupted or failed run leaves earlier results untouched.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import random
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import tifffile

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
    """

    def __init__(self, problems: str | Sequence[str], patient: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.patient = patient
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
    if len(spacing) != 3 or any(float(s) <= 0 for s in spacing):
        raise ValueError(f"spacing must be three positive numbers, got {tuple(spacing)}")
    row, col, slc = (float(s) for s in spacing)
    affine = np.zeros((4, 4))
    affine[1, 0] = -row  # rows run towards posterior (-A)
    affine[0, 1] = -col  # columns run towards the patient's left (-R)
    affine[2, 2] = slc  # slices run towards superior
    affine[3, 3] = 1.0
    return affine


def discover_patients(root: str | os.PathLike) -> list[Path]:
    """The patient folders under a ``kaggle_3m`` directory: sub-folders that hold TIFF files.

    Args:
        root: the data set directory.

    Returns:
        patient folders sorted by name.

    Raises:
        LGGDataError: the folder is missing, or holds no patient folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise LGGDataError(f"input folder {root} does not exist or is not a folder")
    folders = sorted(
        p
        for p in root.iterdir()
        if p.is_dir() and any(f.suffix.lower() in {".tif", ".tiff"} for f in p.iterdir())
    )
    if not folders:
        nested = sorted(root.glob("**/kaggle_3m"))
        hint = f" (did you mean {nested[0]}?)" if nested else ""
        raise LGGDataError(f"input folder {root} holds no patient folder with .tif slices{hint}")
    return folders


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
        if path.suffix.lower() not in {".tif", ".tiff"}:
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
        problems.append(f"{folder}: no .tif slice found")
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


def _atomic_path(path: Path) -> Path:
    """A temporary sibling of ``path`` whose name keeps the same extension."""
    return path.with_name(
        f".{path.name}.tmp-{os.getpid()}-{random.getrandbits(32):08x}{''.join(path.suffixes)}"
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
    tmp = _atomic_path(path)
    try:
        nib.save(image, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
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

    Args:
        path: the CSV file.

    Returns:
        ``{case id: {column: value}}`` with the values as text (empty when unknown).

    Raises:
        LGGDataError: the file cannot be parsed or has no ``Patient`` column.
    """
    path = Path(path)
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise LGGDataError(f"{path}: cannot read the clinical table ({error})") from None
    if rows and "Patient" not in rows[0]:
        raise LGGDataError(f"{path}: no 'Patient' column in the clinical table")
    return {row["Patient"]: {k: (v or "") for k, v in row.items() if k != "Patient"} for row in rows}


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


def _has_results(output_dir: Path) -> bool:
    return output_dir.exists() and (
        (output_dir / DATALIST_FILENAME).exists() or any(output_dir.glob(f"*/{IMAGE_FILENAME}"))
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

    Everything is written into a staging folder beside ``output_dir`` and renamed into place only when
    every patient succeeded, so a failed or interrupted run leaves ``output_dir`` as it was.

    Args:
        input_dir: the ``kaggle_3m`` folder (patient sub-folders, optional ``data.csv``).
        output_dir: where to write; must not already hold results unless ``overwrite``.
        num_folds: number of patient-level folds, stratified by institution.
        seed: seed of the fold assignment.
        spacing: voxel size in mm (row, column, slice).
        overwrite: replace existing results in ``output_dir``.
        skip_invalid: write the valid patients and list the invalid ones in ``problems`` instead of failing.
        workers: parallel processes (default: the number of CPUs).
        progress: optional ``(iterable, total) -> iterable`` wrapper that shows progress (e.g. ``tqdm``).

    Returns:
        the :class:`PrepareResult`.

    Raises:
        LGGDataError: the input is missing or empty, the output holds results and ``overwrite`` is off, or
            (without ``skip_invalid``) any patient is invalid; the message lists every problem of every
            patient.
    """
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    spacing = tuple(float(s) for s in spacing)
    make_affine(spacing)  # validates the spacing before any work
    folders = discover_patients(input_dir)
    if _has_results(output_dir) and not overwrite:
        raise LGGDataError(
            f"output folder {output_dir} already holds results; pass --overwrite to replace them"
        )
    clinical_path = input_dir / CLINICAL_TABLE_FILENAME
    clinical = read_clinical_table(clinical_path) if clinical_path.exists() else {}

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-", dir=output_dir.parent))
    try:
        rows, problems = _prepare_patients(folders, staging, spacing, workers, progress)
        if problems and not skip_invalid:
            raise LGGDataError([f"patient {p}: {m}" for p, m in sorted(problems.items())])
        if len(rows) < num_folds:
            raise LGGDataError(f"{len(rows)} valid patients are too few for {num_folds} folds")
        folds = make_folds([r["patient"] for r in rows], num_folds, seed)
        for row in rows:
            row["fold"] = folds[row["patient"]]
            row.update({f"clinical_{k}": v for k, v in clinical.get(case_id_of(row["patient"]), {}).items()})
        rows.sort(key=lambda r: r["patient"])
        _write_datalist(staging / DATALIST_FILENAME, rows, num_folds, seed, spacing)
        _write_patients_table(staging / PATIENTS_TABLE_FILENAME, rows)
        if problems:
            _write_json(staging / "problems.json", problems)
        _swap_into_place(staging, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return PrepareResult(output_dir=output_dir, patients=rows, problems=problems)


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
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(_call, _prepare_one, folder, staging, spacing): folder for folder in folders}
        for future in wrap(as_completed(futures), len(folders)):
            row, error = future.result()
            _collect(futures[future], row, error, rows, problems)
    return rows, problems


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
    tmp = _atomic_path(path)
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)


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
    tmp = _atomic_path(path)
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def _swap_into_place(staging: Path, output_dir: Path) -> None:
    """Move the finished staging folder to ``output_dir``, replacing what was there only at the very end."""
    if output_dir.exists() and any(output_dir.iterdir()):
        retired = output_dir.with_name(f".{output_dir.name}.old-{os.getpid()}-{random.getrandbits(32):08x}")
        os.replace(output_dir, retired)
        os.replace(staging, output_dir)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        if output_dir.exists():
            output_dir.rmdir()
        os.replace(staging, output_dir)


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

    Args:
        label_path: the label NIfTI (from ``prepare`` or a prediction).
        output_dir: folder for the masks (created).
        patient_id: file-name prefix; default the name of the label's parent folder.
        overwrite: replace mask files that already exist.

    Returns:
        the written files, slice 1 first.

    Raises:
        LGGDataError: bad label file, or mask files already present without ``overwrite``.
    """
    label_path, output_dir = Path(label_path), Path(output_dir)
    patient_id = patient_id or label_path.resolve().parent.name
    mask, _ = load_label_volume(label_path)
    names = [output_dir / f"{patient_id}_{k + 1}_mask.tif" for k in range(mask.shape[-1])]
    existing = [p.name for p in names if p.exists()]
    if existing and not overwrite:
        raise LGGDataError(
            f"{output_dir} already holds {len(existing)} mask files (e.g. {existing[0]}); pass --overwrite"
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Path, Path]] = []
    try:
        for k, name in enumerate(names):
            tmp = _atomic_path(name)
            tifffile.imwrite(tmp, (mask[..., k] * 255).astype(np.uint8))
            staged.append((tmp, name))
        for tmp, name in staged:
            os.replace(tmp, name)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
    return names
