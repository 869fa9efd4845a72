"""Folder studies: a user's own scans, one scan case folder per study in the studies folder.

A scan case folder (``pipeline.ingestion.scan_cases``: one NIfTI file or DICOM series per sequence, FLAIR
required, T1 and T1c optional) placed directly in the studies folder is one study; its id is the folder's
name. The app reads it with the pipeline's own :func:`pipeline.ingestion.scan_cases.find_scan_case` and
:func:`pipeline.ingestion.scan_reading.read_scan` (the chain of ``lggseg infer`` and the bundle), so its
label is on the FLAIR's grid (shape and RAS affine of :func:`pipeline.ingestion.scan_reading.ras_affine`).

A folder is a study only when it is a real folder (not a symlink), its name is a plain study id
(:data:`pipeline.ingestion.studies.STUDY_ID`, not ending in ``.nii`` / ``.nii.gz``), it is not the labels
folder, and no entry in it or in its sub-folders is a symlink leading outside the studies folder; a folder
that fails one of these is left out with a warning in the log. The server never writes into such a folder.

Listing looks at the folder in place (after :func:`links_out`); everything else reads a private copy made
by :func:`lib.confined.snapshot_folder` (a link swapped in later is never followed out of the studies
folder): :func:`read_flair`, :func:`flair_grid`, :func:`flair_file` and :func:`write_flair_nifti` take that
copy.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pipeline.ingestion.scan_cases import find_scan_case, is_scan_case_folder
from pipeline.ingestion.scan_reading import ras_affine, read_scan
from pipeline.ingestion.sequences import NIFTI_SUFFIXES
from pipeline.ingestion.studies import STUDY_ID
from pipeline.safety import is_inside

logger = logging.getLogger(__name__)

FOLDER_EXT = ""  # a folder study's ``ext`` in the datastore: its entry is the folder itself


def links_out(folder: Path, root: Path, depth: int = 2) -> list[Path]:
    """The symlinks in ``folder`` (and its sub-folders, ``depth`` levels) that lead outside ``root``.

    Args:
        folder: a candidate folder study.
        root: the studies folder.
        depth: how many levels to look at (a scan case folder is read one level down).

    Returns:
        the offending links (empty when none).
    """
    found: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return found
    for entry in entries:
        path = Path(entry.path)
        if entry.is_symlink():
            if not is_inside(path, root):
                found.append(path)
        elif depth > 1 and entry.is_dir(follow_symlinks=False):
            found += links_out(path, root, depth - 1)
    return found


def folder_studies(root: Path, skip: set[str]) -> dict[str, Path]:
    """The folder studies of a studies folder (module docstring), by id.

    Args:
        root: the studies folder (resolved).
        skip: names that are not studies (the labels folder, ids already taken by files).

    Returns:
        ``{id: folder}``, sorted by id.
    """
    studies: dict[str, Path] = {}
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError:
        return studies
    for entry in entries:
        name = entry.name
        if name in skip or name.startswith(".") or name.lower().endswith(NIFTI_SUFFIXES):
            continue
        if not entry.is_dir(follow_symlinks=False):
            continue  # files are LocalDatastore's; a symlink to a folder is never followed
        folder = Path(entry.path)
        outside = links_out(folder, root)  # first: nothing outside is opened to look at the folder
        if outside:
            logger.warning(
                "%s: not a study: %s leads outside the studies folder (copy the files in instead)",
                folder,
                outside[0],
            )
            continue
        if not is_scan_case_folder(folder):
            continue
        if not STUDY_ID.match(name):
            logger.warning("%s: a scan case folder, but %r is not a plain study id: not listed", folder, name)
            continue
        studies[name] = folder
    return studies


def is_folder_study(root: Path, folder: str | os.PathLike) -> bool:
    """Whether ``folder`` is still a folder study of ``root`` (real folder, scan case, no link out)."""
    path = Path(folder)
    return (
        not path.is_symlink()
        and path.is_dir()
        and path.parent.resolve() == root
        and not links_out(path, root)
        and is_scan_case_folder(path)
    )


def scan_case(folder: str | os.PathLike) -> dict:
    """The case dict of a folder study: :func:`pipeline.ingestion.scan_cases.find_scan_case` (one source of
    truth).

    Raises:
        pipeline.ingestion.errors.CaseError: no FLAIR, or two candidates for one sequence.
    """
    return find_scan_case(folder)


def read_flair(folder: str | os.PathLike) -> sitk.Image:
    """The FLAIR of a folder study, read by the pipeline's reader (NIfTI file or DICOM series).

    Raises:
        pipeline.ingestion.errors.CaseError: the folder names no FLAIR (or two).
        pipeline.ingestion.errors.LGGDataError: the FLAIR cannot be read.
    """
    return read_scan(scan_case(folder)["flair"])


def flair_grid(folder: str | os.PathLike) -> tuple[tuple[int, ...], np.ndarray]:
    """The grid a folder study's label lies on: the FLAIR's ``(H, W, D)`` and RAS affine (the geometry
    the inference chain maps its prediction back onto).

    Returns:
        the shape and the 4 x 4 affine.
    """
    flair = read_flair(folder)
    return tuple(int(s) for s in flair.GetSize()), ras_affine(flair)


def flair_file(folder: str | os.PathLike) -> Path | None:
    """The FLAIR of a folder study as a file a viewer can open: the NIfTI file itself, ``None`` for a DICOM
    series (see :func:`write_flair_nifti`)."""
    flair = Path(scan_case(folder)["flair"])
    return flair if flair.is_file() and flair.name.lower().endswith(NIFTI_SUFFIXES) else None


def write_flair_nifti(folder: str | os.PathLike, target: Path) -> Path:
    """Write a folder study's FLAIR (e.g. a DICOM series) as a NIfTI file, in the geometry the pipeline reads.

    Args:
        folder: the folder study.
        target: the file to write (``.nii.gz``), outside the studies folder (a temporary file).

    Returns:
        ``target``.
    """
    sitk.WriteImage(read_flair(folder), str(target), True)
    return target
