"""A user's own scans: find the sequences of a case folder and read them, with one-line errors (floor 1).

A scan case folder holds the sequences of one patient, as NIfTI files or as DICOM:

- NIfTI: ``.nii`` / ``.nii.gz`` files directly in the folder, recognised by name
  (:func:`pipeline.ingestion.sequences.sequence_of_filename`);
- DICOM files directly in the folder (several series may be mixed there), or in its sub-folders (one
  level down, one series per sub-folder or mixed). A file is DICOM when it has the ``DICM`` preamble or
  ends in ``.dcm`` / ``.ima``. Series are grouped by SeriesInstanceUID (headers read with pydicom,
  ``stop_before_pixels``); only ``MR`` series (or series without a Modality) count, so a DICOM SEG
  or a report beside them is ignored. A series is recognised from its SeriesDescription, else its
  ProtocolName, else the name of its folder when it is alone there
  (:func:`pipeline.ingestion.sequences.sequence_of_description`).

Names starting with ``.`` or ``__MACOSX``, ``Thumbs.db``, ``desktop.ini`` and ``DICOMDIR`` are ignored;
so are other files (notes, T2, masks, labels, unrecognised series).

A folder is a scan case folder (:func:`is_scan_case_folder`) when it holds directly a NIfTI file named as
FLAIR, T1, T1c or T2, or DICOM files, or sub-folders of DICOM files that all belong to one study
(StudyInstanceUID of the first file of each); sub-folders of different studies make a folder of cases.

A scan reference (what :func:`read_scan` reads, and the values of a case's ``flair`` / ``t1`` / ``t1c``):

- a NIfTI (or any SimpleITK-readable) file path;
- a folder path: the one DICOM series directly in that folder;
- ``dicom:<folder>#<SeriesInstanceUID>``: that series among the DICOM files directly in ``<folder>``
  (used when several series share a folder; see :func:`dicom_reference`).

DICOM slices are sorted by position along the slice normal (InstanceNumber when positions are missing)
and must be evenly spaced (within :data:`SPACING_TOLERANCE`; two slices at one position, e.g. two echoes
in one series, are refused). An unreadable DICOM file (header or pixels) is skipped, with a warning in the
log, when the remaining slices of the series are still evenly spaced (an extra or duplicated file);
otherwise the series is refused naming that file (a slice is missing from the volume).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pipeline.ingestion.errors import LGGDataError
from pipeline.ingestion.sequences import NIFTI_SUFFIXES, sequence_of_description, sequence_of_filename
from pipeline.ingestion.volume_checks import check_nifti_header, unreadable_data

logger = logging.getLogger(__name__)

DICOM_PREFIX = "dicom:"
SCAN_KIND = "scans"  # the "kind" of a scan case
SOURCE_FILES_KEY = "lggseg:source_files"  # metadata of a series read by read_scan: its files, in slice order
DICOM_SUFFIXES = (".dcm", ".ima")
IGNORED_NAMES = frozenset({"thumbs.db", "desktop.ini", "dicomdir", "__macosx"})
NOT_DICOM_SUFFIXES = (
    *NIFTI_SUFFIXES,
    *(".tif .tiff .png .jpg .jpeg .txt .md .csv .json .pdf .nrrd .mha .mhd .raw .zip .gz .pt .pth".split()),
)
"""Files with these endings are never opened to look for a DICOM preamble."""
CASE_SEQUENCES = ("flair", "t1", "t1c")
"""The sequences a scan case takes (T2 and labels are recognised and left out)."""
SPACING_TOLERANCE = 0.01
"""Slices are evenly spaced when every gap is within this fraction of the median gap."""

_HEADER_TAGS = [
    "SeriesInstanceUID",
    "StudyInstanceUID",
    "SeriesDescription",
    "ProtocolName",
    "Modality",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "InstanceNumber",
]


class CaseError(ValueError):
    """A path that names no case, or two cases with the same name (one line, naming the paths).

    Raised for scan case folders here and re-exported as :class:`pipeline.ingestion.cases.CaseError`.
    """


def _ignored(path: Path) -> bool:
    return path.name.startswith(".") or path.name.lower() in IGNORED_NAMES


def _is_nifti(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(NIFTI_SUFFIXES)


def _is_dicom_file(path: Path) -> bool:
    if path.name.lower().endswith(NOT_DICOM_SUFFIXES) or not path.is_file():
        return False
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _children(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if not _ignored(p))
    except OSError:
        return []


def _dicom_files(folder: Path) -> list[Path]:
    return [p for p in _children(folder) if _is_dicom_file(p)]


@dataclass
class DicomSeries:
    """The DICOM files of one series directly in one folder.

    Args:
        folder: the folder holding the files.
        uid: the SeriesInstanceUID.
        description: SeriesDescription, else ProtocolName, else ``""``.
        files: ``[(path, header)]`` (pydicom datasets without pixels).
        study: the StudyInstanceUID (``""`` when missing).
        modality: the Modality (``""`` when missing).
        alone: no other series (readable or not) shares the folder.
    """

    folder: Path
    uid: str
    description: str = ""
    files: list = field(default_factory=list)
    study: str = ""
    modality: str = ""
    alone: bool = True

    @property
    def reference(self) -> str:
        """The folder when the series is alone in it, else ``dicom:<folder>#<uid>``."""
        return str(self.folder) if self.alone else dicom_reference(self.folder, self.uid)

    @property
    def label(self) -> str:
        """How the series is named in messages and in a case's ``sequences``."""
        return self.description or (self.folder.name if self.alone else self.uid)


def dicom_reference(folder: str | os.PathLike, uid: str) -> str:
    """``dicom:<folder>#<uid>``: the series ``uid`` among the DICOM files directly in ``folder``."""
    return f"{DICOM_PREFIX}{folder}#{uid}"


def parse_reference(reference: str | os.PathLike) -> tuple[Path, str | None]:
    """``(path, uid)`` of a scan reference: ``uid`` is ``None`` unless it is ``dicom:<folder>#<uid>``."""
    text = os.fspath(reference)
    if text.startswith(DICOM_PREFIX):
        folder, _, uid = text[len(DICOM_PREFIX) :].rpartition("#")
        return Path(folder), uid or None
    return Path(text), None


def read_dicom_headers(folder: Path) -> tuple[list[DicomSeries], list[tuple[Path, str]]]:
    """The series of the DICOM files directly in ``folder``, and the files whose header is unreadable.

    Returns:
        ``(series in file order of their first file, [(path, reason)])``.
    """
    import pydicom

    series: dict[str, DicomSeries] = {}
    unreadable: list[tuple[Path, str]] = []
    for path in _dicom_files(folder):
        try:
            header = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=_HEADER_TAGS)
            uid = str(header.SeriesInstanceUID)
        except Exception as err:  # pydicom raises many types for a broken file
            unreadable.append((path, _reason(err) or "not a DICOM file"))
            continue
        entry = series.get(uid)
        if entry is None:
            description = str(header.get("SeriesDescription", "") or header.get("ProtocolName", "") or "")
            entry = series[uid] = DicomSeries(
                folder=folder,
                uid=uid,
                description=description.strip(),
                study=str(header.get("StudyInstanceUID", "") or ""),
                modality=str(header.get("Modality", "") or "").upper(),
            )
        entry.files.append((path, header))
    for entry in series.values():
        entry.alone = len(series) == 1
    return list(series.values()), unreadable


def _study_of_first_file(folder: Path) -> str | None:
    import pydicom

    for path in _children(folder):
        if not _is_dicom_file(path):
            continue
        try:
            header = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
        except Exception:  # an unreadable file: try the next one
            continue
        return str(header.get("StudyInstanceUID", "") or "")
    return None


def is_scan_case_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a scan case folder (see the module docstring)."""
    folder = Path(path)
    if not folder.is_dir() or _ignored(folder):
        return False
    children = _children(folder)
    for child in children:
        if _is_nifti(child) and sequence_of_filename(child.name) in ("flair", "t1", "t1c", "t2"):
            return True
    if any(_is_dicom_file(child) for child in children):
        return True
    studies = {_study_of_first_file(child) for child in children if child.is_dir()} - {None}
    return len(studies) == 1


@dataclass
class _Candidate:
    reference: str
    label: str
    sequence: str | None


def _candidates(folder: Path) -> list[_Candidate]:
    found: list[_Candidate] = []
    dicom_folders = [folder] + [c for c in _children(folder) if c.is_dir()]
    for child in _children(folder):
        if _is_nifti(child):
            found.append(_Candidate(str(child), child.name, sequence_of_filename(child.name)))
    for place in dicom_folders:
        series, unreadable = read_dicom_headers(place)
        for path, reason in unreadable:
            logger.warning("%s: unreadable DICOM header, ignored (%s)", path, reason)
        for entry in series:
            if entry.modality not in ("", "MR"):
                continue
            sequence = sequence_of_description(entry.label) if entry.label != entry.uid else None
            found.append(_Candidate(entry.reference, entry.label, sequence))
    return found


def make_scan_case(
    case: str,
    flair: str | os.PathLike,
    t1: str | os.PathLike | None = None,
    t1c: str | os.PathLike | None = None,
    sequences: Mapping[str, str] | None = None,
) -> dict:
    """The dict of one scan case.

    Args:
        case: the case name (output file names).
        flair, t1, t1c: scan references (see the module docstring); ``t1`` / ``t1c`` may be ``None``.
        sequences: what each sequence was taken from, for the log (default: the references' names).

    Returns:
        ``{"case", "image" (the FLAIR), "flair", "t1", "t1c", "kind": "scans", "sequences"}``.
    """
    refs = {"flair": os.fspath(flair), "t1": t1 and os.fspath(t1), "t1c": t1c and os.fspath(t1c)}
    taken = {k: (sequences or {}).get(k) or parse_reference(v)[0].name for k, v in refs.items() if v}
    return {"case": case, "image": refs["flair"], **refs, "kind": SCAN_KIND, "sequences": taken}


def find_scan_case(
    folder: str | os.PathLike,
    flair: str | os.PathLike | None = None,
    t1: str | os.PathLike | None = None,
    t1c: str | os.PathLike | None = None,
) -> dict:
    """The sequences of one scan case folder, recognised by name or given explicitly.

    Args:
        folder: the case folder (its name is the case name).
        flair, t1, t1c: scan references that override recognition for that sequence.

    Returns:
        a case dict (:func:`make_scan_case`); a missing T1 or T1c is ``None``.

    Raises:
        CaseError: no FLAIR, or two candidates for one sequence (one line naming the folder).
    """
    folder = Path(folder)
    given = {"flair": flair, "t1": t1, "t1c": t1c}
    candidates = _candidates(folder) if folder.is_dir() else []
    chosen: dict[str, str | None] = {}
    taken: dict[str, str] = {}
    for sequence in CASE_SEQUENCES:
        if given[sequence] is not None:
            chosen[sequence] = os.fspath(given[sequence])
            continue
        matches = [c for c in candidates if c.sequence == sequence]
        if len(matches) > 1:
            names = ", ".join(c.label for c in matches)
            raise CaseError(
                f"{folder}: {len(matches)} {sequence.upper()} candidates ({names}); "
                f"keep one or pass --{sequence} FILE"
            )
        chosen[sequence] = matches[0].reference if matches else None
        if matches:
            taken[sequence] = matches[0].label
    if chosen["flair"] is None:
        names = ", ".join(c.label for c in candidates) or "nothing"
        raise CaseError(f"{folder}: no FLAIR found among {names}; name it *_flair.nii.gz or pass --flair")
    return make_scan_case(folder.name, chosen["flair"], chosen["t1"], chosen["t1c"], taken)


def find_scan_cases(path: str | os.PathLike) -> list[dict]:
    """The scan cases of a case folder, or of a folder of case folders (sorted by name).

    Raises:
        CaseError: no scan case there, or a case folder without a FLAIR or with two candidates.
    """
    path = Path(path)
    if is_scan_case_folder(path):
        return [find_scan_case(path)]
    cases = [find_scan_case(child) for child in _children(path) if is_scan_case_folder(child)]
    if not cases:
        raise CaseError(
            f"{path}: no scan case found (no NIfTI sequence named as FLAIR, T1, T1c or T2, no DICOM)"
        )
    return cases


# ------------------------------------------------------------------------------------------------- reading


def _reason(err: BaseException) -> str:
    """The useful part of an exception's message, on one line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in lines:
        if "ERROR:" in line:
            return line.split("ERROR:", 1)[1].strip()
    return "; ".join(lines)[:300]


def check_finite(image: sitk.Image, where: str) -> None:
    """Refuse NaN or Inf voxels.

    Raises:
        LGGDataError: ``"<where>: N voxels are NaN or Inf; the scan cannot be segmented"``.
    """
    array = sitk.GetArrayViewFromImage(image)
    if not np.issubdtype(array.dtype, np.floating):
        return
    bad = int(array.size - np.count_nonzero(np.isfinite(array)))
    if bad:
        raise LGGDataError(f"{where}: {bad} voxels are NaN or Inf; the scan cannot be segmented")


def _as_volume(image: sitk.Image, where: str) -> sitk.Image:
    """``image`` as one 3D grey-level volume of at least 2 slices, or a one-line error."""
    if image.GetNumberOfComponentsPerPixel() > 1:
        raise LGGDataError(
            f"{where}: {image.GetNumberOfComponentsPerPixel()} components per voxel (colour or vector "
            "image); give one grey-level volume per sequence"
        )
    size = image.GetSize()
    while image.GetDimension() > 3 and size[-1] == 1:
        image = image[(slice(None),) * (image.GetDimension() - 1) + (0,)]
        size = image.GetSize()
    if image.GetDimension() == 4:
        raise LGGDataError(f"{where}: a 4D image of {size[3]} volumes; give one 3D volume per sequence")
    if image.GetDimension() != 3:
        raise LGGDataError(f"{where}: a {image.GetDimension()}D image of size {size}; a scan must be 3D")
    if size[2] < 2:
        raise LGGDataError(f"{where}: has {size[2]} slice; a volume needs at least 2")
    return image


def _check_nifti(path: Path) -> None:
    """Refuse a NIfTI file with less data than its header announces, or with NaN / Inf voxels.

    SimpleITK reads both silently (missing data and non-finite voxels become zeros), so the file itself is
    checked: the header as the prepared-volume path checks it (:func:`check_nifti_header`); a float file's
    data is read with nibabel, any other file's stream is only decompressed.
    """
    import gzip
    import zlib

    loaded = check_nifti_header(path)
    header = loaded.header
    dtype = header.get_data_dtype()
    expected = int(header.get_data_offset()) + int(np.prod(header.get_data_shape())) * int(dtype.itemsize)
    if np.issubdtype(dtype, np.floating):
        try:
            data = np.asanyarray(loaded.dataobj)
        except (EOFError, OSError, ValueError, zlib.error) as err:
            raise unreadable_data(path, err) from None
        bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        if bad:
            raise LGGDataError(f"{path}: {bad} voxels are NaN or Inf; the scan cannot be segmented")
        return
    if path.name.lower().endswith(".gz"):
        total = 0
        try:
            with gzip.open(path, "rb") as stream:
                while chunk := stream.read(1 << 22):
                    total += len(chunk)
        except (EOFError, OSError, zlib.error) as err:
            raise unreadable_data(path, err) from None
    else:
        total = path.stat().st_size
    if total < expected:
        raise LGGDataError(f"{path}: truncated file ({total} bytes of data, the header needs {expected})")


def _read_file(path: Path) -> sitk.Image:
    if _is_nifti(path):
        _check_nifti(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise LGGDataError(f"{path}: not a readable image file ({_reason(err)})") from None
    return _as_volume(image, str(path))


def _slice_positions(files: list) -> list[float] | None:
    """Each file's position along the slice normal, or ``None`` when a header lacks position/orientation."""
    try:
        orientation = np.asarray(files[0][1].ImageOrientationPatient, dtype=float)
        normal = np.cross(orientation[:3], orientation[3:])
        return [float(np.dot(np.asarray(h.ImagePositionPatient, dtype=float), normal)) for _, h in files]
    except (AttributeError, TypeError, ValueError, IndexError):
        return None


def _uneven(positions: list[float]) -> str | None:
    """Why sorted ``positions`` are not evenly spaced, or ``None``."""
    gaps = np.diff(np.asarray(positions))
    if gaps.size == 0:
        return None
    if np.any(gaps < 1e-4):
        return f"{int(np.sum(gaps < 1e-4))} slices share a position (several echoes or time points?)"
    median = float(np.median(gaps))
    worst = int(np.argmax(np.abs(gaps - median)))
    if abs(gaps[worst] - median) > SPACING_TOLERANCE * median:
        return (
            f"slices are not evenly spaced ({gaps[worst]:.3g} mm after slice {worst + 1}, "
            f"{median:.3g} mm elsewhere)"
        )
    return None


def _read_series(series: DicomSeries, unreadable: list[tuple[Path, str]]) -> sitk.Image:
    where = series.reference
    files = list(series.files)
    positions = _slice_positions(files)
    if positions is not None:
        order = np.argsort(positions, kind="stable")
    else:
        order = np.argsort([int(h.get("InstanceNumber", 0) or 0) for _, h in files], kind="stable")
    files = [files[i] for i in order]
    positions = [positions[i] for i in order] if positions is not None else None
    if len(files) < 2:  # one file: a single slice, or a multi-frame (enhanced) DICOM volume
        try:
            return _as_volume(sitk.ReadImage(str(files[0][0])), where)
        except RuntimeError as err:
            raise LGGDataError(f"{files[0][0]}: unreadable DICOM file ({_reason(err)})") from None
    reader = sitk.ImageSeriesReader()
    try:
        reader.SetFileNames([str(p) for p, _ in files])
        image = reader.Execute()
    except RuntimeError:
        bad = []
        for index, (path, _) in enumerate(files):
            try:
                sitk.ReadImage(str(path))
            except RuntimeError as err:
                bad.append(index)
                unreadable = [*unreadable, (path, _reason(err))]
        keep = [i for i in range(len(files)) if i not in bad]
        files = [files[i] for i in keep]
        positions = [positions[i] for i in keep] if positions is not None else None
        image = None
    problem = _uneven(positions) if positions is not None else None
    if unreadable:
        names = ", ".join(f"{p.name} ({reason})" for p, reason in unreadable)
        if positions is None:
            problem = "no slice positions to check that no slice is missing"
        if problem or len(files) < 2:
            (first, reason), others = unreadable[0], len(unreadable) - 1
            more = f" and {others} other unreadable file(s)" if others else ""
            raise LGGDataError(
                f"{first}: unreadable DICOM file ({reason}){more}; without it the series {series.label!r} "
                f"has a gap: {problem or f'{len(files)} slice left'}"
            )
        logger.warning(
            "%s: skipped unreadable DICOM file(s) %s; the other slices are evenly spaced", where, names
        )
    elif problem:
        raise LGGDataError(f"{where}: {problem}")
    if image is None:
        reader.SetFileNames([str(p) for p, _ in files])
        try:
            image = reader.Execute()
        except RuntimeError as err:
            raise LGGDataError(f"{where}: not a readable DICOM series ({_reason(err)})") from None
    volume = _as_volume(image, where)
    volume.SetMetaData(SOURCE_FILES_KEY, "\n".join(str(p) for p, _ in files))
    return volume


def _read_dicom(folder: Path, uid: str | None) -> sitk.Image:
    if not folder.is_dir():
        raise LGGDataError(f"{folder}: not found")
    series, unreadable = read_dicom_headers(folder)
    if uid is not None:
        chosen = [s for s in series if s.uid == uid]
        if not chosen:
            raise LGGDataError(f"{folder}: no DICOM series with SeriesInstanceUID {uid}")
    elif len(series) > 1:
        names = ", ".join(f"{s.label!r}" for s in series)
        raise LGGDataError(
            f"{folder}: holds {len(series)} DICOM series ({names}); "
            f"name one as dicom:{folder}#<SeriesInstanceUID>"
        )
    elif not series:
        detail = f" ({unreadable[0][0].name}: {unreadable[0][1]})" if unreadable else ""
        raise LGGDataError(f"{folder}: no readable DICOM series{detail}")
    else:
        chosen = series
    return _read_series(chosen[0], unreadable)


def read_scan(reference: str | os.PathLike) -> sitk.Image:
    """Read one sequence as a 3D SimpleITK image in its own type and geometry.

    Args:
        reference: a NIfTI file, a DICOM series folder, or ``dicom:<folder>#<uid>`` (see the module
            docstring).

    Returns:
        the 3D image (a 4D file with a trailing size-1 axis is reduced to 3D).

    Raises:
        LGGDataError: one line naming the file or folder: not found, unreadable or truncated, not 3D
            (e.g. several volumes), fewer than 2 slices, slices unevenly spaced or missing, an unreadable
            DICOM file that leaves a gap, NaN or Inf voxels (:func:`check_finite`).
    """
    path, uid = parse_reference(reference)
    if uid is not None or path.is_dir():
        image = _read_dicom(path, uid)
    elif not path.exists():
        raise LGGDataError(f"{path}: not found")
    else:
        image = _read_file(path)
    check_finite(image, os.fspath(reference))
    return image
