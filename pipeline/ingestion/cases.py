"""What to segment: turn the paths a user gives into cases with unique names (floor 1).

A case is ``{"image": path, "case": name, "kind": "volume"}`` for the data set's own forms: a prepared
folder (with ``datalist.json``, or ``<patient>/image.nii.gz`` sub-folders), a datalist file, a 4D
``(H, W, D, 3)`` ``.nii`` / ``.nii.gz`` image, a folder of such images (the flat studies layout of MONAI
Label), a raw Kaggle patient folder (``*.tif`` slices), or a folder of patient folders (``kaggle_3m``).

A user's own scans give ``"kind": "scans"`` cases (:func:`pipeline.ingestion.scans.make_scan_case`: the
``image`` is the FLAIR, with ``flair``, ``t1``, ``t1c`` and ``sequences``): a scan case folder (NIfTI
sequences or DICOM series, :func:`pipeline.ingestion.scans.is_scan_case_folder`), a folder of them, or a
single 3D NIfTI file, taken as a FLAIR alone (a 3D header, or 4D with a trailing size-1 axis, read with
nibabel without the data; a file whose header cannot be read stays a ``"volume"`` case and fails when
loaded, with the other cases still processed). A folder is looked at in this order: ``*.tif`` slices, a
scan case folder, else its entries one by one.

The case name decides the output file name, so two cases with one name are refused before any work starts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import nibabel as nib

from pipeline.ingestion.datalist import DATALIST_FILENAME
from pipeline.ingestion.nifti import IMAGE_FILENAME
from pipeline.ingestion.scans import CaseError, find_scan_case, is_scan_case_folder, make_scan_case
from pipeline.ingestion.sequences import NIFTI_SUFFIXES, sequence_of_filename
from pipeline.ingestion.volume_checks import is_regular_file

__all__ = ["NIFTI_SUFFIXES", "CaseError", "case_name", "check_unique", "find_cases"]


def case_name(path: str | os.PathLike) -> str:
    """The name of the case an image path belongs to.

    ``<root>/<patient>/image.nii.gz`` -> ``<patient>``; ``<dir>/<name>.nii.gz`` -> ``<name>``; a raw patient
    folder -> its name.
    """
    p = Path(path)
    if p.name == IMAGE_FILENAME:
        return p.parent.name
    for suffix in NIFTI_SUFFIXES:
        if p.name.endswith(suffix):
            return p.name[: -len(suffix)]
    return p.name


def _is_nifti(path: Path) -> bool:
    return path.is_file() and path.name.endswith(NIFTI_SUFFIXES)


def _is_3d_nifti(path: Path) -> bool:
    """A 3D header (or 4D with trailing size-1 axes), read without the data; ``False`` when unreadable."""
    try:
        shape = nib.load(str(path)).shape
    except Exception:  # nibabel raises several types for a broken header: the loader reports it per case
        return False
    return len(shape) >= 3 and all(size == 1 for size in shape[3:])


def _nifti_case(path: Path, in_folder: bool = False) -> dict | None:
    """A NIfTI file as a case: a 3D file is a FLAIR alone, unless its name says another sequence (an error
    for a file given alone; a label in a folder of files is skipped)."""
    if not _is_3d_nifti(path):
        return {"image": str(path), "case": case_name(path), "kind": "volume"}
    sequence = sequence_of_filename(path.name)
    if sequence == "label" and in_folder:
        return None
    if sequence not in (None, "flair"):
        raise CaseError(
            f"{path}: a single 3D file named as {sequence.upper()}, not FLAIR; the model needs a FLAIR "
            "(pass it with --flair to use it anyway)"
        )
    return make_scan_case(case_name(path), path)


def _datalist_cases(path: Path) -> list[dict]:
    try:
        entries = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CaseError(f"{path}: not a readable datalist ({err})") from err
    parts = [entries.get(k, []) for k in ("training", "test")] if isinstance(entries, dict) else [None]
    if not all(isinstance(part, list) for part in parts):
        raise CaseError(f"{path}: not a decathlon datalist ('training' and 'test' must be lists of entries)")
    cases = []
    for index, item in enumerate(item for part in parts for item in part):
        image = item.get("image") if isinstance(item, dict) else item
        patient = item.get("patient") if isinstance(item, dict) else None
        if not isinstance(image, str) or not image or not isinstance(patient, (str, type(None))):
            raise CaseError(
                f"{path}: entry {index} needs 'image' as text (a path) and 'patient' as text if given, "
                f"got {json.dumps(item)[:80]}"
            )
        image_path = Path(image) if Path(image).is_absolute() else path.parent / image
        cases.append({"image": str(image_path), "case": patient or case_name(image_path), "kind": "volume"})
    return cases


def _folder_cases(folder: Path) -> list[dict]:
    if any(folder.glob("*.tif")):
        return [{"image": str(folder), "case": folder.name, "kind": "volume"}]
    if is_scan_case_folder(folder):
        return [find_scan_case(folder)]
    found = []
    for child in sorted(folder.iterdir()):
        if child.name.startswith("."):
            continue
        if _is_nifti(child):
            case = _nifti_case(child, in_folder=True)
            if case is not None:
                found.append(case)
        elif child.is_dir() and (child / IMAGE_FILENAME).is_file():
            found.append({"image": str(child / IMAGE_FILENAME), "case": child.name, "kind": "volume"})
        elif child.is_dir() and any(child.glob("*.tif")):
            found.append({"image": str(child), "case": child.name, "kind": "volume"})
        elif is_scan_case_folder(child):
            found.append(find_scan_case(child))
    return found


def find_cases(inputs: str | os.PathLike | Iterable[str | os.PathLike]) -> list[dict]:
    """Every case named by ``inputs`` (see the module docstring), in order.

    Args:
        inputs: one path or several.

    Returns:
        ``[{"image": path, "case": name, "kind": "volume" | "scans", ...}, ...]``.

    Raises:
        CaseError: a missing path, a path that is neither a folder nor a regular file, a path with no case
            in it, two cases with one name, a scan case folder without a FLAIR or with two candidates for
            one sequence.
    """
    paths = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    cases: list[dict] = []
    for item in paths:
        path = Path(item)
        if not path.exists():
            raise CaseError(f"{path}: not found")
        if not path.is_dir() and not is_regular_file(path):  # a named pipe would block the reader forever
            raise CaseError(f"{path}: not a regular file (a named pipe, socket or device); give a file")
        if path.is_file() and path.suffix == ".json":
            found = _datalist_cases(path)
        elif path.is_dir() and (path / DATALIST_FILENAME).is_file():
            found = _datalist_cases(path / DATALIST_FILENAME)
        elif _is_nifti(path):
            found = [_nifti_case(path)]
        elif path.is_dir():
            found = _folder_cases(path)
        else:
            found = []
        if not found:
            raise CaseError(
                f"{path}: no case found (expected a NIfTI image, a folder of them, a prepared folder, "
                "a datalist, Kaggle patient folders, or scan case folders of NIfTI or DICOM sequences)"
            )
        cases += found
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
