"""A user's own scans: sequence names, scan case discovery (NIfTI and DICOM), reading and its errors, and
``find_cases`` on scan cases and on the external scans."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from pipeline.ingestion.cases import CaseError, find_cases
from pipeline.ingestion.dicom_files import dicom_reference
from pipeline.ingestion.errors import LGGDataError
from pipeline.ingestion.scan_cases import find_scan_case, find_scan_cases, is_scan_case_folder
from pipeline.ingestion.scan_reading import check_finite, read_scan
from pipeline.ingestion.sequences import SEQUENCES, sequence_of_description, sequence_of_filename

TCIA = "MRHR_FLAIR_AX_OtherEXampleTCIA_TCGA-FG-6692_Si_TCGA-FG-6692_"
FILENAMES = {
    # BraTS 2013-2021
    "BraTS20_Training_001_flair.nii.gz": "flair",
    "BraTS20_Training_001_t1.nii.gz": "t1",
    "BraTS20_Training_001_t1ce.nii.gz": "t1c",
    "BraTS2021_00000_t1c.nii": "t1c",
    "BraTS20_Training_001_t2.nii.gz": "t2",
    "BraTS20_Training_001_seg.nii.gz": "label",
    "Brats18_2013_2_1_FLAIR.NII.GZ": "flair",
    # BraTS 2023
    "BraTS-GLI-00001-000-t2f.nii.gz": "flair",
    "BraTS-GLI-00001-000-t1n.nii.gz": "t1",
    "BraTS-GLI-00001-000-t1c.nii.gz": "t1c",
    "BraTS-GLI-00001-000-t2w.nii.gz": "t2",
    "BraTS-GLI-00001-000-seg.nii.gz": "label",
    # BraTS-Toolkit / TCIA conversions, with preprocessing suffixes (the real external files)
    "TCGA_FG_6692_fla_bet.nii.gz": "flair",
    "TCGA_FG_6692_t1_bet.nii.gz": "t1",
    "TCGA_FG_6692_t1c_bet.nii.gz": "t1c",
    "TCGA_DU_7294_t1c_bet.nii.gz": "t1c",
    TCIA + "MRHR_FLAIR_AX_SE_IR_5_tir2d1_21_fla.nii.gz": "flair",
    "T1_AX_OtherEXampleTCIA_TCGA-FG-6692_Si_TCGA-FG-6692_T1_AX_SE_10_se2d1_t1.nii.gz": "t1",
    TCIA + "MRHR_T1_AX_POST_GAD_SE_13_se2d1r_t1c.nii.gz": "t1c",
    TCIA + "MRHR_T2_AX_SE_2_tse2d1_11_t2.nii.gz": "t2",
    "patient_t1_n4_reg.nii.gz": "t1",
    "patient_T1_CE.nii.gz": "t1c",
    "flair.nii": "flair",
    # labels, masks, fusions
    "TCGA_FG_6692_20020606_fusion.nii.gz": "label",
    "brain_mask.nii.gz": "label",
    "label.nii.gz": "label",
    "case_seg.nii.gz": "label",
    # named after the protocol (converter outputs)
    "AX_FLAIR.nii.gz": "flair",
    "T1_AX_POST_GAD.nii.gz": "t1c",
    # nothing
    "image.nii.gz": None,
    "TCGA_CS_4941_19960909.nii.gz": None,
    "case_c.nii.gz": None,
    "notes.nii.gz": None,
    "DWI.nii.gz": None,
}

DESCRIPTIONS = {
    "AX FLAIR": "flair",
    "T2 FLAIR AX": "flair",
    "T2-FLAIR": "flair",
    "Ax T2 FLAIR FS": "flair",
    "t2_tirm_tra_dark-fluid": "flair",
    "T1 POST GD": "t1c",
    "AX T1 +C": "t1c",
    "SAG T1 C+": "t1c",
    "T1 MPRAGE POST": "t1c",
    "T1W_CE": "t1c",
    "t1_se_tra_Gd": "t1c",
    "AX +C": "t1c",
    "AX T1": "t1",
    "T1 SE PRE": "t1",
    "T1 PRE GD": "t1",
    "MP-RAGE": "t1",
    "AX T1 FLAIR": "t1",
    "AX T1 FLAIR POST": "t1c",
    "AX T2": "t2",
    "T2 TSE": "t2",
    "T2W_TSE": "t2",
    "LOCALIZER": None,
    "3-plane loc": None,
    "Survey": None,
    "SCOUT": None,
    "DWI": None,
    "AX DIFFUSION": None,
    "ADC": None,
    "ep2d_perf": None,
    "PERFUSION": None,
    "AX SWI": None,
    "T2*": None,
    "": None,
}


@pytest.mark.parametrize("name,expected", FILENAMES.items())
def test_sequence_of_filename(name, expected):
    assert sequence_of_filename(name) == expected
    assert sequence_of_filename(f"/some/folder/{name}") == expected


def test_t1_never_matches_t1c():
    for name in ("x_t1c.nii.gz", "x_t1ce.nii.gz", "x-t1c.nii.gz", "x_T1C_bet.nii.gz"):
        assert sequence_of_filename(name) == "t1c", name
    for name in ("x_t1.nii.gz", "x-t1n.nii.gz", "x_T1_bet.nii.gz"):
        assert sequence_of_filename(name) == "t1", name


@pytest.mark.parametrize("text,expected", DESCRIPTIONS.items())
def test_sequence_of_description(text, expected):
    assert sequence_of_description(text) == expected


def test_channel_order():
    assert SEQUENCES == ("t1", "flair", "t1c")


# ------------------------------------------------------------------------------------------------ helpers


def _volume(shape=(6, 20, 24), seed=0, dtype=np.int16, oblique=0.3) -> sitk.Image:
    """A small 3D image (array ``(D, H, W)``) with an oblique right-handed direction."""
    array = (np.random.default_rng(seed).random(shape) * 1000).astype(dtype)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.9, 0.8, 5.5))
    image.SetOrigin((10.0, -20.0, 30.0 + seed))
    c, s = math.cos(oblique), math.sin(oblique)
    image.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    return image


def _write_nifti(image: sitk.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def _write_dicom(
    image: sitk.Image,
    folder: Path,
    description: str,
    uid: str,
    study: str = "1.2.826.0.1.3680043.2.1125.9",
    prefix: str = "",
    modality: str = "MR",
) -> list[Path]:
    """One DICOM file per slice, as ENVIRONMENT.md describes (SimpleITK, KeepOriginalImageUIDOn)."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    d = image.GetDirection()
    paths = []
    for k in range(image.GetDepth()):
        slice_ = image[:, :, k]
        tags = {
            "0020|0032": "\\".join(f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))),
            "0020|0037": "\\".join(f"{v:.6f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
            "0028|0030": "\\".join(str(v) for v in image.GetSpacing()[1::-1]),
            "0008|103e": description,
            "0020|000e": uid,
            "0020|000d": study,
            "0020|0013": str(k + 1),
            "0008|0060": modality,
        }
        for tag, value in tags.items():
            slice_.SetMetaData(tag, value)
        path = folder / f"{prefix}{k:03d}.dcm"
        writer.SetFileName(str(path))
        writer.Execute(slice_)
        paths.append(path)
    return paths


def _same(a: sitk.Image, b: sitk.Image) -> None:
    np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-5)


UID = "1.2.826.0.1.3680043.2.1125.1."


# ---------------------------------------------------------------------------------------------- discovery


def test_nifti_case_folder(tmp_path):
    case = tmp_path / "patient1"
    for name in ("p1_flair.nii.gz", "p1_t1.nii.gz", "p1_t1ce.nii.gz", "p1_t2.nii.gz", "p1_seg.nii.gz"):
        _write_nifti(_volume(), case / name)
    (case / "notes.txt").write_text("scanned twice")
    (case / ".DS_Store").write_bytes(b"\0\1")
    assert is_scan_case_folder(case)
    found = find_scan_case(case)
    assert found == {
        "case": "patient1",
        "image": str(case / "p1_flair.nii.gz"),
        "flair": str(case / "p1_flair.nii.gz"),
        "t1": str(case / "p1_t1.nii.gz"),
        "t1c": str(case / "p1_t1ce.nii.gz"),
        "kind": "scans",
        "sequences": {"flair": "p1_flair.nii.gz", "t1": "p1_t1.nii.gz", "t1c": "p1_t1ce.nii.gz"},
    }
    assert find_scan_cases(case) == [found]
    assert find_cases(case) == [found]


def test_flair_alone_and_explicit_overrides(tmp_path):
    case = tmp_path / "p2"
    _write_nifti(_volume(), case / "brain_flair.nii.gz")
    _write_nifti(_volume(), case / "scan_a.nii.gz")
    found = find_scan_case(case)
    assert (found["flair"], found["t1"], found["t1c"]) == (str(case / "brain_flair.nii.gz"), None, None)
    assert found["sequences"] == {"flair": "brain_flair.nii.gz"}
    given = find_scan_case(case, flair=case / "scan_a.nii.gz", t1c=case / "brain_flair.nii.gz")
    assert given["flair"] == given["image"] == str(case / "scan_a.nii.gz")
    assert given["t1c"] == str(case / "brain_flair.nii.gz")
    assert given["sequences"] == {"flair": "scan_a.nii.gz", "t1c": "brain_flair.nii.gz"}


def test_no_flair_is_one_line(tmp_path):
    case = tmp_path / "p3"
    for name in ("p3_t1.nii.gz", "p3_t2.nii.gz", "p3_seg.nii.gz"):
        _write_nifti(_volume(), case / name)
    with pytest.raises(CaseError) as info:
        find_scan_case(case)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{case}: no FLAIR found among p3_seg.nii.gz, p3_t1.nii.gz, p3_t2.nii.gz")
    assert message.endswith("name it *_flair.nii.gz or pass --flair")
    with pytest.raises(CaseError, match="no FLAIR"):
        find_cases(case)
    # an explicit FLAIR solves it
    assert find_scan_case(case, flair=case / "p3_t2.nii.gz")["t1"] == str(case / "p3_t1.nii.gz")


def test_two_flairs_name_both(tmp_path):
    case = tmp_path / "p4"
    _write_nifti(_volume(), case / "a_flair.nii.gz")
    _write_nifti(_volume(), case / "b-t2f.nii.gz")
    with pytest.raises(CaseError) as info:
        find_cases(case)
    message = str(info.value)
    assert "\n" not in message and str(case) in message
    assert "a_flair.nii.gz" in message and "b-t2f.nii.gz" in message
    assert find_scan_case(case, flair=case / "b-t2f.nii.gz")["flair"] == str(case / "b-t2f.nii.gz")


def test_folder_of_scan_cases(tmp_path):
    for name in ("b_case", "a_case"):
        _write_nifti(_volume(), tmp_path / name / f"{name}_fla.nii.gz")
    (tmp_path / ".hidden").mkdir()
    _write_nifti(_volume(), tmp_path / ".hidden" / "x_flair.nii.gz")
    (tmp_path / "README.txt").write_text("two patients")
    assert not is_scan_case_folder(tmp_path)
    cases = find_cases(tmp_path)
    assert [c["case"] for c in cases] == ["a_case", "b_case"]
    assert all(c["kind"] == "scans" for c in cases)
    assert find_scan_cases(tmp_path) == cases
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CaseError, match="no scan case found"):
        find_scan_cases(empty)


# ------------------------------------------------------------------------------------------------- DICOM


def test_dicom_series_folders(tmp_path):
    case = tmp_path / "dcm_case"
    flair = _volume(seed=1)
    _write_dicom(flair, case / "series_5", "AX FLAIR", UID + "5")
    _write_dicom(_volume(seed=2), case / "series_10", "AX T1", UID + "10")
    _write_dicom(_volume(seed=3), case / "series_13", "T1 POST GD", UID + "13")
    _write_dicom(_volume(seed=4), case / "series_2", "AX T2", UID + "2")
    _write_dicom(_volume(seed=5), case / "series_1", "3-plane loc", UID + "1")
    (case / "series_1" / "DICOMDIR").write_bytes(b"index")
    assert is_scan_case_folder(case)
    found = find_cases(case)[0]
    assert found["case"] == "dcm_case" and found["kind"] == "scans"
    assert found["flair"] == found["image"] == str(case / "series_5")
    assert found["t1"] == str(case / "series_10") and found["t1c"] == str(case / "series_13")
    assert found["sequences"] == {"flair": "AX FLAIR", "t1": "AX T1", "t1c": "T1 POST GD"}
    _same(read_scan(found["flair"]), flair)
    # a folder of such case folders (different studies)
    other = tmp_path / "dcm_other"
    _write_dicom(_volume(seed=6), other / "s1", "FLAIR", UID + "61", study="1.2.826.0.1.3680043.2.1125.8")
    assert not is_scan_case_folder(tmp_path)
    assert [c["case"] for c in find_cases(tmp_path)] == ["dcm_case", "dcm_other"]


def test_dicom_mixed_in_one_folder(tmp_path):
    case = tmp_path / "mixed"
    flair, t1c = _volume(seed=1), _volume(seed=2, shape=(5, 20, 24))
    _write_dicom(flair, case, "T2 FLAIR AX", UID + "21", prefix="IM_A_")
    _write_dicom(t1c, case, "AX T1 +C", UID + "22", prefix="IM_B_")
    _write_dicom(_volume(seed=3), case, "AX T1", UID + "23", prefix="IM_C_", modality="SEG")
    (case / "readme.txt").write_text("not DICOM")
    found = find_cases(case)[0]
    assert found["flair"] == dicom_reference(case, UID + "21") == f"dicom:{case}#{UID}21"
    assert found["t1c"] == dicom_reference(case, UID + "22")
    assert found["t1"] is None  # the SEG-modality series is ignored
    assert found["sequences"] == {"flair": "T2 FLAIR AX", "t1c": "AX T1 +C"}
    _same(read_scan(found["flair"]), flair)
    _same(read_scan(found["t1c"]), t1c)
    with pytest.raises(LGGDataError, match="holds 2 DICOM series"):  # the SEG is not an image series
        read_scan(case)


def test_dicom_two_flair_series(tmp_path):
    case = tmp_path / "two"
    _write_dicom(_volume(seed=1), case / "a", "AX FLAIR", UID + "31")
    _write_dicom(_volume(seed=2), case / "b", "COR FLAIR", UID + "32")
    with pytest.raises(CaseError) as info:
        find_scan_case(case)
    assert "AX FLAIR" in str(info.value) and "COR FLAIR" in str(info.value) and str(case) in str(info.value)


@pytest.mark.parametrize("dtype", [np.int16, np.uint16])
def test_read_scan_round_trip(tmp_path, dtype):
    """NIfTI and the DICOM series written from it read back with the same array and geometry."""
    image = _volume(seed=7, dtype=dtype, oblique=0.4)
    nifti = _write_nifti(image, tmp_path / "x_flair.nii.gz")
    from_nifti = read_scan(nifti)
    _same(from_nifti, image)
    assert from_nifti.GetDimension() == 3
    _write_dicom(image, tmp_path / "series", "AX FLAIR", UID + "41")
    _same(read_scan(tmp_path / "series"), from_nifti)
    _same(read_scan(dicom_reference(tmp_path / "series", UID + "41")), from_nifti)


def test_read_scan_reverse_file_order(tmp_path):
    """Slices are sorted by position, not by file name."""
    image = _volume(seed=8)
    paths = _write_dicom(image, tmp_path / "s", "AX FLAIR", UID + "42")
    for i, path in enumerate(paths):
        path.rename(path.with_name(f"z{len(paths) - i:03d}.dcm"))
    _same(read_scan(tmp_path / "s"), image)


def test_trailing_size_one_axis_is_3d(tmp_path):
    array = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6, 1)
    nib.save(nib.Nifti1Image(array, np.diag([1.0, 2.0, 3.0, 1.0])), tmp_path / "x.nii.gz")
    image = read_scan(tmp_path / "x.nii.gz")
    assert image.GetDimension() == 3 and image.GetSize() == (4, 5, 6)
    np.testing.assert_allclose(image.GetSpacing(), (1.0, 2.0, 3.0))


# ------------------------------------------------------------------------------------------------ errors


def _one_line(info) -> str:
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_truncated_nifti(tmp_path, dtype):
    path = _write_nifti(_volume(shape=(20, 40, 40), dtype=dtype), tmp_path / "x_flair.nii.gz")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(LGGDataError) as info:
        read_scan(path)
    assert _one_line(info).startswith(f"{path}: truncated")
    plain = tmp_path / "y.nii"
    sitk.WriteImage(_volume(dtype=dtype), str(plain))
    plain.write_bytes(plain.read_bytes()[:1000])
    with pytest.raises(LGGDataError) as info:
        read_scan(plain)
    assert _one_line(info).startswith(f"{plain}: truncated")


def test_unreadable_file(tmp_path):
    path = tmp_path / "x.nii.gz"
    path.write_bytes(b"not an image at all")
    with pytest.raises(LGGDataError) as info:
        read_scan(path)
    assert _one_line(info).startswith(f"{path}: ")
    with pytest.raises(LGGDataError, match="not found"):
        read_scan(tmp_path / "missing.nii.gz")


def test_not_3d(tmp_path):
    four = tmp_path / "four.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6, 3), np.float32), np.eye(4)), four)
    with pytest.raises(LGGDataError) as info:
        read_scan(four)
    assert _one_line(info) == f"{four}: a 4D image of 3 volumes; give one 3D volume per sequence"
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 5), np.float32), np.eye(4)), flat)
    with pytest.raises(LGGDataError, match="2D image"):
        read_scan(flat)
    one = tmp_path / "one.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 1), np.float32), np.eye(4)), one)
    with pytest.raises(LGGDataError, match="has 1 slice; a volume needs at least 2"):
        read_scan(one)


def test_one_slice_series(tmp_path):
    _write_dicom(_volume(shape=(1, 20, 24)), tmp_path / "s", "AX FLAIR", UID + "51")
    with pytest.raises(LGGDataError) as info:
        read_scan(tmp_path / "s")
    assert _one_line(info).endswith("has 1 slice; a volume needs at least 2")


def test_nan_and_inf(tmp_path):
    array = np.ones((4, 5, 6), np.float32)
    array[0, 0, 0], array[1, 2, 3], array[2, 2, 2] = np.nan, np.inf, -np.inf
    path = tmp_path / "nan_flair.nii.gz"
    nib.save(nib.Nifti1Image(array, np.eye(4)), path)
    with pytest.raises(LGGDataError) as info:
        read_scan(path)
    assert _one_line(info) == f"{path}: 3 voxels are NaN or Inf; the scan cannot be segmented"
    check_finite(sitk.GetImageFromArray(np.ones((3, 3, 3), np.float32)), "fine")
    check_finite(sitk.GetImageFromArray(np.ones((3, 3, 3), np.int16)), "integers")
    with pytest.raises(LGGDataError, match="^here: 1 voxels are NaN"):
        check_finite(sitk.GetImageFromArray(np.array([[[np.nan, 1.0]]], np.float32)), "here")


def test_unreadable_dicom_in_the_middle_is_an_error(tmp_path):
    paths = _write_dicom(_volume(seed=9), tmp_path / "s", "AX FLAIR", UID + "61")
    bad = paths[3]
    bad.write_bytes(bad.read_bytes()[:-500])  # header intact, pixels truncated
    with pytest.raises(LGGDataError) as info:
        read_scan(tmp_path / "s")
    message = _one_line(info)
    assert message.startswith(f"{bad}: unreadable DICOM file")
    assert "has a gap" in message and "AX FLAIR" in message


def test_unreadable_extra_dicom_is_skipped(tmp_path, caplog):
    image = _volume(seed=10)
    paths = _write_dicom(image, tmp_path / "s", "AX FLAIR", UID + "62")
    (tmp_path / "s" / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"garbage")  # header unreadable
    truncated = tmp_path / "s" / "copy.dcm"
    truncated.write_bytes(paths[-1].read_bytes()[:-500])  # a broken copy of the last slice
    with caplog.at_level(logging.WARNING, logger="pipeline.ingestion.scan_reading"):
        _same(read_scan(tmp_path / "s"), image)
    assert "broken.dcm" in caplog.text and "copy.dcm" in caplog.text
    # and the case is still found
    case = find_scan_case(tmp_path)
    assert case["flair"] == str(tmp_path / "s")


def test_missing_slice_is_an_error(tmp_path):
    paths = _write_dicom(_volume(seed=11), tmp_path / "s", "AX FLAIR", UID + "63")
    paths[2].unlink()
    with pytest.raises(LGGDataError, match="not evenly spaced"):
        read_scan(tmp_path / "s")


# ------------------------------------------------------------------------------------ find_cases, all forms


def test_single_3d_nifti_is_a_flair_alone(tmp_path):
    path = _write_nifti(_volume(), tmp_path / "my scan.nii.gz")
    assert find_cases(path) == [
        {
            "case": "my scan",
            "image": str(path),
            "flair": str(path),
            "t1": None,
            "t1c": None,
            "kind": "scans",
            "sequences": {"flair": "my scan.nii.gz"},
        }
    ]
    t1 = _write_nifti(_volume(), tmp_path / "other" / "x_t1.nii.gz")
    with pytest.raises(CaseError, match="named as T1, not FLAIR"):
        find_cases(t1)


def test_prepared_forms_unchanged(tmp_path):
    """A 4D (H, W, D, 3) image stays a volume case, alone, in a flat folder and as ``<patient>/image``."""
    affine = np.diag([1.0, 1.0, 5.0, 1.0])
    volume = np.zeros((8, 8, 4, 3), np.uint8)
    flat = tmp_path / "flat"
    flat.mkdir()
    for name in ("A", "B"):
        nib.save(nib.Nifti1Image(volume, affine), flat / f"{name}.nii.gz")
    nib.save(nib.Nifti1Image(volume[..., 0], affine), flat / "C.nii.gz")  # a 3D study: a FLAIR alone
    nib.save(nib.Nifti1Image(volume[..., 0], affine), flat / "C_seg.nii.gz")  # a label: skipped
    cases = find_cases(flat)
    assert [(c["case"], c["kind"]) for c in cases] == [("A", "volume"), ("B", "volume"), ("C", "scans")]
    assert cases[0] == {"image": str(flat / "A.nii.gz"), "case": "A", "kind": "volume"}
    assert find_cases(flat / "A.nii.gz") == [cases[0]]
    prepared = tmp_path / "prepared" / "P1"
    prepared.mkdir(parents=True)
    nib.save(nib.Nifti1Image(volume, affine), prepared / "image.nii.gz")
    nib.save(nib.Nifti1Image(volume[..., 0], affine), prepared / "label.nii.gz")
    assert find_cases(prepared.parent) == [
        {"image": str(prepared / "image.nii.gz"), "case": "P1", "kind": "volume"}
    ]


def test_case_names_stay_unique(tmp_path):
    _write_nifti(_volume(), tmp_path / "a" / "P" / "p_flair.nii.gz")
    _write_nifti(_volume(), tmp_path / "b" / "P" / "p_flair.nii.gz")
    with pytest.raises(CaseError, match="case name 'P' is also the name of"):
        find_cases([tmp_path / "a", tmp_path / "b"])


# ------------------------------------------------------------------------------------- the external scans


def test_external_tcia_raw(external_root):
    folder = external_root / "tcia_raw" / "TCGA_FG_6692_20020606"
    (case,) = find_cases(folder)
    assert case["case"] == "TCGA_FG_6692_20020606" and case["kind"] == "scans"
    assert case["flair"] == case["image"] and Path(case["flair"]).name.endswith("_fla.nii.gz")
    assert Path(case["t1"]).name.endswith("_se2d1_t1.nii.gz")
    assert Path(case["t1c"]).name.endswith("_t1c.nii.gz")
    assert "_t2" not in str(case)  # T2 recognised and left out
    assert find_cases(folder.parent) == [case]
    flair = read_scan(case["flair"])
    assert flair.GetSize() == (208, 256, 26)


def test_external_brats_style(external_root):
    root = external_root / "brats_style"
    cases = find_cases(root)
    assert [c["case"] for c in cases] == ["TCGA_DU_7294_19890104", "TCGA_FG_6692_20020606"]
    for case in cases:
        patient = case["case"][:12]
        assert case["sequences"] == {
            "flair": f"{patient}_fla_bet.nii.gz",
            "t1": f"{patient}_t1_bet.nii.gz",
            "t1c": f"{patient}_t1c_bet.nii.gz",
        }
    assert find_cases(root / "TCGA_FG_6692_20020606") == [cases[1]]


def test_external_brats2023(external_root):
    folder = external_root / "brats2023_example" / "BraTS-GLI-00001-000"
    (case,) = find_cases(folder)
    assert case["sequences"] == {
        "flair": "BraTS-GLI-00001-000-t2f.nii.gz",
        "t1": "BraTS-GLI-00001-000-t1n.nii.gz",
        "t1c": "BraTS-GLI-00001-000-t1c.nii.gz",
    }
    assert find_cases(folder.parent) == [case]
    assert find_cases([folder / "BraTS-GLI-00001-000-t2f.nii.gz"])[0]["case"] == "BraTS-GLI-00001-000-t2f"
    assert read_scan(case["flair"]).GetSize() == (240, 240, 155)


def test_external_reference_labels_are_not_cases(external_root):
    with pytest.raises(CaseError, match="no case found"):
        find_cases(external_root / "brats_style_reference")


def test_zero_background_of_a_skull_stripped_scan_stays_zero():
    from pipeline.preprocessing.scan_chain import zero_background

    rng = np.random.default_rng(0)
    brain = np.zeros((20, 20, 6), bool)
    brain[5:15, 5:15, 1:5] = True
    stripped = np.zeros(brain.shape, np.int16)
    stripped[brain] = rng.integers(-45, 600, int(brain.sum()))  # ringing below 0, as BraTS volumes have
    stripped[brain & (stripped == 0)] = 7
    out = zero_background(stripped)
    assert out.dtype == np.float32
    assert (out[~brain] == 0).all() and (out[brain] >= 1).all()
    assert np.array_equal(np.argsort(out[brain], kind="stable"), np.argsort(stripped[brain], kind="stable"))
    # a scan without a zero background (scanner units, noisy air) is shifted to a minimum of 0
    raw = rng.integers(-20, 900, (20, 20, 6)).astype(np.int16)
    raw[raw == 0] = 3
    assert np.allclose(zero_background(raw), raw.astype(np.float32) - raw.min())


def test_a_skull_stripped_case_is_normalised_on_its_brain(tmp_path):
    """Regression: shifting each channel's minimum to 0 lifted the stripped background of BraTS volumes
    (a few voxels below 0) above 0, so the normalisation took the whole volume for brain."""
    from pipeline.transforms import build_transforms

    brain = np.zeros((6, 20, 24), bool)
    brain[1:5, 4:16, 5:19] = True
    for name in ("s_flair.nii.gz", "s_t1.nii.gz", "s_t1ce.nii.gz"):  # one volume: already aligned
        image = _volume(seed=0)
        array = sitk.GetArrayFromImage(image).astype(np.int16) * brain
        array[2, 8, 8] = -45
        out = sitk.GetImageFromArray(array)
        out.CopyInformation(image)
        _write_nifti(out, tmp_path / "case" / name)
    case = find_scan_case(tmp_path / "case")
    image = build_transforms("infer", {"context": 0})(dict(case))["image"]
    normalised_brain = (image != 0).any(0).float().mean()
    assert float(normalised_brain) < 0.5  # the stripped head only, not the zero background
