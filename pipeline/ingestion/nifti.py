"""NIfTI files of the prepared data set: writing a patient's volumes, reading a label back in the project's
orientation.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import nibabel as nib
import numpy as np

from pipeline.ingestion.errors import LGGDataError
from pipeline.ingestion.kaggle import ORIENTATION, PatientVolume
from pipeline.ingestion.volume_checks import check_regular_file
from pipeline.safety import (
    atomic_path,
)

logger = logging.getLogger(__name__)

IMAGE_FILENAME = "image.nii.gz"
LABEL_FILENAME = "label.nii.gz"


def save_nifti(array: np.ndarray, affine: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an array as (compressed) NIfTI atomically: to a temporary name, then rename.

    Args:
        array: spatial axes first (H, W, D[, C]).
        affine: 4x4 voxel-to-world matrix (RAS, mm).
        path: destination, ``.nii`` or ``.nii.gz``.

    Returns:
        the written path.
    """
    path = Path(path)
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    if array.ndim == 4:
        image.header.set_intent("vector", (), name="MRI channels")
    with atomic_path(path) as tmp:
        nib.save(image, tmp)
    return path


def write_patient_nifti(volume: PatientVolume, patient_dir: str | os.PathLike) -> dict[str, Path]:
    """Write one patient's ``image.nii.gz`` (H, W, D, 3) and ``label.nii.gz`` (H, W, D).

    Args:
        volume: the stacked volumes from :func:`read_patient_folder`.
        patient_dir: the patient's output folder (created).

    Returns:
        ``{"image": path, "label": path}``.
    """
    patient_dir = Path(patient_dir)
    patient_dir.mkdir(parents=True, exist_ok=True)
    image = np.ascontiguousarray(volume.image.transpose(1, 2, 3, 0))  # channel-last for NIfTI
    return {
        "image": save_nifti(image, volume.affine, patient_dir / IMAGE_FILENAME),
        "label": save_nifti(volume.label[0], volume.affine, patient_dir / LABEL_FILENAME),
    }


def load_label_volume(path: str | os.PathLike) -> tuple[np.ndarray, str]:
    """Read a label (or predicted label) NIfTI and bring it to the project's orientation (P, L, S).

    Args:
        path: a NIfTI label volume, e.g. ``label.nii.gz`` or a prediction written by ``lggseg infer``.

    Returns:
        ``(mask, convention)``: a uint8 (H, W, D) array with values 0/1 where ``mask[..., k]`` is slice k + 1,
        and a note of any reorientation applied.

    Raises:
        LGGDataError: missing or not a regular file (a named pipe is never opened), unreadable file, not 3D
            (a trailing channel axis of size 1 is accepted), or values other than {0, 1} / {0, 255}.
    """
    path = check_regular_file(path, "label file")
    try:
        image = nib.load(path)
        data = np.asanyarray(image.dataobj)
    except Exception as error:
        raise LGGDataError(f"{path}: cannot read the NIfTI label ({type(error).__name__}: {error})") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise LGGDataError(f"{path}: expected a 3D label volume, got shape {data.shape}")
    values = {float(v) for v in np.unique(data)}
    if not (values <= {0.0, 1.0} or values <= {0.0, 255.0}):
        raise LGGDataError(f"{path}: label values {sorted(values)[:8]} are not in {{0, 1}} or {{0, 255}}")
    current = nib.orientations.io_orientation(image.affine)
    wanted = nib.orientations.axcodes2ornt(ORIENTATION)
    note = ""
    if not np.array_equal(current, wanted):
        data = nib.orientations.apply_orientation(data, nib.orientations.ornt_transform(current, wanted))
        note = f"reoriented from {''.join(nib.orientations.ornt2axcodes(current))} to {''.join(ORIENTATION)}"
    return (np.asarray(data) > 0).astype(np.uint8), note
