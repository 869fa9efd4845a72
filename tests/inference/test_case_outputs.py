"""The per-case outputs beside the NIfTI mask: the DICOM SEG on the user's FLAIR series, the QC PNG, the
tumour volume and the summary CSV.

The DICOM series are written slice by slice with SimpleITK as ``../shared/docs/ENVIRONMENT.md`` describes;
the SEG is read back with highdicom and pydicom, and with pydicom-seg as a second, independent reader of its
geometry (3D Slicer cannot run here).
"""

from __future__ import annotations

import csv
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from helpers import SERIES_SHAPE as SHAPE
from helpers import SERIES_SPACING as SPACING
from helpers import blob_mask, oblique_rotation, png_size, write_flair_series

from pipeline.inference.case_report import (
    SUMMARY_COLUMNS,
    _to_project_orientation,
    tumour_volume_ml,
    write_qc_png,
    write_summary_csv,
)
from pipeline.inference.dicom_seg import write_dicom_seg


# ------------------------------------------------------------------------------------------ DICOM SEG
@pytest.mark.parametrize("oblique", [False, True], ids=["axial", "oblique"])
def test_dicom_seg_references_the_series_and_gives_back_the_mask(tmp_path: Path, oblique: bool) -> None:
    files, image, uids = write_flair_series(tmp_path / "flair", oblique=oblique)
    assert [Path(f).name for f in files] != sorted(Path(f).name for f in files)  # the order matters
    np.testing.assert_allclose(image.GetSpacing(), SPACING, rtol=1e-6)
    mask = blob_mask()
    out = write_dicom_seg(mask, files, tmp_path / "out" / "case_seg.dcm")
    assert out == tmp_path / "out" / "case_seg.dcm"
    assert sorted(p.name for p in out.parent.iterdir()) == ["case_seg.dcm"]  # no temporary file left

    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    source_uids = [ds.SOPInstanceUID for ds in sources]
    seg = hd.seg.segread(out)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
    assert seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == uids["study"]
    assert seg.FrameOfReferenceUID == uids["frame"]
    assert seg.SeriesInstanceUID not in {uids["series"], uids["study"]}
    assert seg.SeriesDescription == "lggseg FLAIR abnormality"
    (referenced_series,) = seg.ReferencedSeriesSequence
    assert referenced_series.SeriesInstanceUID == uids["series"]
    assert {item.ReferencedSOPInstanceUID for item in referenced_series.ReferencedInstanceSequence} == set(
        source_uids
    )

    (segment,) = seg.SegmentSequence
    assert segment.SegmentLabel == "FLAIR abnormality"
    assert segment.SegmentAlgorithmType == "AUTOMATIC"
    category, kind = (
        segment.SegmentedPropertyCategoryCodeSequence[0],
        segment.SegmentedPropertyTypeCodeSequence[0],
    )
    assert (category.CodingSchemeDesignator, category.CodeValue) == ("SCT", "49755003")
    assert (kind.CodingSchemeDesignator, kind.CodeValue) == ("SCT", "108369006")

    # empty frames are left out: one frame per slice with tumour
    with_tumour = [k for k in range(SHAPE[0]) if mask[k].any()]
    assert seg.NumberOfFrames == len(with_tumour) == 4

    # the mask rebuilt on the source grid from each frame's referenced source instance
    raw = pydicom.dcmread(out)
    pixels = raw.pixel_array.reshape(-1, SHAPE[1], SHAPE[2])
    rebuilt = np.zeros_like(mask)
    for frame, item in zip(pixels, raw.PerFrameFunctionalGroupsSequence, strict=True):
        (derivation,) = item.DerivationImageSequence
        (source,) = derivation.SourceImageSequence
        k = source_uids.index(source.ReferencedSOPInstanceUID)
        assert not rebuilt[k].any()  # one frame per slice
        rebuilt[k] = frame
        np.testing.assert_allclose(
            [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient],
            [float(v) for v in sources[k].ImagePositionPatient],
            atol=1e-4,
        )
    np.testing.assert_array_equal(rebuilt, mask)
    # ... and through highdicom's own reader
    by_source = seg.get_pixels_by_source_instance(source_sop_instance_uids=source_uids, segment_numbers=[1])
    np.testing.assert_array_equal(by_source[..., 0], mask)

    # the slice spacing is the positions' distance (GDCM writes SpacingBetweenSlices 1 into every slice)
    assert float(sources[0].SpacingBetweenSlices) == 1.0
    measures = raw.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(measures.SpacingBetweenSlices) == pytest.approx(SPACING[2])
    assert [float(v) for v in measures.PixelSpacing] == [SPACING[1], SPACING[0]]


@pytest.mark.parametrize("oblique", [False, True], ids=["axial", "oblique"])
def test_dicom_seg_geometry_through_pydicom_seg(tmp_path: Path, oblique: bool) -> None:
    """A second reader (pydicom-seg, which builds a SimpleITK image from the SEG's own geometry, as 3D
    Slicer's dcmqi does) puts the segment where the mask was on the source series."""
    pydicom_seg = pytest.importorskip("pydicom_seg")
    files, image, _ = write_flair_series(tmp_path / "flair", oblique=oblique)
    mask = blob_mask()
    out = write_dicom_seg(mask, files, tmp_path / "seg.dcm")
    result = pydicom_seg.SegmentReader().read(pydicom.dcmread(out))
    segment = result.segment_image(1)
    np.testing.assert_allclose(segment.GetSpacing(), image.GetSpacing(), rtol=1e-5)
    np.testing.assert_allclose(segment.GetDirection(), image.GetDirection(), atol=1e-5)
    on_source = sitk.Resample(segment, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(on_source), mask)


def test_dicom_seg_of_an_empty_mask(tmp_path: Path) -> None:
    files, _, uids = write_flair_series(tmp_path / "flair")
    out = write_dicom_seg(np.zeros(SHAPE, dtype=bool), files, tmp_path / "seg.dcm", segment_label="none")
    seg = hd.seg.segread(out)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uids["series"]
    uids_in_order = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files]
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids_in_order, segment_numbers=[1])
    assert pixels.shape == (*SHAPE, 1) and not pixels.any()


def test_dicom_seg_of_a_single_slice(tmp_path: Path) -> None:
    files, _, _ = write_flair_series(tmp_path / "flair", shape=(1, *SHAPE[1:]))
    mask = blob_mask()[3:4]
    raw = pydicom.dcmread(write_dicom_seg(mask, files, tmp_path / "seg.dcm"))
    measures = raw.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert "SpacingBetweenSlices" not in measures  # undefined for one slice (GDCM wrote 1)
    assert float(measures.SliceThickness) == SPACING[2]
    np.testing.assert_array_equal(raw.pixel_array.reshape(mask.shape), mask)


def test_dicom_seg_refuses_a_mask_of_another_shape(tmp_path: Path) -> None:
    files, _, _ = write_flair_series(tmp_path / "flair")
    for wrong in (np.zeros((SHAPE[0] - 1, *SHAPE[1:])), np.zeros(SHAPE[::-1]), np.zeros((1, *SHAPE))):
        with pytest.raises(ValueError, match=r"does not match the DICOM series") as caught:
            write_dicom_seg(wrong, files, tmp_path / "out" / "seg.dcm")
        assert "\n" not in str(caught.value)
        assert str((SHAPE[0], SHAPE[1], SHAPE[2])) in str(caught.value)
    with pytest.raises(ValueError, match="binary"):
        write_dicom_seg(blob_mask() * 2, files, tmp_path / "out" / "seg.dcm")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_dicom_seg_refuses_files_of_two_series(tmp_path: Path) -> None:
    files_a, _, _ = write_flair_series(tmp_path / "a")
    files_b, _, _ = write_flair_series(tmp_path / "b")
    with pytest.raises(ValueError, match="SeriesInstanceUID") as caught:
        write_dicom_seg(blob_mask(), files_a[:-1] + files_b[-1:], tmp_path / "seg.dcm")
    assert "\n" not in str(caught.value) and files_b[-1] in str(caught.value)
    (tmp_path / "junk.dcm").write_bytes(b"not dicom")
    with pytest.raises(ValueError, match="not a readable DICOM file"):
        write_dicom_seg(blob_mask(), files_a[:-1] + [str(tmp_path / "junk.dcm")], tmp_path / "seg.dcm")
    assert not (tmp_path / "seg.dcm").exists()


# ------------------------------------------------------------------------------------------ tumour volume
def test_tumour_volume_ml_by_hand() -> None:
    mask = np.zeros((20, 20, 10), dtype=np.uint8)
    mask[:10, :10, :10] = 1  # 1000 voxels
    affine = np.diag([0.5, 0.5, 2.0, 1.0])  # 0.5 mm^3 a voxel
    assert tumour_volume_ml(mask, affine) == pytest.approx(0.5)
    assert tumour_volume_ml(mask, (0.5, 0.5, 2.0)) == pytest.approx(0.5)
    assert tumour_volume_ml(mask[None].astype(bool), affine) == pytest.approx(0.5)  # channel-first, bool
    # the project's (P, L, S) affine with negative axes, and the same grid rotated: the volume does not change
    from pipeline.ingestion.kaggle import make_affine

    assert tumour_volume_ml(mask, make_affine((0.5, 0.5, 2.0))) == pytest.approx(0.5)
    rotated = affine.copy()
    rotated[:3, :3] = oblique_rotation(33.0) @ np.diag([0.5, 0.5, 2.0])
    rotated[:3, 3] = (10.0, -4.0, 7.0)
    assert tumour_volume_ml(mask, rotated) == pytest.approx(0.5)
    assert tumour_volume_ml(np.zeros_like(mask), affine) == 0.0
    with pytest.raises(ValueError, match="4x4 affine or three voxel sizes"):
        tumour_volume_ml(mask, (1.0, 1.0))
    with pytest.raises(ValueError, match="degenerate"):
        tumour_volume_ml(mask, (1.0, 0.0, 1.0))


# ------------------------------------------------------------------------------------------ QC PNG
def _flair_and_mask() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    flair = rng.normal(300.0, 40.0, (48, 40, 12)).astype(np.float32)
    mask = np.zeros(flair.shape, dtype=np.uint8)
    mask[10:20, 12:24, 4] = 1
    mask[8:22, 10:26, 5] = 1  # the largest
    mask[12:16, 14:18, 6] = 1
    mask[14:15, 15:16, 9] = 1  # the smallest: not among the three shown
    flair[mask > 0] += 300.0
    return flair, mask


def test_qc_png(tmp_path: Path) -> None:
    flair, mask = _flair_and_mask()
    out = write_qc_png(flair, mask, tmp_path / "qc" / "case_qc.png", spacing=(0.9, 0.9, 5.0), title="case")
    assert out == tmp_path / "qc" / "case_qc.png"
    assert sorted(p.name for p in out.parent.iterdir()) == ["case_qc.png"]
    width, height = png_size(out)
    assert (width, height) == (1020, 390)  # three panels of 3.4 x 3.9 inches at 100 dpi

    empty = write_qc_png(flair[None], np.zeros((1, *mask.shape)), tmp_path / "empty.png", affine=np.eye(4))
    assert png_size(empty) == (340, 390)  # one panel: the middle slice
    with pytest.raises(ValueError, match="same shape"):
        write_qc_png(flair, mask[..., :-1], tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_qc_png_shows_slices_in_radiological_convention() -> None:
    """Any affine: the slices shown are axial, anterior up and the patient's right on the left (the project's
    P, L, S axes), with the in-plane voxel sizes of those axes."""
    volume = np.zeros((5, 6, 7), dtype=np.float32)  # RAS axes on an identity-like affine
    volume[4, 5, 6] = 1.0  # the most right, anterior and superior voxel
    affine = np.diag([0.8, 0.9, 3.0, 1.0])  # i -> R, j -> A, k -> S
    image, mask, (row_mm, col_mm) = _to_project_orientation(volume, volume > 0, affine)
    assert image.shape == (6, 5, 7)  # rows run A -> P, columns R -> L, axial slices last
    assert np.argwhere(image).tolist() == [[0, 0, 6]]  # anterior (top), right (left of the picture), superior
    assert np.array_equal(mask, image > 0)
    assert (row_mm, col_mm) == (0.9, 0.8)
    assert nib.aff2axcodes(affine) == ("R", "A", "S")


# ------------------------------------------------------------------------------------------ summary CSV
def test_summary_csv(tmp_path: Path) -> None:
    rows = [
        {
            "case": "p1",
            "flair": "in/p1/p1_flair.nii.gz",
            "sequences": ["flair", "t1", "t1c"],
            "t1": "in/p1/p1_t1.nii.gz",
            "t1c": "in/p1/p1_t1c.nii.gz",
            "tumour_voxels": 1000,
            "tumour_volume_ml": 0.5,
            "seg_nifti": "out/p1/p1_seg.nii.gz",
            "qc_png": Path("out/p1/p1_qc.png"),
        },
        {
            "qc_png": "out/p2/p2_qc.png",  # key order does not matter
            "case": "p2",
            "flair": "in/p2/AX_FLAIR",
            "sequences": ("flair",),
            "t1": "FLAIR (stand-in)",
            "t1c": "FLAIR (stand-in)",
            "tumour_voxels": 0,
            "tumour_volume_ml": 0.0,
            "seg_nifti": "out/p2/p2_seg.nii.gz",
            "seg_dicom": "out/p2/p2_seg.dcm",
        },
    ]
    out = write_summary_csv(rows, tmp_path / "summary.csv")
    lines = out.read_text().splitlines()
    assert lines[0] == (
        "case,flair,sequences,t1,t1c,tumour_voxels,tumour_volume_ml,qc_score,review,qc_flags,seg_nifti,seg_dicom,"
        "qc_png"
    )
    assert tuple(lines[0].split(",")) == SUMMARY_COLUMNS
    with out.open(newline="") as handle:
        read = list(csv.DictReader(handle))
    assert read[0] == {
        "case": "p1",
        "flair": "in/p1/p1_flair.nii.gz",
        "sequences": "flair+t1+t1c",
        "t1": "in/p1/p1_t1.nii.gz",
        "t1c": "in/p1/p1_t1c.nii.gz",
        "tumour_voxels": "1000",
        "tumour_volume_ml": "0.5000",
        "qc_score": "",
        "review": "",
        "qc_flags": "",
        "seg_nifti": "out/p1/p1_seg.nii.gz",
        "seg_dicom": "",
        "qc_png": "out/p1/p1_qc.png",
    }
    assert lines[2] == (
        "p2,in/p2/AX_FLAIR,flair,FLAIR (stand-in),FLAIR (stand-in),0,0.0000,,,,out/p2/p2_seg.nii.gz,"
        "out/p2/p2_seg.dcm,out/p2/p2_qc.png"
    )
    with pytest.raises(ValueError, match="unknown columns"):
        write_summary_csv([{"case": "p3", "volume": 1.0}], tmp_path / "bad.csv")
    assert not (tmp_path / "bad.csv").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.csv"]
