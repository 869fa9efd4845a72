"""Studies folders for MONAI Label: one flat folder of study images, optionally with their labels.

MONAI Label's local datastore lists a folder flat: ``<id>.nii.gz`` is a study, ``labels/final/<id>.nii.gz``
its finished label (``<patient>/image.nii.gz`` is not found). :func:`write_studies` writes that layout from
a raw Kaggle folder (``kaggle_3m``, or one patient folder) or from a prepared folder (``datalist.json``)::

    STUDIES/<patient>.nii.gz                 uint8, array (H, W, D, 3): pre-contrast, FLAIR, post-contrast
    STUDIES/labels/final/<patient>.nii.gz    uint8, array (H, W, D): 0 background, 1 FLAIR abnormality
    STUDIES/.lggseg-manifest.json            the files lggseg wrote (only those are ever replaced)
    STUDIES/.lggseg-studies-content.json     what it wrote in them: size and SHA-256 of each file

The image is the same file ``lggseg prepare`` writes (:func:`pipeline.ingestion.nifti.save_nifti`; copied byte
for byte from a prepared folder): the form the bundle's chain reads (``LoadImaged`` gives ``(3, H, W, D)``).
3D Slicer reads it as a 4D volume, i.e. a sequence of 3 frames (0 pre-contrast, 1 FLAIR, 2 post-contrast) on
one 3D grid, so labels drawn on any frame have the study's (H, W, D) geometry. A 3D vector image (a 5D NIfTI
with the vector intent, or a vector NRRD) would show as one colour volume in Slicer, but MONAI 1.6 reads the
first as ``(3, H, W, D, 1)`` and fails on the second, so the bundle's chain could not use it.

Safety follows :mod:`pipeline.safety`: the output must not be, contain or lie inside the input; a folder
holding files lggseg did not write (e.g. a MONAI Label server's ``datastore_v2.json``, labels saved from
Slicer) is refused unless ``overwrite``, and even then those files are never replaced; every file is
written in a staging folder and renamed into place; one bad patient is reported and the others written.
A file lggseg wrote whose content changed since (a label corrected in MONAI Label or 3D Slicer and saved
under the same name) is the user's: the content record (:data:`CONTENT_RECORD`) tells it apart, and a run
that would replace it stops before any work. A folder written before the record existed is compared
with what the run would write instead (identical files are replaced, different ones are the user's).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from pipeline.ingestion.datalist import DATALIST_FILENAME, load_datalist
from pipeline.ingestion.errors import LGGDataError
from pipeline.ingestion.kaggle import check_spacing, discover_patients, read_patient_folder
from pipeline.ingestion.nifti import save_nifti
from pipeline.ingestion.sequences import NUM_CHANNELS
from pipeline.ingestion.volume_checks import check_regular_file, is_regular_file
from pipeline.safety import OutputTransaction, atomic_write_json, owned_files

logger = logging.getLogger(__name__)

STUDY_SUFFIX = ".nii.gz"
FINAL_LABELS = "labels/final"
COMMAND = "studies"
# what MONAI Label accepts as an image id here (and what the app's datastore accepts for uploads)
STUDY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# what lggseg wrote in each file of the folder (the manifest lists names only)
CONTENT_RECORD = ".lggseg-studies-content.json"
_RECORD_FORMAT = 1
_VERSIONS_KEPT = 2  # this run's content and the one before (a run interrupted while moving files in)


@dataclass
class StudySource:
    """One patient to write as a study.

    Args:
        name: the study id (patient folder name).
        image: a raw patient folder, or a prepared ``image.nii.gz``.
        label: the prepared ``label.nii.gz`` (``None`` for a raw folder: its masks are read with it).
    """

    name: str
    image: Path
    label: Path | None = None


@dataclass
class StudiesResult:
    """What :func:`write_studies` did.

    Args:
        output_dir: the studies folder.
        written: the study ids written.
        failures: ``{study id: problem}`` for the patients that could not be written.
        files: the files written, relative to ``output_dir``.
    """

    output_dir: Path
    written: list[str] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)


def study_files(name: str, with_labels: bool) -> list[str]:
    """The files of one study, relative to the studies folder (image first)."""
    files = [f"{name}{STUDY_SUFFIX}"]
    return files + [f"{FINAL_LABELS}/{name}{STUDY_SUFFIX}"] if with_labels else files


def find_study_sources(
    input_dir: str | os.PathLike, patients: Sequence[str] | None = None
) -> list[StudySource]:
    """The patients of a prepared folder, a ``kaggle_3m`` folder or one raw patient folder.

    Args:
        input_dir: the folder.
        patients: keep only these patients (default: all).

    Returns:
        one :class:`StudySource` per patient, sorted by name.

    Raises:
        LGGDataError: missing input, no patient in it, an unknown ``patients`` name, or a patient name that
            cannot be a study id.
    """
    root = Path(input_dir)
    if not root.exists():
        raise LGGDataError(
            f"{root}: input not found; pass a kaggle_3m folder, a patient folder or a prepared folder"
        )
    if (root / DATALIST_FILENAME).is_file():
        sources = [
            StudySource(str(e["patient"]), Path(e["image"]), Path(e["label"]) if e.get("label") else None)
            for e in load_datalist(root / DATALIST_FILENAME)
        ]
    elif root.is_dir() and any(p.suffix.lower() in {".tif", ".tiff"} for p in root.iterdir()):
        sources = [StudySource(root.name, root)]
    else:
        sources = [StudySource(p.name, p) for p in discover_patients(root, include_empty=True)]
    sources.sort(key=lambda s: s.name)
    if patients:
        known = {s.name for s in sources}
        unknown = [p for p in patients if p not in known]
        if unknown:
            raise LGGDataError(
                f"{root}: no patient {', '.join(unknown)}; --patients takes folder names such as "
                f"{sources[0].name if sources else 'TCGA_CS_4941_19960909'}"
            )
        sources = [s for s in sources if s.name in set(patients)]
    bad = [s.name for s in sources if not STUDY_ID.match(s.name)]
    if bad:
        raise LGGDataError(
            f"{root / bad[0]}: {bad[0]!r} cannot be a study id (letters, digits, '.', '_', '-' only); "
            "rename the patient folder"
        )
    return sources


def file_content(path: str | os.PathLike) -> dict[str, object]:
    """The record of a file's content: ``{"size": bytes, "sha256": hex digest}``.

    Args:
        path: a regular file.

    Returns:
        the record, compared as a whole.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return {"size": os.path.getsize(path), "sha256": digest.hexdigest()}


def read_content_record(folder: str | os.PathLike) -> dict[str, list[dict]]:
    """The content lggseg wrote in each file of a studies folder (:data:`CONTENT_RECORD`).

    Args:
        folder: the studies folder.

    Returns:
        ``{relative path: [content record, ...]}`` (this run's and earlier contents); empty when the folder
        has no record or it cannot be read (then every file is compared with what a run would write).
    """
    path = Path(folder) / CONTENT_RECORD
    if not is_regular_file(path):
        return {}
    try:
        files = json.loads(path.read_text(encoding="utf-8"))["files"]
        return {str(rel): [dict(v) for v in versions] for rel, versions in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _is_ours(path: Path, versions: Sequence[dict]) -> bool:
    """Whether ``path`` still holds content lggseg wrote (a folder, pipe or other non-file is not)."""
    return is_regular_file(path) and file_content(path) in versions


def _changed_files(out: Path, planned: Sequence[str], record: dict[str, list[dict]]) -> list[str]:
    """The planned files lggseg wrote that changed since (known from the record)."""
    owned = owned_files(out)
    return [
        rel
        for rel in planned
        if rel in owned and rel in record and (out / rel).exists() and not _is_ours(out / rel, record[rel])
    ]


def _differing_files(out: Path, staging: Path, written: Sequence[str], record: dict) -> list[str]:
    """Files lggseg wrote before the content record existed that differ from what this run wrote."""
    owned = owned_files(out)
    return [
        rel
        for rel in written
        if rel in owned
        and rel not in record
        and (out / rel).exists()
        and not _is_ours(out / rel, [file_content(staging / rel)])
    ]


def _refuse_changed(out: Path, changed: Sequence[str]) -> None:
    if changed:
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        raise LGGDataError(
            f"{out / changed[0]}: changed since lggseg wrote it{more} (e.g. a label corrected in MONAI Label "
            "or 3D Slicer), so it is yours and is never replaced, even with --overwrite; nothing was "
            "written: move it away, or leave its patient out with --patients"
        )


def _stage_content_record(
    out: Path, staging: Path, written: Sequence[str], record: dict[str, list[dict]]
) -> None:
    """Write the updated content record into ``staging``: the files written now, with the content they
    replace, and the earlier files still listed in the manifest."""
    owned = owned_files(out) if out.is_dir() else set()
    files = {rel: versions for rel, versions in record.items() if rel in owned and rel not in written}
    for rel in written:
        files[rel] = [file_content(staging / rel), *record.get(rel, [])][:_VERSIONS_KEPT]
    payload = {"format": _RECORD_FORMAT, "written_by": "lggseg", "files": dict(sorted(files.items()))}
    atomic_write_json(staging / CONTENT_RECORD, payload, indent=1)


def _check_prepared_image(path: Path) -> tuple[tuple[int, ...], np.ndarray]:
    """Read a prepared image completely (a truncated file fails here); returns its (H, W, D) and affine."""
    image = nib.load(check_regular_file(path, "prepared image"))
    data = np.asanyarray(image.dataobj)
    if data.ndim != 4 or data.shape[-1] != NUM_CHANNELS:
        raise LGGDataError(f"{path}: expected an (H, W, D, {NUM_CHANNELS}) image, got shape {data.shape}")
    return data.shape[:3], image.affine


def _check_prepared_label(path: Path, shape: tuple[int, ...]) -> None:
    data = np.asanyarray(nib.load(check_regular_file(path, "prepared label")).dataobj)
    if data.shape != shape:
        raise LGGDataError(f"{path}: label shape {data.shape} differs from its image {shape}")
    values = np.unique(data)
    if not set(values.tolist()) <= {0, 1}:
        raise LGGDataError(f"{path}: label values {values[:8].tolist()} are not 0/1")


def _stage_one(source: StudySource, staging: Path, with_labels: bool, spacing: Sequence[float]) -> list[str]:
    """Write one study into ``staging``; returns its files (relative)."""
    files = study_files(source.name, with_labels)
    targets = [staging / rel for rel in files]
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
    if source.image.is_dir():
        volume = read_patient_folder(source.image, spacing)
        save_nifti(np.ascontiguousarray(volume.image.transpose(1, 2, 3, 0)), volume.affine, targets[0])
        if with_labels:
            save_nifti(volume.label[0], volume.affine, targets[1])
        return files
    shape, _ = _check_prepared_image(source.image)
    shutil.copyfile(source.image, targets[0])
    if with_labels:
        if source.label is None or not source.label.is_file():
            raise LGGDataError(
                f"{source.image.parent}: no label.nii.gz; write the studies without --with-labels"
            )
        _check_prepared_label(source.label, shape)
        shutil.copyfile(source.label, targets[1])
    return files


def _problem(error: BaseException) -> str:
    if isinstance(error, LGGDataError):
        return "; ".join(error.problems)
    if isinstance(error, OSError):
        return f"{error.filename or ''} {error.strerror or error}".strip()
    return f"{type(error).__name__}: {error}"


def write_studies(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    with_labels: bool = False,
    overwrite: bool = False,
    patients: Sequence[str] | None = None,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    progress: Callable[[Iterable, int], Iterable] | None = None,
) -> StudiesResult:
    """Write a MONAI Label studies folder (module docstring) from a raw or a prepared folder.

    The input, the options and the output are checked before any work. Each study is written into a
    staging folder beside ``output_dir`` and renamed into place, after being claimed in the manifest; a
    patient that cannot be read is reported in the result and the others are written. Studies lggseg
    wrote earlier and does not write again are kept.

    Args:
        input_dir: a ``kaggle_3m`` folder, one raw patient folder, or a prepared folder (``datalist.json``).
        output_dir: the studies folder; outside the input; new or empty unless ``overwrite``.
        with_labels: also write ``labels/final/<patient>.nii.gz`` (the ground truth, as a finished label).
        overwrite: write into a folder that holds other files, replacing lggseg's own files only.
        patients: only these patients (folder names).
        spacing: voxel size in mm (row, column, slice) for raw folders (prepared images keep theirs).
        progress: optional ``(iterable, total) -> iterable`` wrapper that shows progress (e.g. ``tqdm``).

    Returns:
        the :class:`StudiesResult` (``failures`` non-empty when some patients were not written).

    Raises:
        LGGDataError: bad input, options or output contents (nothing written).
        UnsafeOutputError: the output is, contains or is inside the input, is a file, or is not writable.
    """
    spacing = check_spacing(spacing)
    sources = find_study_sources(input_dir, patients)
    inputs = [Path(input_dir), *(s.image for s in sources), *(s.label for s in sources if s.label)]
    planned = [rel for s in sources for rel in study_files(s.name, with_labels)]
    transaction = OutputTransaction(
        output_dir, COMMAND, overwrite, inputs=inputs, error=LGGDataError, results="studies lggseg wrote"
    )
    out = transaction.check([*planned, CONTENT_RECORD])
    record = read_content_record(out)
    _refuse_changed(out, _changed_files(out, planned, record))

    result = StudiesResult(output_dir=out)
    wrap = progress or (lambda iterable, total: iterable)
    with transaction.staging() as staging:
        staged: list[tuple[str, list[str]]] = []
        for source in wrap(sources, len(sources)):
            try:
                staged.append((source.name, _stage_one(source, staging, with_labels, spacing)))
            except Exception as error:  # noqa: BLE001 - one bad patient never stops the others
                result.failures[source.name] = _problem(error)
                logger.debug("study %s failed", source.name, exc_info=True)
        files = [rel for _, names in staged for rel in names]
        if files:
            _refuse_changed(out, _differing_files(out, staging, files, record))
            _stage_content_record(out, staging, files, record)
            transaction.commit(staging, [*files, CONTENT_RECORD], keep_earlier=True)
    result.written = [name for name, _ in staged]
    result.files = files
    return result
