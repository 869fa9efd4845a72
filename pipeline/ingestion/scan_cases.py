"""A user's own scans: find the sequences of a scan case folder.

A scan case folder holds the sequences of one patient, as NIfTI files or as DICOM:

- NIfTI: ``.nii`` / ``.nii.gz`` files directly in the folder, recognised by name
  (:func:`pipeline.ingestion.sequences.sequence_of_filename`);
- DICOM image files directly in the folder (several series may be mixed there), or in its sub-folders (one
  level down, one series per sub-folder or mixed), all of one study (:mod:`pipeline.ingestion.dicom_files`:
  only image files count, grouped by SeriesInstanceUID; only ``MR`` series, or series without a Modality).
  A series is recognised from its SeriesDescription, else its ProtocolName, else the name of its folder
  when it is alone there (:func:`pipeline.ingestion.sequences.sequence_of_description`).

Other files (notes, T2, masks, labels, unrecognised series, a stray screenshot) are left out.

:func:`is_scan_case_folder` decides whether a folder is one case; :func:`case_folders` lists the cases of a
folder of case folders and says, in one line, when a folder holds both sequences of its own and case folders
(a stray ``*_flair.nii.gz`` beside the patients' folders would otherwise hide every other case).
:func:`find_scan_case` picks the FLAIR, T1 and T1c of one case, and names every ambiguity at once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pipeline.ingestion.dicom_files import (
    children,
    is_dicom_file,
    is_ignored,
    is_nifti,
    parse_reference,
    read_dicom_headers,
    study_of_first_file,
)
from pipeline.ingestion.errors import CaseError
from pipeline.ingestion.sequences import (
    CASE_SEQUENCES,
    IMAGE_SEQUENCES,
    sequence_of_description,
    sequence_of_filename,
)

logger = logging.getLogger(__name__)

__all__ = [
    "SCAN_KIND",
    "CaseError",
    "case_folders",
    "find_scan_case",
    "find_scan_cases",
    "is_scan_case_folder",
    "make_scan_case",
]

SCAN_KIND = "scans"  # the "kind" of a scan case


def _own_sequences(folder: Path) -> list[Path]:
    """NIfTI files directly in ``folder`` named as a sequence (FLAIR, T1, T1c, T2)."""
    return [c for c in children(folder) if is_nifti(c) and sequence_of_filename(c.name) in IMAGE_SEQUENCES]


def _own_dicom_study(folder: Path) -> str | None:
    """The study of the DICOM files directly in ``folder`` (``None``: no DICOM file there; ``""``: none
    readable, the case then fails on reading with the file's problem)."""
    study = study_of_first_file(folder)
    if study is None and any(is_dicom_file(c) for c in children(folder)):
        return ""
    return study


def _layout(folder: Path) -> tuple[str, list[Path]]:
    """``("case" | "cases" | "none" | "conflict", details)`` of a folder (see :func:`is_scan_case_folder`).

    ``details``: the case sub-folders (``"cases"``, ``"conflict"``).
    """
    own_nifti = _own_sequences(folder)
    own_study = _own_dicom_study(folder)
    subfolders = [c for c in children(folder) if c.is_dir() and not is_ignored(c)]
    nifti_cases = [c for c in subfolders if _own_sequences(c)]
    dicom_studies = {c: study_of_first_file(c) for c in subfolders if c not in nifti_cases}
    dicom_studies = {c: s for c, s in dicom_studies.items() if s is not None}
    studies = set(dicom_studies.values())
    if own_nifti or own_study is not None:
        if own_study is not None:
            studies.add(own_study)
        if nifti_cases or len(studies) > 1:
            return "conflict", nifti_cases + sorted(dicom_studies)
        return "case", []
    if nifti_cases or len(studies) > 1:
        return "cases", sorted(nifti_cases + list(dicom_studies))
    if len(studies) == 1:
        return "case", []
    return "none", []


def is_scan_case_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is one scan case: NIfTI files named as a sequence or DICOM files directly in it
    (sub-folders of DICOM files of the same study belong to it), or only sub-folders of DICOM files that all
    belong to one study. Sub-folders that are cases themselves (their own NIfTI sequences, or DICOM of
    several studies) make a folder of cases; a folder with sequences of its own beside such case folders is
    neither (:func:`case_folders` says why)."""
    folder = Path(path)
    if not folder.is_dir() or is_ignored(folder):
        return False
    return _layout(folder)[0] == "case"


def case_folders(folder: str | os.PathLike) -> list[Path]:
    """The scan case folders directly inside ``folder`` (sorted by name).

    Raises:
        CaseError: ``folder`` holds sequences of its own (NIfTI files named as a sequence, or DICOM files)
            beside case folders: one line naming the folders, instead of taking the folder as one case and
            leaving the others out.
    """
    folder = Path(folder)
    layout, details = _layout(folder)
    if layout == "conflict":
        own = [p.name for p in _own_sequences(folder)] or ["DICOM files"]
        names = ", ".join(c.name for c in details[:3]) + (
            f" and {len(details) - 3} more" if len(details) > 3 else ""
        )
        raise CaseError(
            f"{folder}: holds sequences of its own ({own[0]}) beside case folders ({names}); "
            "move the files into a case folder of their own, or give the folders one by one"
        )
    if layout == "case":
        return []
    return [c for c in children(folder) if c.is_dir() and is_scan_case_folder(c)]


@dataclass
class _Candidate:
    reference: str
    label: str
    sequence: str | None


def _candidates(folder: Path) -> list[_Candidate]:
    found: list[_Candidate] = []
    for child in children(folder):
        if is_nifti(child):
            found.append(_Candidate(str(child), child.name, sequence_of_filename(child.name)))
    for place in [folder] + [c for c in children(folder) if c.is_dir()]:
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
        flair, t1, t1c: scan references (:mod:`pipeline.ingestion.dicom_files`); ``t1`` / ``t1c`` may be
            ``None``.
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
    name: str | None = None,
) -> dict:
    """The sequences of one scan case folder, recognised by name or given explicitly.

    Args:
        folder: the case folder (its name is the case name unless ``name`` is given).
        flair, t1, t1c: scan references that override recognition for that sequence.
        name: the case name.

    Returns:
        a case dict (:func:`make_scan_case`); a missing T1 or T1c is ``None``.

    Raises:
        CaseError: no FLAIR, or two candidates for one or more sequences (one line naming the folder and
            every ambiguity).
    """
    folder = Path(folder)
    given = {"flair": flair, "t1": t1, "t1c": t1c}
    candidates = _candidates(folder) if folder.is_dir() else []
    chosen: dict[str, str | None] = {}
    taken: dict[str, str] = {}
    ambiguous: list[str] = []
    for sequence in CASE_SEQUENCES:
        if given[sequence] is not None:
            chosen[sequence] = os.fspath(given[sequence])
            continue
        matches = [c for c in candidates if c.sequence == sequence]
        if len(matches) > 1:
            names = ", ".join(c.label for c in matches)
            ambiguous.append(
                f"{len(matches)} {sequence.upper()} candidates ({names}); keep one or pass --{sequence}"
            )
            continue
        chosen[sequence] = matches[0].reference if matches else None
        if matches:
            taken[sequence] = matches[0].label
    if ambiguous:
        raise CaseError(f"{folder}: " + "; ".join(ambiguous))
    if chosen["flair"] is None:
        names = ", ".join(c.label for c in candidates) or "nothing"
        raise CaseError(f"{folder}: no FLAIR found among {names}; name it *_flair.nii.gz or pass --flair")
    return make_scan_case(name or folder.name, chosen["flair"], chosen["t1"], chosen["t1c"], taken)


def find_scan_cases(path: str | os.PathLike) -> list[dict]:
    """The scan cases of a case folder, or of a folder of case folders (sorted by name).

    Raises:
        CaseError: no scan case there, a case folder without a FLAIR or with two candidates, sequences
            beside case folders.
    """
    path = Path(path)
    if is_scan_case_folder(path):
        return [find_scan_case(path)]
    cases = [find_scan_case(child) for child in case_folders(path)]
    if not cases:
        raise CaseError(
            f"{path}: no scan case found (no NIfTI sequence named as FLAIR, T1, T1c or T2, no DICOM)"
        )
    return cases
