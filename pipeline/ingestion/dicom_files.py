"""DICOM files of a folder, grouped into image series by their headers (pydicom, no pixel data).

A file is DICOM when it has the ``DICM`` preamble or ends in ``.dcm`` / ``.ima``; names starting with ``.``
or ``__MACOSX``, ``Thumbs.db``, ``desktop.ini`` and ``DICOMDIR`` are ignored. Files are grouped by
SeriesInstanceUID. Only **images** count: a file of a non-image storage class sharing the series (a Philips
Raw Data Storage file beside an enhanced MR image, a presentation state, a report) or without a pixel
matrix (no Rows / Columns) is left out of its series, with a line in the log, instead of making the
series unreadable.

A scan reference names one sequence of a case:

- a NIfTI (or any SimpleITK-readable) file path;
- a folder path: the one DICOM series directly in that folder;
- ``dicom:<folder>#<SeriesInstanceUID>``: that series among the DICOM files directly in ``<folder>``
  (used when several series share a folder; :func:`dicom_reference`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.ingestion.sequences import NIFTI_SUFFIXES

logger = logging.getLogger(__name__)

__all__ = [
    "DICOM_PREFIX",
    "DicomSeries",
    "children",
    "dicom_reference",
    "is_dicom_file",
    "is_ignored",
    "is_nifti",
    "parse_reference",
    "read_dicom_headers",
]

DICOM_PREFIX = "dicom:"
DICOM_SUFFIXES = (".dcm", ".ima")
IGNORED_NAMES = frozenset({"thumbs.db", "desktop.ini", "dicomdir", "__macosx"})
NOT_DICOM_SUFFIXES = (
    *NIFTI_SUFFIXES,
    *(".tif .tiff .png .jpg .jpeg .txt .md .csv .json .pdf .nrrd .mha .mhd .raw .zip .gz .pt .pth".split()),
)
"""Files with these endings are never opened to look for a DICOM preamble."""

NON_IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66": "Raw Data Storage",
    "1.2.840.10008.5.1.4.1.1.66.4": "Segmentation Storage",
    "1.2.840.10008.5.1.4.1.1.11.1": "Grayscale Softcopy Presentation State",
    "1.2.840.10008.5.1.4.1.1.88.11": "Basic Text SR",
    "1.2.840.10008.5.1.4.1.1.88.22": "Enhanced SR",
    "1.2.840.10008.5.1.4.1.1.88.33": "Comprehensive SR",
    "1.2.840.10008.5.1.4.1.1.104.1": "Encapsulated PDF",
    "1.2.840.10008.5.1.4.1.1.4.2": "MR Spectroscopy Storage",
}
"""Storage classes that share an MR series without being one of its images."""

HEADER_TAGS = [
    "SeriesInstanceUID",
    "StudyInstanceUID",
    "SeriesDescription",
    "ProtocolName",
    "Modality",
    "SOPClassUID",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "InstanceNumber",
]


def is_ignored(path: Path) -> bool:
    """Hidden files and the system files of other platforms."""
    return path.name.startswith(".") or path.name.lower() in IGNORED_NAMES


def is_nifti(path: Path) -> bool:
    """A regular file named ``.nii`` / ``.nii.gz`` (any case)."""
    return path.is_file() and path.name.lower().endswith(NIFTI_SUFFIXES)


def is_dicom_file(path: Path) -> bool:
    """A file named ``.dcm`` / ``.ima``, or with the ``DICM`` preamble (known other endings: not opened)."""
    if path.name.lower().endswith(NOT_DICOM_SUFFIXES) or not path.is_file():
        return False
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def children(folder: Path) -> list[Path]:
    """The entries of ``folder`` that are not ignored, sorted; empty when it cannot be listed."""
    try:
        return sorted(p for p in folder.iterdir() if not is_ignored(p))
    except OSError:
        return []


@dataclass
class DicomSeries:
    """The DICOM image files of one series directly in one folder.

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


def error_reason(err: BaseException) -> str:
    """The useful part of an exception's message (ITK's ``ERROR:`` line, else the text), on one line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in lines:
        if "ERROR:" in line:
            return line.split("ERROR:", 1)[1].strip()
    return "; ".join(lines)[:300]


def _not_an_image(header: object) -> str | None:
    """Why a DICOM header is not an image of a series, or ``None``."""
    sop_class = str(getattr(header, "SOPClassUID", "") or "")
    if sop_class in NON_IMAGE_SOP_CLASSES:
        return NON_IMAGE_SOP_CLASSES[sop_class]
    if "Rows" not in header or "Columns" not in header:  # type: ignore[operator]
        return "no pixel matrix (Rows / Columns)"
    return None


def read_dicom_headers(folder: Path) -> tuple[list[DicomSeries], list[tuple[Path, str]]]:
    """The image series of the DICOM files directly in ``folder``, and the files whose header is unreadable.

    Files that are not images (:data:`NON_IMAGE_SOP_CLASSES`, no pixel matrix) are left out with a line in
    the log.

    Returns:
        ``(series in file order of their first file, [(path, reason)])``.
    """
    import pydicom

    series: dict[str, DicomSeries] = {}
    unreadable: list[tuple[Path, str]] = []
    for path in [p for p in children(folder) if is_dicom_file(p)]:
        try:
            header = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=HEADER_TAGS)
            uid = str(header.SeriesInstanceUID)
        except Exception as err:  # pydicom raises many types for a broken file
            unreadable.append((path, error_reason(err) or "not a DICOM file"))
            continue
        not_image = _not_an_image(header)
        if not_image:
            logger.info("%s: not an image (%s), left out of its series", path, not_image)
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


def study_of_first_file(folder: Path) -> str | None:
    """The StudyInstanceUID of the first readable DICOM file directly in ``folder`` (``None``: none)."""
    import pydicom

    for path in children(folder):
        if not is_dicom_file(path):
            continue
        try:
            header = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
        except Exception:  # an unreadable file: try the next one
            continue
        return str(header.get("StudyInstanceUID", "") or "")
    return None
