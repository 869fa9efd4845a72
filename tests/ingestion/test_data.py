"""Ingestion: stacking, NIfTI geometry, datalist and folds, export-kaggle, and every bad input."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
from monai.data import load_decathlon_datalist

from pipeline.cli import main as lggseg
from pipeline.ingestion.datalist import load_datalist, make_folds
from pipeline.ingestion.errors import LGGDataError
from pipeline.ingestion.export import export_kaggle
from pipeline.ingestion.kaggle import (
    discover_patients,
    institution_of,
    make_affine,
    read_patient_folder,
    scan_patient_folder,
)
from pipeline.ingestion.prepare import prepare_dataset
from pipeline.ingestion.synthetic import write_synthetic_kaggle

# Both uncompressed patients of the shared data, and one more of each other institution.
REAL_PATIENTS = (
    "TCGA_CS_4942_19970222",
    "TCGA_HT_7879_19981009",
    "TCGA_DU_5849_19950405",
    "TCGA_EZ_7264_20010816",
    "TCGA_FG_5962_20000626",
)


def _tiff_pairs(folder: Path) -> list[tuple[Path, Path]]:
    """Slice files of a patient in numeric order, read independently of pipeline.data."""
    images = [p for p in folder.glob("*.tif") if not p.name.endswith("_mask.tif")]
    images.sort(key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    return [(p, p.with_name(p.stem + "_mask.tif")) for p in images]


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


@pytest.fixture
def synthetic_root(tmp_path: Path) -> Path:
    return write_synthetic_kaggle(tmp_path / "kaggle_3m", num_patients=5, seed=1, size=32, slices=(4, 6))


@pytest.fixture(scope="module")
def real_subset(kaggle_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kaggle_3m-like folder holding links to a few real patients and the real data.csv."""
    root = tmp_path_factory.mktemp("real") / "kaggle_3m"
    root.mkdir()
    for name in REAL_PATIENTS:
        assert (kaggle_root / name).is_dir(), f"expected patient {name} in the shared data"
        (root / name).symlink_to(kaggle_root / name, target_is_directory=True)
    shutil.copy(kaggle_root / "data.csv", root / "data.csv")
    return root


@pytest.fixture(scope="module")
def real_prepared(real_subset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("prepared") / "out"
    prepare_dataset(real_subset, output, num_folds=2, seed=0, spacing=(0.5, 0.5, 3.0), workers=2)
    return output


# ----------------------------------------------------------------------------------------------- real data
@pytest.mark.realdata
@pytest.mark.parametrize("patient", REAL_PATIENTS)
def test_real_volume_matches_tiffs(real_prepared: Path, kaggle_root: Path, patient: str) -> None:
    pairs = _tiff_pairs(kaggle_root / patient)
    image = nib.load(real_prepared / patient / "image.nii.gz")
    label = nib.load(real_prepared / patient / "label.nii.gz")
    image_data, label_data = np.asanyarray(image.dataobj), np.asanyarray(label.dataobj)
    assert image_data.shape == (256, 256, len(pairs), 3) and image_data.dtype == np.uint8
    assert label_data.shape == (256, 256, len(pairs)) and label_data.dtype == np.uint8
    for k, (image_file, mask_file) in enumerate(pairs):
        np.testing.assert_array_equal(image_data[:, :, k, :], tifffile.imread(image_file))
        np.testing.assert_array_equal(label_data[:, :, k], (tifffile.imread(mask_file) > 0).astype(np.uint8))
    np.testing.assert_allclose(image.affine, make_affine((0.5, 0.5, 3.0)))
    np.testing.assert_allclose(label.affine, image.affine)
    assert nib.aff2axcodes(image.affine) == ("P", "L", "S")
    assert image.header.get_zooms()[:3] == (0.5, 0.5, 3.0)


@pytest.mark.realdata
def test_real_nifti_reads_back_with_simpleitk(real_prepared: Path) -> None:
    for patient in REAL_PATIENTS[:2]:
        label = sitk.ReadImage(str(real_prepared / patient / "label.nii.gz"))
        expected = np.asanyarray(nib.load(real_prepared / patient / "label.nii.gz").dataobj)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(label), expected.transpose(2, 1, 0))
        assert label.GetSpacing() == (0.5, 0.5, 3.0)
        image = sitk.ReadImage(str(real_prepared / patient / "image.nii.gz"))
        expected = np.asanyarray(nib.load(real_prepared / patient / "image.nii.gz").dataobj)
        array = sitk.GetArrayFromImage(image)  # 4D NIfTI -> (C, D, W, H)
        np.testing.assert_array_equal(array, expected.transpose(3, 2, 1, 0))


@pytest.mark.realdata
def test_real_datalist_loads_with_monai(real_prepared: Path) -> None:
    entries = load_decathlon_datalist(str(real_prepared / "datalist.json"), True, "training")
    assert sorted(Path(e["patient"]).name for e in entries) == sorted(REAL_PATIENTS)
    entries = load_datalist(real_prepared / "datalist.json")
    assert sorted(e["patient"] for e in entries) == sorted(REAL_PATIENTS)
    assert {e["fold"] for e in load_datalist(real_prepared / "datalist.json", folds=[1])} == {1}
    assert {e["fold"] for e in load_datalist(real_prepared / "datalist.json", exclude_folds=[1])} == {0}
    for entry in entries:
        assert Path(entry["image"]).is_file() and Path(entry["label"]).is_file()
        assert entry["institution"] == institution_of(entry["patient"])
    meta = json.loads((real_prepared / "datalist.json").read_text())
    assert meta["channel_names"] == {"0": "pre-contrast", "1": "FLAIR", "2": "post-contrast"}
    table = (real_prepared / "patients.csv").read_text().splitlines()
    header = table[0].split(",")
    assert "clinical_neoplasm_histologic_grade" in header and "fold" in header
    row = dict(zip(header, next(r for r in table if r.startswith("TCGA_CS_4942")).split(","), strict=True))
    assert row["clinical_age_at_initial_pathologic"] == "44"  # from data.csv: TCGA_CS_4942 is 44


@pytest.mark.realdata
def test_real_slice_counts(real_prepared: Path, kaggle_root: Path) -> None:
    entries = json.loads((real_prepared / "datalist.json").read_text())["training"]
    for entry in entries:
        assert entry["num_slices"] == len(_tiff_pairs(kaggle_root / entry["patient"]))


@pytest.mark.realdata
def test_real_folds_disjoint_cover_and_stratified(kaggle_root: Path) -> None:
    patients = [p.name for p in discover_patients(kaggle_root)]
    assert len(patients) == 80
    folds = make_folds(patients, num_folds=5, seed=0)
    assert set(folds) == set(patients)  # every patient exactly once: folds are disjoint and cover all
    sizes = Counter(folds.values())
    assert sorted(sizes) == [0, 1, 2, 3, 4] and max(sizes.values()) - min(sizes.values()) <= 1
    per_institution = Counter(institution_of(p) for p in patients)
    for institution, total in per_institution.items():
        counts = Counter(f for p, f in folds.items() if institution_of(p) == institution)
        for fold in range(5):
            assert abs(counts.get(fold, 0) - total / 5) <= 1, (institution, fold, counts)
    assert make_folds(patients, 5, seed=0) == folds  # reproducible
    assert make_folds(patients, 5, seed=1) != folds


@pytest.mark.realdata
def test_real_export_kaggle_reproduces_masks(real_prepared: Path, kaggle_root: Path, tmp_path: Path) -> None:
    patient = REAL_PATIENTS[0]
    written = export_kaggle(real_prepared / patient / "label.nii.gz", tmp_path / patient)
    originals = _tiff_pairs(kaggle_root / patient)
    assert [p.name for p in written] == [m.name for _, m in originals]
    for new, (_, original) in zip(written, originals, strict=True):
        np.testing.assert_array_equal(tifffile.imread(new), tifffile.imread(original))


@pytest.mark.realdata
def test_real_read_patient_folder_matches_nifti(real_prepared: Path, kaggle_root: Path) -> None:
    patient = REAL_PATIENTS[1]  # uncompressed TIFFs
    volume = read_patient_folder(kaggle_root / patient, spacing=(0.5, 0.5, 3.0))
    nifti = np.asanyarray(nib.load(real_prepared / patient / "image.nii.gz").dataobj)
    np.testing.assert_array_equal(volume.image, nifti.transpose(3, 0, 1, 2))
    assert volume.label.shape == (1, *nifti.shape[:3]) and set(np.unique(volume.label)) <= {0, 1}


# ---------------------------------------------------------------------------------------- synthetic data
def test_synthetic_is_deterministic(tmp_path: Path) -> None:
    a = write_synthetic_kaggle(tmp_path / "a", num_patients=3, seed=7, size=32, slices=(4, 6))
    b = write_synthetic_kaggle(tmp_path / "b", num_patients=3, seed=7, size=32, slices=(4, 6))
    assert _tree_digest(a) == _tree_digest(b)
    volume = read_patient_folder(discover_patients(a)[0])
    assert volume.label.any() and volume.image[1][volume.label[0] > 0].mean() > volume.image[1].mean()


def test_slices_sorted_numerically(tmp_path: Path) -> None:
    root = write_synthetic_kaggle(tmp_path / "k", num_patients=1, seed=2, size=16, slices=(12, 12))
    folder = discover_patients(root)[0]
    slices = scan_patient_folder(folder)
    numbers = [int(p.stem.rsplit("_", 1)[1]) for p in slices.image_files]
    assert numbers == list(range(1, 13))  # a text sort would put 10, 11, 12 after 1
    volume = read_patient_folder(folder)
    for k, image_file in enumerate(slices.image_files):
        np.testing.assert_array_equal(volume.image[..., k], tifffile.imread(image_file).transpose(2, 0, 1))


def test_prepare_synthetic_writes_everything(synthetic_root: Path, tmp_path: Path) -> None:
    result = prepare_dataset(synthetic_root, tmp_path / "out", num_folds=5, seed=3, workers=1)
    assert len(result.patients) == 5 and not result.problems
    datalist = load_decathlon_datalist(str(tmp_path / "out" / "datalist.json"), True, "training")
    assert sorted(e["fold"] for e in datalist) == [0, 1, 2, 3, 4]
    assert not list(tmp_path.glob(".out.*")), "staging folders must be cleaned up"


def _bad_patient(root: Path) -> Path:
    return discover_patients(root)[0]


def _expect_problem(root: Path, output: Path, fragment: str) -> LGGDataError:
    with pytest.raises(LGGDataError) as info:
        prepare_dataset(root, output, num_folds=2, workers=1)
    assert fragment in str(info.value), str(info.value)
    assert _bad_patient(root).name in str(info.value), "the error must name the patient"
    return info.value


def test_image_without_mask(synthetic_root: Path, tmp_path: Path) -> None:
    folder = _bad_patient(synthetic_root)
    (folder / f"{folder.name}_2_mask.tif").unlink()
    error = _expect_problem(synthetic_root, tmp_path / "out", "image without mask")
    assert f"{folder.name}_2.tif" in str(error)


def test_mask_without_image(synthetic_root: Path, tmp_path: Path) -> None:
    folder = _bad_patient(synthetic_root)
    (folder / f"{folder.name}_3.tif").unlink()
    error = _expect_problem(synthetic_root, tmp_path / "out", "mask without image")
    assert f"{folder.name}_3_mask.tif" in str(error)


def test_gap_in_slice_numbers(synthetic_root: Path, tmp_path: Path) -> None:
    folder = _bad_patient(synthetic_root)
    (folder / f"{folder.name}_2.tif").unlink()
    (folder / f"{folder.name}_2_mask.tif").unlink()
    _expect_problem(synthetic_root, tmp_path / "out", "gap in slice numbers: 2 missing")


def test_duplicate_slice_numbers(synthetic_root: Path, tmp_path: Path) -> None:
    folder = _bad_patient(synthetic_root)
    shutil.copy(folder / f"{folder.name}_2.tif", folder / f"{folder.name}_02.tif")
    shutil.copy(folder / f"{folder.name}_2_mask.tif", folder / f"{folder.name}_02_mask.tif")
    _expect_problem(synthetic_root, tmp_path / "out", "duplicate slice number 2")


def test_truncated_tiff(synthetic_root: Path, tmp_path: Path) -> None:
    folder = _bad_patient(synthetic_root)
    target = folder / f"{folder.name}_1.tif"
    target.write_bytes(target.read_bytes()[: len(target.read_bytes()) // 3])
    error = _expect_problem(synthetic_root, tmp_path / "out", "unreadable or truncated TIFF")
    assert target.name in str(error)


def test_unreadable_tiff(synthetic_root: Path, tmp_path: Path) -> None:
    folder = _bad_patient(synthetic_root)
    (folder / f"{folder.name}_1_mask.tif").write_bytes(b"not a tiff at all")
    _expect_problem(
        synthetic_root, tmp_path / "out", f"{folder.name}_1_mask.tif: unreadable or truncated TIFF"
    )


def test_slice_of_different_shape(synthetic_root: Path, tmp_path: Path) -> None:
    folder = _bad_patient(synthetic_root)
    tifffile.imwrite(folder / f"{folder.name}_2.tif", np.zeros((16, 32, 3), np.uint8))
    _expect_problem(synthetic_root, tmp_path / "out", f"{folder.name}_2.tif: shape (16, 32, 3) differs")


def test_slice_of_different_channel_count(synthetic_root: Path, tmp_path: Path) -> None:
    folder = _bad_patient(synthetic_root)
    tifffile.imwrite(folder / f"{folder.name}_3.tif", np.zeros((32, 32, 4), np.uint8))
    _expect_problem(synthetic_root, tmp_path / "out", "expected an HxWx3 uint8 image, got shape (32, 32, 4)")


def test_bad_mask_values(synthetic_root: Path, tmp_path: Path) -> None:
    folder = _bad_patient(synthetic_root)
    tifffile.imwrite(folder / f"{folder.name}_2_mask.tif", np.full((32, 32), 128, np.uint8))
    _expect_problem(synthetic_root, tmp_path / "out", "mask values [128] are not in {0, 255} or {0, 1}")


def test_masks_in_zero_one_are_accepted(synthetic_root: Path, tmp_path: Path) -> None:
    folder = _bad_patient(synthetic_root)
    for mask_file in folder.glob("*_mask.tif"):
        tifffile.imwrite(mask_file, (tifffile.imread(mask_file) > 0).astype(np.uint8))
    volume = read_patient_folder(folder)
    assert set(np.unique(volume.label)) <= {0, 1}


def test_empty_and_missing_input(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(LGGDataError, match="holds no patient folder"):
        prepare_dataset(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(LGGDataError, match="does not exist"):
        prepare_dataset(tmp_path / "missing", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_existing_output_refused_and_untouched(synthetic_root: Path, tmp_path: Path) -> None:
    output = tmp_path / "out"
    prepare_dataset(synthetic_root, output, num_folds=2, workers=1)
    before = _tree_digest(output)
    with pytest.raises(LGGDataError, match="already holds results; pass --overwrite"):
        prepare_dataset(synthetic_root, output, num_folds=2, workers=1)
    assert _tree_digest(output) == before
    # --overwrite with a bad patient fails and still leaves the earlier results as they were
    folder = _bad_patient(synthetic_root)
    (folder / f"{folder.name}_1_mask.tif").unlink()
    with pytest.raises(LGGDataError):
        prepare_dataset(synthetic_root, output, num_folds=2, overwrite=True, workers=2)
    assert _tree_digest(output) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kaggle_3m", "out"], "no staging folder left"


def test_overwrite_replaces_results(synthetic_root: Path, tmp_path: Path) -> None:
    output = tmp_path / "out"
    prepare_dataset(synthetic_root, output, num_folds=2, seed=0, workers=1)
    prepare_dataset(synthetic_root, output, num_folds=3, seed=0, workers=1, overwrite=True)
    assert json.loads((output / "datalist.json").read_text())["num_folds"] == 3


def test_every_bad_patient_reported_and_nonzero_exit(synthetic_root: Path, tmp_path: Path, caplog) -> None:
    folders = discover_patients(synthetic_root)
    (folders[0] / f"{folders[0].name}_1_mask.tif").unlink()
    (folders[2] / f"{folders[2].name}_2.tif").write_bytes(b"\x00" * 10)
    code = lggseg(
        ["prepare", "--input", str(synthetic_root), "--output", str(tmp_path / "out"), "--folds", "2"]
    )
    assert code == 1
    assert folders[0].name in caplog.text and folders[2].name in caplog.text
    assert not (tmp_path / "out").exists(), "nothing partial may be left"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kaggle_3m"]


def test_skip_invalid_writes_valid_patients(synthetic_root: Path, tmp_path: Path) -> None:
    folders = discover_patients(synthetic_root)
    (folders[0] / f"{folders[0].name}_1_mask.tif").unlink()
    code = lggseg(
        ["prepare", "--input", str(synthetic_root), "--output", str(tmp_path / "out"), "--folds", "2",
         "--skip-invalid"]
    )  # fmt: skip
    assert code == 1
    problems = json.loads((tmp_path / "out" / "problems.json").read_text())
    assert list(problems) == [folders[0].name]
    assert len(json.loads((tmp_path / "out" / "datalist.json").read_text())["training"]) == 4


def test_export_kaggle_refuses_existing_and_bad_labels(synthetic_root: Path, tmp_path: Path) -> None:
    prepare_dataset(synthetic_root, tmp_path / "out", num_folds=2, workers=1)
    patient = discover_patients(synthetic_root)[0].name
    label = tmp_path / "out" / patient / "label.nii.gz"
    written = export_kaggle(label, tmp_path / "masks")
    before = _tree_digest(tmp_path / "masks")
    with pytest.raises(LGGDataError, match="already holds .* mask files"):
        export_kaggle(label, tmp_path / "masks")
    assert _tree_digest(tmp_path / "masks") == before
    assert written[0].name == f"{patient}_1_mask.tif"
    for k, path in enumerate(written):
        original = synthetic_root / patient / f"{patient}_{k + 1}_mask.tif"
        np.testing.assert_array_equal(tifffile.imread(path), tifffile.imread(original))
    bad = tmp_path / "bad.nii.gz"
    nib.save(nib.Nifti1Image(np.full((4, 4, 2), 0.5, np.float32), np.eye(4)), bad)
    with pytest.raises(LGGDataError, match="bad.nii.gz: label values"):
        export_kaggle(bad, tmp_path / "masks2")


def test_export_kaggle_reorients_to_project_orientation(synthetic_root: Path, tmp_path: Path) -> None:
    prepare_dataset(synthetic_root, tmp_path / "out", num_folds=2, workers=1)
    patient = discover_patients(synthetic_root)[0].name
    label = nib.load(tmp_path / "out" / patient / "label.nii.gz")
    canonical = nib.as_closest_canonical(label)  # RAS, as other tools may save it
    assert nib.aff2axcodes(canonical.affine) == ("R", "A", "S")
    nib.save(canonical, tmp_path / "ras.nii.gz")
    written = export_kaggle(tmp_path / "ras.nii.gz", tmp_path / "masks", patient_id=patient)
    for k, path in enumerate(written):
        original = synthetic_root / patient / f"{patient}_{k + 1}_mask.tif"
        np.testing.assert_array_equal(tifffile.imread(path), tifffile.imread(original))


def test_datalist_naming_missing_files(synthetic_root: Path, tmp_path: Path) -> None:
    prepare_dataset(synthetic_root, tmp_path / "out", num_folds=2, workers=1)
    patient = discover_patients(synthetic_root)[1].name
    (tmp_path / "out" / patient / "label.nii.gz").unlink()
    with pytest.raises(LGGDataError, match=f"entry {patient} names missing files"):
        load_datalist(tmp_path / "out" / "datalist.json")
    with pytest.raises(LGGDataError, match="does not exist"):
        load_datalist(tmp_path / "nowhere.json")


def test_cli_help_for_every_command(capsys) -> None:
    for command in ("prepare", "export-kaggle", "synthesize", "demo"):
        with pytest.raises(SystemExit) as info:
            lggseg([command, "--help"])
        assert info.value.code == 0
        assert f"lggseg {command}" in capsys.readouterr().out


def test_parent_of_kaggle_folder_gets_a_hint(synthetic_root: Path) -> None:
    with pytest.raises(LGGDataError, match="did you mean .*kaggle_3m"):
        discover_patients(synthetic_root.parent)
