"""What to segment: turn the paths a user gives into cases with unique, safe names.

Each path is given to the input-form registry (:mod:`pipeline.ingestion.forms`): the first form that claims
it lists its cases; a folder that no form claims is a folder of cases, whose entries are tried one by one.
A case is a dict with ``"case"`` (its name), ``"image"``, ``"form"`` and ``"kind"`` (``"volume"`` for the data
set's own forms, ``"scans"`` for a user's sequences: :func:`pipeline.ingestion.scan_cases.make_scan_case`).

The case name decides the output file names, so:

- a name that cannot name a file in the output folder (empty, ``.``, ``..``, a path separator, a control
  character, a leading ``.``, over :data:`MAX_NAME_LENGTH` characters; a datalist's ``patient`` such as
  ``../../x``) is refused in one line (:func:`check_case_name`);
- the same input given twice is segmented once (said in the log);
- two different inputs with one name are refused before any work starts (:func:`check_unique`).
"""

from __future__ import annotations

import logging
import os
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path

from pipeline.ingestion.errors import CaseError
from pipeline.ingestion.forms import case_name, folder_cases, form_of
from pipeline.ingestion.sequences import CASE_SEQUENCES, NIFTI_SUFFIXES
from pipeline.ingestion.volume_checks import is_regular_file

logger = logging.getLogger(__name__)

__all__ = [
    "MAX_NAME_LENGTH",
    "NIFTI_SUFFIXES",
    "CaseError",
    "case_name",
    "check_case_name",
    "check_unique",
    "find_cases",
]

MAX_NAME_LENGTH = 200


def check_case_name(name: object, source: str | os.PathLike) -> str:
    """A case name that can name files in the output folder, or a one-line error.

    Args:
        name: the name (a folder's or file's name, a datalist's ``patient``).
        source: where it comes from (named in the message).

    Returns:
        the name.

    Raises:
        CaseError: empty, ``.`` or ``..``, a path separator, a control character, a leading ``.``, too long.
    """
    text = name if isinstance(name, str) else ""
    problem = None
    if not text.strip():
        problem = "is empty"
    elif text in (".", ".."):
        problem = "is a relative folder"
    elif "/" in text or "\\" in text:
        problem = "holds a path separator"
    elif any(unicodedata.category(c) == "Cc" for c in text):
        problem = "holds a control character"
    elif text.startswith("."):
        problem = "starts with '.' (a hidden file)"
    elif len(text) > MAX_NAME_LENGTH:
        problem = f"is longer than {MAX_NAME_LENGTH} characters"
    if problem:
        raise CaseError(
            f"{source}: case name {text!r} {problem} and cannot name the output files; "
            "rename the case (or its datalist 'patient')"
        )
    return text


def _identity(case: dict) -> tuple[str, ...]:
    """What a case reads, resolved: the same input given twice has one identity."""
    refs = [case.get(k) for k in ("image", *CASE_SEQUENCES)]
    return tuple(os.path.realpath(r) if r and not str(r).startswith("dicom:") else str(r or "") for r in refs)


def _cases_of(path: Path, problems: list[tuple[Path, str]] | None) -> list[dict]:
    form = form_of(path)
    if form is not None:
        return form.cases(path)
    if path.is_dir():
        found, bad = folder_cases(path)
        if bad and problems is None:
            raise CaseError(bad[0][1])
        if problems is not None:
            problems += bad
        if found or bad:
            return found
    return []


def find_cases(
    inputs: str | os.PathLike | Iterable[str | os.PathLike],
    problems: list[tuple[Path, str]] | None = None,
) -> list[dict]:
    """Every case named by ``inputs`` (module docstring), in order.

    Args:
        inputs: one path or several.
        problems: when given, the entries of a folder of cases that cannot be listed (a case folder without
            a FLAIR, with two candidates for a sequence) are appended here as ``(path, one-line problem)``
            and the other cases are still returned; otherwise the first such problem is raised.

    Returns:
        ``[{"image", "case", "form", "kind", ...}, ...]``.

    Raises:
        CaseError: a missing path, a path that is neither a folder nor a regular file, a path with no case
            in it, a case name that cannot name a file, two cases with one name, a case folder given
            directly without a FLAIR or with two candidates for a sequence, sequences beside case folders.
    """
    paths = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    cases: list[dict] = []
    seen: dict[tuple[str, ...], str] = {}
    for item in paths:
        path = Path(item)
        if not path.exists():
            raise CaseError(f"{path}: not found")
        if not path.is_dir() and not is_regular_file(path):  # a named pipe would block the reader forever
            raise CaseError(f"{path}: not a regular file (a named pipe, socket or device); give a file")
        before = len(problems) if problems is not None else 0
        found = _cases_of(path, problems)
        if not found and (problems is None or len(problems) == before):
            raise CaseError(
                f"{path}: no case found (expected a NIfTI image, a folder of them, a prepared folder, "
                "a datalist, Kaggle patient folders, or scan case folders of NIfTI or DICOM sequences)"
            )
        for case in found:
            check_case_name(case["case"], case.get("image", path))
            identity = _identity(case)
            if identity in seen:
                logger.info("%s: given twice (as %s); segmented once", case["image"], seen[identity])
                continue
            seen[identity] = case["case"]
            cases.append(case)
    check_unique(cases)
    return cases


def check_unique(cases: Sequence[dict]) -> None:
    """Refuse two cases with one name: their outputs would land on one file.

    Raises:
        CaseError: naming both inputs.
    """
    seen: dict[str, str] = {}
    for case in cases:
        other = seen.setdefault(case["case"], case["image"])
        if other != case["image"]:
            raise CaseError(
                f"{case['image']}: case name {case['case']!r} is also the name of {other}; "
                "their predictions would share one file: rename one or segment them separately"
            )
