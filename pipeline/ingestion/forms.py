"""Input forms: every way a user's data can arrive, detected, listed and loaded in one registry.

Each form is one class (:class:`InputForm`) and one registration (:func:`register_form`), as MONAI keeps
its image readers and nnU-Net its reader/writer registry; the project's network registry is the pattern.
A form says:

- :meth:`InputForm.claims`: whether a path (a file or a folder) is of this form;
- :meth:`InputForm.cases`: the cases of such a path (dicts with ``"case"`` (the name), ``"image"`` and
  ``"kind"``);
- :attr:`InputForm.kind` and :attr:`InputForm.loader`: how its cases are loaded: the dotted path of the
  MONAI dictionary transform that turns a case into ``image`` (and ``label``) MetaTensors, imported when
  first needed (the loaders live in :mod:`pipeline.preprocessing`, a layer above). Forms of one kind share
  one loader; a form that needs a loader of its own has a kind of its own;
- :meth:`InputForm.summary`: its columns of the summary table (which sequences were read, what stood in).

The registered forms, in the order a path is tried (:func:`form_of`):

=================  =========  ===========================================================================
form               kind       what
=================  =========  ===========================================================================
``datalist``       volume     a decathlon datalist file (``*.json``), or a prepared folder holding
                              ``datalist.json``
``kaggle_patient`` volume     a raw Kaggle patient folder (``<patient>_<k>.tif`` slices and masks; a folder
                              that also holds scans is a scan case, a stray picture does not change that)
``prepared``       volume     a prepared patient folder (``image.nii.gz``, optional ``label.nii.gz``)
``volume``         volume     a prepared 4D ``(H, W, D, 3)`` NIfTI image (or an unreadable NIfTI file,
                              which then fails when loaded, the other cases still processed)
``nifti_flair``    scans      a single 3D NIfTI file: a FLAIR alone (a file named as another sequence is
                              refused)
``scan_case``      scans      a scan case folder: NIfTI sequences or DICOM series of one study
                              (:mod:`pipeline.ingestion.scan_cases`)
=================  =========  ===========================================================================

A folder that is none of these is a **folder of cases**: each entry is tried in turn (:func:`folder_cases`),
and a folder holding sequences of its own beside case folders is refused in one line.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from pipeline.ingestion.datalist import DATALIST_FILENAME
from pipeline.ingestion.dicom_files import children, is_nifti
from pipeline.ingestion.errors import CaseError
from pipeline.ingestion.nifti import IMAGE_FILENAME
from pipeline.ingestion.scan_cases import (
    SCAN_KIND,
    case_folders,
    find_scan_case,
    is_scan_case_folder,
    make_scan_case,
)
from pipeline.ingestion.sequences import (
    CASE_SEQUENCES,
    NIFTI_SUFFIXES,
    OTHER_SEQUENCES,
    SEQUENCES,
    sequence_of_filename,
    strip_nifti_suffix,
)

logger = logging.getLogger(__name__)

__all__ = [
    "FORMS",
    "VOLUME_KIND",
    "InputForm",
    "folder_cases",
    "form_named",
    "form_of",
    "form_of_case",
    "loader_for",
    "register_form",
]

VOLUME_KIND = "volume"  # the data set's own forms: a 3-channel volume (and its label)
STAND_IN = "FLAIR (stand-in)"  # the summary's T1 / T1c cell when the FLAIR stood in for the sequence


def case_name(path: str | os.PathLike) -> str:
    """The name of the case an image path belongs to.

    ``<root>/<patient>/image.nii.gz`` -> ``<patient>``; ``<dir>/<name>.nii.gz`` -> ``<name>``; a folder -> its
    name (of the resolved path: ``.`` is the current folder's name).
    """
    p = Path(path)
    if p.name == IMAGE_FILENAME:
        return p.parent.name or Path(os.path.abspath(p)).parent.name
    if p.name.lower().endswith(NIFTI_SUFFIXES):
        return strip_nifti_suffix(p.name)
    return p.name if p.name not in ("", ".", "..") else Path(os.path.abspath(p)).name


class InputForm(ABC):
    """One way data can arrive (module docstring). Subclass it and :func:`register_form` an instance.

    Attributes:
        name: the form's name (recorded in each case as ``"form"``).
        kind: how its cases are loaded: ``"volume"`` (a 3-channel volume) or ``"scans"`` (sequences).
        loader: dotted path ``module:Class`` of the MONAI dictionary transform that loads its cases.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = VOLUME_KIND
    loader: ClassVar[str] = "pipeline.preprocessing.loading:LoadDataSetVolumed"

    @abstractmethod
    def claims(self, path: Path) -> bool:
        """Whether ``path`` is of this form (it exists)."""

    @abstractmethod
    def cases(self, path: Path) -> list[dict]:
        """The cases of ``path`` (a path this form claims).

        Raises:
            CaseError: one line naming the path and the problem.
        """

    def case(self, image: str | os.PathLike, name: str | None = None, **extra: Any) -> dict:
        """A case dict of this form: ``{"image", "case", "kind", ...}``."""
        return {"image": os.fspath(image), "case": name or case_name(image), "kind": self.kind, **extra}

    def summary(self, case: Mapping[str, Any]) -> dict[str, Any]:
        """This form's summary columns for ``case``: ``flair``, ``sequences``, ``t1``, ``t1c``."""
        return {"flair": str(case.get("image", "")), "sequences": list(SEQUENCES)}


FORMS: dict[str, InputForm] = {}
"""The registered forms, in the order a path is tried."""


def register_form(form: InputForm, before: str | None = None) -> InputForm:
    """Register an input form (tried in registration order, or just before the form named ``before``).

    Returns:
        the form.

    Raises:
        ValueError: a form of that name is registered already.
    """
    if form.name in FORMS:
        raise ValueError(f"an input form named {form.name!r} is registered already")
    items = list(FORMS.items())
    index = next((i for i, (name, _) in enumerate(items) if name == before), len(items))
    items.insert(index, (form.name, form))
    FORMS.clear()
    FORMS.update(items)
    return form


def form_named(name: str) -> InputForm:
    """The registered form called ``name``.

    Raises:
        KeyError: no such form.
    """
    try:
        return FORMS[name]
    except KeyError:
        raise KeyError(f"no input form {name!r}; registered: {', '.join(FORMS)}") from None


def form_of(path: str | os.PathLike) -> InputForm | None:
    """The first registered form that claims ``path`` (``None``: a folder of cases, or nothing known)."""
    path = Path(path)
    return next((form for form in FORMS.values() if form.claims(path)), None)


def form_of_case(case: Mapping[str, Any]) -> InputForm:
    """The first registered form of a case's kind (``"volume"`` when it has none): its loader and summary
    are the kind's."""
    kind = case.get("kind") or VOLUME_KIND
    try:
        return next(f for f in FORMS.values() if f.kind == kind)
    except StopIteration:
        raise KeyError(f"no input form loads cases of kind {kind!r}") from None


def loader_for(case: Mapping[str, Any]) -> type:
    """The loader class of a case's kind (:attr:`InputForm.loader`)."""
    module, _, name = form_of_case(case).loader.partition(":")
    return getattr(importlib.import_module(module), name)


def summary_of(case: Mapping[str, Any]) -> dict[str, Any]:
    """The summary columns of a case (:meth:`InputForm.summary` of its kind)."""
    return form_of_case(case).summary(case)


def folder_cases(folder: Path) -> tuple[list[dict], list[tuple[Path, str]]]:
    """The cases of a folder of cases: each entry tried with the registered forms.

    Returns:
        ``(cases, problems)``: the cases found, and ``[(entry, one-line problem)]`` of the entries that are
        cases but cannot be listed (a case folder without a FLAIR, with two candidates for a sequence):
        one bad case never hides the others.

    Raises:
        CaseError: the folder holds sequences of its own beside case folders.
    """
    case_folders(folder)  # refuses sequence files beside case folders
    found: list[dict] = []
    problems: list[tuple[Path, str]] = []
    for child in children(folder):
        if child.is_file() and not is_nifti(child) and child.suffix.lower() != ".json":
            continue
        if child.is_file() and child.suffix.lower() == ".json":
            continue  # a datalist inside a folder of cases is not taken unasked
        form = form_of(child)
        if form is None:
            continue
        try:
            found += form.cases(child)
        except CaseError as error:
            problems.append((child, str(error)))
    return found, problems


# ------------------------------------------------------------------------------------------------ the forms


class DatalistForm(InputForm):
    """A decathlon datalist file, or a prepared folder holding one."""

    name = "datalist"

    def claims(self, path: Path) -> bool:
        return (path.is_file() and path.suffix.lower() == ".json") or (
            path.is_dir() and (path / DATALIST_FILENAME).is_file()
        )

    def cases(self, path: Path) -> list[dict]:
        path = path / DATALIST_FILENAME if path.is_dir() else path
        try:
            entries = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CaseError(f"{path}: not a readable datalist ({err})") from err
        parts = [entries.get(k, []) for k in ("training", "test")] if isinstance(entries, dict) else [None]
        if not all(isinstance(part, list) for part in parts):
            raise CaseError(
                f"{path}: not a decathlon datalist ('training' and 'test' must be lists of entries)"
            )
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
            cases.append(self.case(image_path, patient or case_name(image_path)))
        return cases


def _kaggle_slices(folder: Path) -> bool:
    """Whether ``folder`` holds Kaggle slices (``<patient>_<k>.tif``) with at least one ``_mask.tif``."""
    names = [c.name.lower() for c in children(folder) if c.is_file()]
    tiffs = [n for n in names if n.endswith((".tif", ".tiff"))]
    return any(n.endswith(("_mask.tif", "_mask.tiff")) for n in tiffs) and len(tiffs) >= 2


class KagglePatientForm(InputForm):
    """A raw Kaggle patient folder: ``<patient>_<k>.tif`` slices with ``_mask`` files, and no scans."""

    name = "kaggle_patient"

    def claims(self, path: Path) -> bool:
        if not path.is_dir() or not _kaggle_slices(path):
            return False
        if is_scan_case_folder(path):  # scans beside a picture: the scans are the case
            return False
        return True

    def cases(self, path: Path) -> list[dict]:
        return [self.case(path)]


class PreparedPatientForm(InputForm):
    """A prepared patient folder (``image.nii.gz``, optional ``label.nii.gz``, from ``lggseg prepare``)."""

    name = "prepared"

    def claims(self, path: Path) -> bool:
        return path.is_dir() and (path / IMAGE_FILENAME).is_file()

    def cases(self, path: Path) -> list[dict]:
        return [self.case(path / IMAGE_FILENAME, case_name(path))]


def nifti_shape(path: Path) -> tuple[int, ...] | None:
    """A NIfTI file's shape from its header (``None``: unreadable)."""
    import nibabel as nib

    try:
        return tuple(int(s) for s in nib.load(str(path)).shape)
    except Exception:  # nibabel raises several types for a broken header: the loader reports it per case
        return None


def is_3d(shape: tuple[int, ...] | None) -> bool:
    """A 3D shape, or 4D and more with trailing size-1 axes."""
    return shape is not None and len(shape) >= 3 and all(size == 1 for size in shape[3:])


class VolumeForm(InputForm):
    """A prepared 4D ``(H, W, D, 3)`` NIfTI image; also a NIfTI file whose header cannot be read (its case
    then fails when loaded, naming the problem, while the others are processed)."""

    name = "volume"

    def claims(self, path: Path) -> bool:
        return is_nifti(path) and not is_3d(nifti_shape(path))

    def cases(self, path: Path) -> list[dict]:
        return [self.case(path)]


class NiftiFlairForm(InputForm):
    """A single 3D NIfTI file: a FLAIR alone (the FLAIR stands in for T1 and T1c)."""

    name = "nifti_flair"
    kind = SCAN_KIND
    loader = "pipeline.preprocessing.scan_chain:LoadScansd"

    def claims(self, path: Path) -> bool:
        return is_nifti(path) and is_3d(nifti_shape(path))

    def cases(self, path: Path) -> list[dict]:
        sequence = sequence_of_filename(path.name)
        if sequence == "label":
            return []  # a label beside the scans of a folder of files is not a case
        if sequence not in (None, "flair"):
            raise CaseError(
                f"{path}: a single 3D file named as {sequence.upper()}, not FLAIR; the model needs a FLAIR "
                "(pass it with --flair to use it anyway)"
            )
        return [make_scan_case(case_name(path), path)]

    def summary(self, case: Mapping[str, Any]) -> dict[str, Any]:
        used = [s for s in CASE_SEQUENCES if case.get(s)]
        return {
            "flair": str(case["flair"]),
            "sequences": used,
            **{s: str(case[s]) if case.get(s) else STAND_IN for s in OTHER_SEQUENCES},
        }


class ScanCaseForm(NiftiFlairForm):
    """A scan case folder: NIfTI sequences or DICOM series of one study
    (:mod:`pipeline.ingestion.scan_cases`)."""

    name = "scan_case"

    def claims(self, path: Path) -> bool:
        return is_scan_case_folder(path)

    def cases(self, path: Path) -> list[dict]:
        return [find_scan_case(path, name=case_name(path))]


for _form in (
    DatalistForm(),
    KagglePatientForm(),
    PreparedPatientForm(),
    VolumeForm(),
    NiftiFlairForm(),
    ScanCaseForm(),
):
    register_form(_form)
