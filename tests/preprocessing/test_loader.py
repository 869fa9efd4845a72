"""The raw-folder loader ``LoadLGGPatientd`` against the prepared NIfTI path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.transforms import LoadImaged

from pipeline.ingestion.errors import LGGDataError
from pipeline.ingestion.kaggle import discover_patients, make_affine
from pipeline.ingestion.prepare import prepare_dataset
from pipeline.ingestion.synthetic import write_synthetic_kaggle
from pipeline.transforms import LoadLGGPatientd


def _assert_same(raw: dict, nifti: dict) -> None:
    for key in ("image", "label"):
        assert raw[key].shape == nifti[key].shape
        assert raw[key].dtype == nifti[key].dtype
        assert torch.equal(raw[key].as_tensor(), nifti[key].as_tensor())
        assert torch.allclose(raw[key].affine.double(), nifti[key].affine.double())


def test_loader_equals_prepared_nifti_synthetic(tmp_path: Path) -> None:
    root = write_synthetic_kaggle(tmp_path / "k", num_patients=2, seed=4, size=32, slices=(5, 7))
    prepare_dataset(root, tmp_path / "out", num_folds=2, spacing=(0.9, 0.9, 2.5), workers=1)
    folder = discover_patients(root)[0]
    raw = LoadLGGPatientd(keys=("image", "label"), spacing=(0.9, 0.9, 2.5))({"image": str(folder)})
    nifti = LoadImaged(("image", "label"), ensure_channel_first=True, image_only=True)(
        {
            "image": tmp_path / "out" / folder.name / "image.nii.gz",
            "label": tmp_path / "out" / folder.name / "label.nii.gz",
        }
    )
    _assert_same(raw, nifti)
    assert raw["image"].shape[0] == 3 and raw["label"].shape[0] == 1
    assert raw["image"].meta["patient"] == folder.name
    assert torch.allclose(raw["image"].affine, torch.as_tensor(make_affine((0.9, 0.9, 2.5))))


@pytest.mark.realdata
def test_loader_equals_prepared_nifti_real(kaggle_root: Path, tmp_path: Path) -> None:
    patient = "TCGA_CS_4942_19970222"  # uncompressed TIFFs
    subset = tmp_path / "kaggle_3m"
    subset.mkdir()
    for name in (patient, "TCGA_DU_5849_19950405"):
        (subset / name).symlink_to(kaggle_root / name, target_is_directory=True)
    prepare_dataset(subset, tmp_path / "out", num_folds=2, workers=1)
    raw = LoadLGGPatientd()({"image": str(kaggle_root / patient), "label": str(kaggle_root / patient)})
    nifti = LoadImaged(("image", "label"), ensure_channel_first=True, image_only=True)(
        {
            "image": tmp_path / "out" / patient / "image.nii.gz",
            "label": tmp_path / "out" / patient / "label.nii.gz",
        }
    )
    _assert_same(raw, nifti)


def test_loader_reports_bad_folder(tmp_path: Path) -> None:
    root = write_synthetic_kaggle(tmp_path / "k", num_patients=1, seed=4, size=16, slices=(3, 3))
    folder = discover_patients(root)[0]
    (folder / f"{folder.name}_2_mask.tif").unlink()
    with pytest.raises(LGGDataError, match=f"patient {folder.name}: .*image without mask"):
        LoadLGGPatientd()({"image": str(folder)})
