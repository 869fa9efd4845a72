"""The contract every input form passes (issue 29): found by the registry, loaded by its form's loader,
brought onto the model's grid, and mapped back by MONAI ``Invertd`` onto exactly the grid it came from.

A new form is covered by registering it and adding an example writer to :data:`EXAMPLES`; the first test
fails for a registered form without one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.data import MetaTensor
from monai.transforms import Invertd

from pipeline.ingestion.cases import find_cases
from pipeline.ingestion.forms import FORMS, form_of
from pipeline.ingestion.prepare import prepare_dataset
from pipeline.ingestion.synthetic import write_synthetic_kaggle
from pipeline.transforms import build_transforms


def _head(shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    return (((grid**2).sum(0) < 0.8) * (200 + 30 * rng.standard_normal(shape))).astype(np.float32)


def _oblique(spacing=(0.8, 0.8, 4.0), degrees=12.0) -> np.ndarray:
    """A sagittal, slightly oblique affine (slices along left-right)."""
    a = np.deg2rad(degrees)
    rotation = np.array([[0, 0, 1.0], [np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation * np.asarray(spacing)
    affine[:3, 3] = (-40.0, 30.0, -20.0)
    return affine


def _kaggle(root: Path) -> tuple[Path, Path]:
    write_synthetic_kaggle(root / "kaggle_3m", num_patients=2, seed=0, size=64, slices=(8, 9))
    patient = sorted(p for p in (root / "kaggle_3m").iterdir() if p.is_dir())[0]
    return patient, patient


def _prepared(root: Path) -> Path:
    write_synthetic_kaggle(root / "kaggle_3m", num_patients=2, seed=0, size=64, slices=(8, 9))
    prepare_dataset(root / "kaggle_3m", root / "prepared", num_folds=2, seed=0, workers=1)
    return root / "prepared"


def _datalist(root: Path) -> tuple[Path, Path]:
    prepared = _prepared(root)
    entry = json.loads((prepared / "datalist.json").read_text())["training"][0]
    return prepared / "datalist.json", prepared / entry["image"]


def _prepared_patient(root: Path) -> tuple[Path, Path]:
    prepared = _prepared(root)
    patient = sorted(p for p in prepared.iterdir() if p.is_dir())[0]
    return patient, patient / "image.nii.gz"


def _volume(root: Path) -> tuple[Path, Path]:
    path = root / "scan.nii.gz"
    data = np.stack([_head((36, 40, 7), seed=s) for s in range(3)], axis=-1)
    nib.save(nib.Nifti1Image(data, _oblique()), path)
    return path, path


def _nifti_flair(root: Path) -> tuple[Path, Path]:
    path = root / "patient_x.nii.gz"
    nib.save(nib.Nifti1Image(_head((36, 40, 7)), _oblique()), path)
    return path, path


def _scan_case_nifti(root: Path) -> tuple[Path, Path]:
    case = root / "case"
    case.mkdir()
    nib.save(nib.Nifti1Image(_head((36, 40, 7)), _oblique()), case / "c_flair.nii.gz")
    t1 = np.diag([1.0, 1.0, 1.0, 1.0])
    t1[:3, 3] = (-50.0, 20.0, -30.0)
    nib.save(nib.Nifti1Image(_head((48, 50, 50), seed=1), t1), case / "c_t1.nii.gz")  # another grid
    return case, case / "c_flair.nii.gz"


def _scan_case_dicom(root: Path) -> tuple[Path, Path]:
    case = root / "dicom_case"
    series = case / "flair"
    series.mkdir(parents=True)
    image = sitk.GetImageFromArray(_head((6, 30, 34)).astype(np.int16))
    image.SetSpacing((0.9, 0.9, 5.0))
    image.SetOrigin((-20.0, -15.0, 30.0))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    study, uid = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"
    for k in range(6):
        plane = image[:, :, k]
        tags = {
            "0008|0060": "MR",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.4",
            "0008|0018": f"{uid}.{k + 1}",
            "0008|103e": "AX FLAIR",
            "0020|000d": study,
            "0020|000e": uid,
            "0020|0052": "1.2.826.0.1.3680043.8.498.3",
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{p:.4f}" for p in image.TransformIndexToPhysicalPoint((0, 0, k))),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|0030": "0.9\\0.9",
        }
        for tag, value in tags.items():
            plane.SetMetaData(tag, value)
        writer.SetFileName(str(series / f"IM{k}.dcm"))
        writer.Execute(plane)
    return case, series


#: form name -> writer of an example in a folder: returns (the path given, the file or folder whose grid the
#: mask must land on)
EXAMPLES: dict[str, Callable[[Path], tuple[Path, Path]]] = {
    "datalist": _datalist,
    "kaggle_patient": _kaggle,
    "prepared": _prepared_patient,
    "volume": _volume,
    "nifti_flair": _nifti_flair,
    "scan_case": _scan_case_nifti,
}
EXTRA_EXAMPLES = {"scan_case (DICOM)": ("scan_case", _scan_case_dicom)}


def test_every_registered_form_has_a_contract_example():
    assert set(FORMS) == set(EXAMPLES), "register an example of each input form in EXAMPLES"


def _grid_of(reference: Path) -> tuple[tuple[int, ...], np.ndarray]:
    """The voxel grid the mask must land on: the file's (nibabel) or the DICOM series' (SimpleITK)."""
    if reference.is_dir() and any(reference.glob("*.tif")):
        from pipeline.ingestion.kaggle import read_patient_folder

        volume = read_patient_folder(reference)
        return volume.label.shape[1:], volume.affine
    if reference.is_dir():
        from pipeline.ingestion.scan_reading import read_scan_volume

        scan = read_scan_volume(reference)
        return tuple(scan.image.GetSize()), scan.affine
    image = nib.load(reference)
    return image.shape[:3], image.affine


CASES = {**{name: (name, writer) for name, writer in EXAMPLES.items()}, **EXTRA_EXAMPLES}


@pytest.mark.parametrize("form, writer", list(CASES.values()), ids=list(CASES))
def test_each_form_loads_and_its_prediction_lands_on_its_own_grid(tmp_path, form, writer):
    given, reference = writer(tmp_path)
    assert form_of(given).name == form
    case = find_cases(given)[0]
    chain = build_transforms("infer")
    item = chain(case)
    image = item["image"]
    assert image.ndim == 4 and image.shape[0] == 3 and bool(torch.isfinite(image).all())
    pred = MetaTensor(image[1:2].clone(), meta=image.meta)  # a "probability" on the model's grid
    pred.applied_operations = list(image.applied_operations)
    back = Invertd("pred", transform=chain, orig_keys="image", nearest_interp=False)(
        {"pred": pred, "image": image}
    )["pred"]
    shape, affine = _grid_of(reference)
    assert tuple(back.shape[1:]) == tuple(shape)
    np.testing.assert_allclose(np.asarray(back.affine), affine, atol=1e-3)
