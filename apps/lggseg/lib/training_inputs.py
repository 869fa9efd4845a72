"""The training input of a study: what the inference feeds the network, with the label on the same grid.

Fine-tuning trains on the input the inference uses, whatever the study is: a prepared ``(H, W, D, 3)`` volume,
a FLAIR alone (3D Slicer's upload of a user's own scan; the FLAIR stands in for the missing T1 and T1c), or a
folder of the user's scans (:mod:`lib.scan_studies`). Each study is read as the inference reads it (the case
of :func:`pipeline.ingestion.cases.find_cases` or :func:`pipeline.ingestion.scan_cases.find_scan_case`)
through the steps of the pipeline's evaluation chain (:func:`pipeline.transforms.build_transforms` ``"val"``:
the inference chain plus a label) up to the normalisation: the loader, then the steps onto the model's grid
(:class:`pipeline.preprocessing.model_grid.ToModelGridd`), which bring the label (on the study's own grid:
the FLAIR's for scans) onto the same grid (nearest neighbour). The result is written as a prepared pair in a
scratch folder; the bundle's ``train.json`` then reads and normalises it as any study.

The pipeline's ``LoadVolumed`` loads no label for a ``"kind": "scans"`` case (its chains never needed one), so
the label is loaded here, as a ``MetaTensor`` carrying the image's geometry.

Every study is read from a private copy (:meth:`lib.datastore.CheckedDatastore.readable_study`: never
outside the studies folder). A study that cannot be used (unreadable, no FLAIR, a label that does not fit,
a file leading outside the studies folder) is skipped with one line; it never fails the others.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from fastapi import HTTPException
from monai.data import MetaTensor
from monailabel.interfaces.datastore import DefaultLabelTag

from lib.datastore import CheckedDatastore
from lib.study_files import check_label_file
from pipeline.engines import innermost_error
from pipeline.ingestion.cases import find_cases
from pipeline.ingestion.scan_cases import find_scan_case
from pipeline.transforms import IMAGE_KEY, LABEL_KEY, BrainNormalized, LoadVolumed, build_transforms

logger = logging.getLogger(__name__)

IMAGE_SUFFIX = "_image.nii"  # scratch files: uncompressed, read once by the training chain
LABEL_SUFFIX = "_label.nii"


@dataclass
class TrainingInputs:
    """The studies fine-tuning uses and those it skips.

    Args:
        datalist: ``[{"image", "label", "case"}]`` written in the scratch folder, for ``train.json``'s splits.
        skipped: one line per study left out, ``"<id>: <why>"``.
    """

    datalist: list[dict[str, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def case_of(copy: Path) -> dict[str, Any]:
    """The case the inference makes of a study's copy: a scan case for a folder or a FLAIR alone, a
    ``"volume"`` case for a prepared study.

    Raises:
        pipeline.ingestion.cases.CaseError: no FLAIR, two candidates for one sequence, a 3D file named as
            another sequence.
    """
    return find_scan_case(copy) if copy.is_dir() else find_cases(copy)[0]


def _grid_steps() -> list[Any]:
    """The evaluation chain's steps before the normalisation: the loader, then the steps onto the model's
    grid (the training chain normalises by itself)."""
    steps = []
    for step in build_transforms("val").transforms:
        if isinstance(step, BrainNormalized):
            break
        steps.append(step)
    return steps


def _label_like(image: MetaTensor, path: Path) -> MetaTensor:
    """A label file as a ``(1, H, W, D)`` uint8 ``MetaTensor`` with the image's geometry and metadata (its
    grid was checked against the image's before)."""
    data = np.asanyarray(nib.load(path).dataobj)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    voxels = torch.as_tensor(data[None].astype(np.uint8))
    meta = {key: value for key, value in image.meta.items() if key != "affine"}
    return MetaTensor(voxels, affine=image.affine.clone(), meta=meta)


def prepare_pair(image_copy: Path, label_copy: Path, out_dir: Path, name: str) -> dict[str, str]:
    """Write one study's training input: the image on the model's grid as the inference sees it (before
    normalisation), ``(H, W, D, 3)`` float32, and its label on that grid, ``(H, W, D)`` uint8.

    Args:
        image_copy: the study's private copy (a file or a scan case folder).
        label_copy: the label's private copy (on the study's grid: the FLAIR's for scans).
        out_dir: the scratch folder.
        name: the study id (file names).

    Returns:
        ``{"image", "label", "case"}``.

    Raises:
        HTTPException: 422 a label that does not fit its image (shape, geometry, values).
        Exception: whatever the pipeline's readers raise for an unusable study (one line naming the file).
    """
    d: dict[str, Any] = {**case_of(image_copy), LABEL_KEY: str(label_copy)}
    steps = _grid_steps()
    for step in steps:
        d = step(d)
        if isinstance(step, LoadVolumed):
            image = d[IMAGE_KEY]
            grid = (tuple(int(n) for n in image.shape[1:]), np.asarray(image.affine, dtype=np.float64))
            check_label_file(label_copy, None, grid=grid)
            d[LABEL_KEY] = _label_like(image, label_copy)
    image, label = d[IMAGE_KEY], d[LABEL_KEY]
    affine = np.asarray(image.affine, dtype=np.float64)
    image_path, label_path = out_dir / f"{name}{IMAGE_SUFFIX}", out_dir / f"{name}{LABEL_SUFFIX}"
    volume = np.moveaxis(np.asarray(image.detach().cpu(), dtype=np.float32), 0, -1)
    nib.save(nib.Nifti1Image(volume, affine), image_path)
    mask = (np.asarray(label.detach().cpu())[0] > 0).astype(np.uint8)
    nib.save(nib.Nifti1Image(mask, affine), label_path)
    return {IMAGE_KEY: str(image_path), LABEL_KEY: str(label_path), "case": name}


def _reason(error: BaseException) -> str:
    """One line: an HTTP answer's detail, else the innermost error of the pipeline's chain."""
    if isinstance(error, HTTPException):
        return str(error.detail)
    cause = innermost_error(error)
    return f"{type(cause).__name__}: {' '.join(str(cause).split())}"


def training_inputs(store: CheckedDatastore, out_dir: Path) -> TrainingInputs:
    """The training input of every study with a final label, written into ``out_dir``.

    Args:
        store: the datastore (its studies are read from private copies, inside the studies folder only).
        out_dir: a scratch folder of the training (the copies and the prepared pairs go there).

    Returns:
        the datalist and the studies skipped, each with one line (also logged).
    """
    result = TrainingInputs()
    copies = out_dir / "copies"
    copies.mkdir(parents=True, exist_ok=True)
    for image_id in sorted(store.get_labeled_images()):
        try:
            folder = copies / image_id
            folder.mkdir()
            image_copy = store.readable_study(image_id, folder)
            label_copy = store.readable_label(image_id, DefaultLabelTag.FINAL, folder)
            result.datalist.append(prepare_pair(image_copy, label_copy, out_dir, image_id))
        except Exception as error:  # noqa: BLE001 - one study never fails the others
            line = f"{image_id}: {_reason(error)}"
            logger.warning("fine-tuning skips the study %s", line)
            result.skipped.append(line)
    return result
