"""What to segment: turn the paths a user gives into cases with unique names (floor 1).

A case is ``{"image": path, "case": name}``. Accepted inputs: a prepared folder (with ``datalist.json``,
or ``<patient>/image.nii.gz`` sub-folders), a datalist file, a single ``.nii`` / ``.nii.gz`` image, a
folder of such images (the flat studies layout of MONAI Label), a raw Kaggle patient folder
(``*.tif`` slices), or a folder of patient folders (``kaggle_3m``). The case name decides the output
file name, so two cases with one name are refused before any work starts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from pipeline.ingestion.datalist import DATALIST_FILENAME
from pipeline.ingestion.nifti import IMAGE_FILENAME

NIFTI_SUFFIXES = (".nii.gz", ".nii")


class CaseError(ValueError):
    """A path that names no case, or two cases with the same name (one line, naming the paths)."""


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


def _datalist_cases(path: Path) -> list[dict]:
    try:
        entries = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CaseError(f"{path}: not a readable datalist ({err})") from err
    items = entries.get("training", []) + entries.get("test", []) if isinstance(entries, dict) else []
    cases = []
    for item in items:
        image = item["image"] if isinstance(item, dict) else item
        image_path = Path(image) if Path(image).is_absolute() else path.parent / image
        cases.append({"image": str(image_path), "case": item.get("patient") or case_name(image_path)})
    return cases


def _folder_cases(folder: Path) -> list[dict]:
    if any(folder.glob("*.tif")):
        return [{"image": str(folder), "case": folder.name}]
    found = []
    for child in sorted(folder.iterdir()):
        if child.name.startswith("."):
            continue
        if _is_nifti(child):
            found.append({"image": str(child), "case": case_name(child)})
        elif child.is_dir() and (child / IMAGE_FILENAME).is_file():
            found.append({"image": str(child / IMAGE_FILENAME), "case": child.name})
        elif child.is_dir() and any(child.glob("*.tif")):
            found.append({"image": str(child), "case": child.name})
    return found


def find_cases(inputs: str | os.PathLike | Iterable[str | os.PathLike]) -> list[dict]:
    """Every case named by ``inputs`` (see the module docstring), in order.

    Args:
        inputs: one path or several.

    Returns:
        ``[{"image": path, "case": name}, ...]``.

    Raises:
        CaseError: a missing path, a path with no case in it, or two cases with one name.
    """
    paths = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    cases: list[dict] = []
    for item in paths:
        path = Path(item)
        if not path.exists():
            raise CaseError(f"{path}: not found")
        if path.is_file() and path.suffix == ".json":
            found = _datalist_cases(path)
        elif path.is_dir() and (path / DATALIST_FILENAME).is_file():
            found = _datalist_cases(path / DATALIST_FILENAME)
        elif _is_nifti(path):
            found = [{"image": str(path), "case": case_name(path)}]
        elif path.is_dir():
            found = _folder_cases(path)
        else:
            found = []
        if not found:
            raise CaseError(
                f"{path}: no case found (expected a NIfTI image, a folder of them, a prepared folder, "
                "a datalist or Kaggle patient folders)"
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
