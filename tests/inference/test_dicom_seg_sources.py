"""The DICOM SEG on source series as scanners write them: files in any order, sagittal and coronal planes,
a gantry tilt, an enhanced multi-frame MR, vendor header quirks, and series no SEG can describe.

The series are written with pydicom. Where possible the expected SEG frames are known by construction: a
mask given on the series' own voxel grid (so frame ``k`` is ``mask[:, :, k].T``, by hand), or a mask that is
a function of the world position, evaluated at the source pixel centres directly (not through the mask).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pipeline.inference.dicom_seg import DicomSegSkipped, try_write_dicom_seg, write_dicom_seg

MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4.1"
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)


# ------------------------------------------------------------------------------------------ writing series
def _ds(text: object) -> str:
    return "\\".join(f"{float(v):.6g}" for v in np.atleast_1d(text))


def _header(sop_class: str, rows: int, columns: int, uids: dict[str, str]) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.is_little_endian, ds.is_implicit_VR = True, False
    ds.SOPClassUID = sop_class
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uids["study"], uids["series"]
    ds.FrameOfReferenceUID = uids["frame"]
    ds.Modality = "MR"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Patient", "P1", "19700101", "F"
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240102", "101010", "7", "A1"
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber, ds.SeriesDescription = 3, "AX T2 FLAIR"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    return ds


def write_series(
    folder: Path,
    positions: np.ndarray,
    orientation: tuple[float, ...],
    spacing: tuple[float, float],
    shape: tuple[int, int],
    edit: Callable[[int, Dataset], None] | None = None,
) -> list[str]:
    """Single-frame MR files, slice ``k`` at ``positions[k]``, named so that the name order is not the
    slice order; returned in a shuffled order (neither name nor slice order). ``edit(k, ds)`` changes a
    header before it is written."""
    folder.mkdir(parents=True)
    uids = {"study": generate_uid(), "series": generate_uid(), "frame": generate_uid()}
    rng = np.random.default_rng(len(positions))
    files = []
    for k, position in enumerate(positions):
        ds = _header(MR_IMAGE, *shape, uids)
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = _ds(position)
        ds.ImageOrientationPatient = _ds(orientation)
        ds.PixelSpacing = _ds(spacing)
        ds.SliceThickness = "2"
        ds.PixelData = rng.integers(0, 800, shape).astype(np.int16).tobytes()
        if edit is not None:
            edit(k, ds)
        path = folder / f"IM{(5 * k + 3) % len(positions):04d}.dcm"
        ds.save_as(path, write_like_original=False)
        files.append(str(path))
    order = rng.permutation(len(files))
    shuffled = [files[i] for i in order]
    assert shuffled != files and shuffled != sorted(files)
    return shuffled


def write_enhanced(
    path: Path,
    positions: np.ndarray,
    orientation: tuple[float, ...],
    spacing: tuple[float, float],
    shape: tuple[int, int],
    per_frame_geometry: bool,
) -> None:
    """One Enhanced MR Image with a frame at each position (in the given order): plane positions per frame;
    plane orientation and pixel measures shared, or repeated in every frame (as some vendors write)."""
    uids = {"study": generate_uid(), "series": generate_uid(), "frame": generate_uid()}
    ds = _header(ENHANCED_MR_IMAGE, *shape, uids)
    ds.InstanceNumber = 1
    ds.NumberOfFrames = len(positions)
    orientation_item, measures_item = Dataset(), Dataset()
    orientation_item.ImageOrientationPatient = _ds(orientation)
    measures_item.PixelSpacing = _ds(spacing)
    measures_item.SliceThickness = "2"
    shared = Dataset()
    if not per_frame_geometry:
        shared.PlaneOrientationSequence = [orientation_item]
        shared.PixelMeasuresSequence = [measures_item]
    ds.SharedFunctionalGroupsSequence = [shared]
    groups = []
    for n, position in enumerate(positions):
        group, plane, content = Dataset(), Dataset(), Dataset()
        plane.ImagePositionPatient = _ds(position)
        group.PlanePositionSequence = [plane]
        content.InStackPositionNumber = n + 1
        group.FrameContentSequence = [content]
        if per_frame_geometry:
            group.PlaneOrientationSequence = [orientation_item]
            group.PixelMeasuresSequence = [measures_item]
        groups.append(group)
    ds.PerFrameFunctionalGroupsSequence = groups
    ds.PixelData = np.zeros((len(positions), *shape), dtype=np.int16).tobytes()
    ds.save_as(path, write_like_original=False)


# ------------------------------------------------------------------------------------------ expectations
def pixel_centres_lps(position, orientation, spacing, shape) -> np.ndarray:
    """``(rows, columns, 3)`` LPS centres of a frame's pixels (DICOM PS3.3 C.7.6.2.1.1)."""
    r, c = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    row_dir, col_dir = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    return np.asarray(position) + c[..., None] * spacing[1] * row_dir + r[..., None] * spacing[0] * col_dir


def region(ras: np.ndarray) -> np.ndarray:
    """An asymmetric region (a flip or swap of any axis moves it): a cube cut by a slanted plane."""
    centre = np.array([1.0, -2.0, 0.0])
    in_cube = np.max(np.abs(ras - centre), axis=-1) < 6.5
    return (in_cube & (ras @ np.array([1.0, 2.0, 3.0]) > 0.5)).astype(np.uint8)


def region_on_grid() -> tuple[np.ndarray, np.ndarray]:
    """:func:`region` on a 1 mm RAS grid from -40 to 40 mm: mask and affine (integer world points are
    voxel centres)."""
    axis = np.arange(-40.0, 41.0)
    ras = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1)
    affine = np.eye(4)
    affine[:3, 3] = -40.0
    return region(ras), affine


def read_seg(path: Path) -> tuple[Dataset, dict[tuple[str, int], tuple[np.ndarray, list[float]]]]:
    """The SEG and its frames keyed by (referenced SOP instance, referenced frame number or 0), each with
    the frame's Image Position (Patient)."""
    raw = pydicom.dcmread(path)
    pixels = raw.pixel_array.reshape(-1, raw.Rows, raw.Columns)
    frames = {}
    for frame, item in zip(pixels, raw.PerFrameFunctionalGroupsSequence, strict=True):
        (derivation,) = item.DerivationImageSequence
        (source,) = derivation.SourceImageSequence
        key = (source.ReferencedSOPInstanceUID, int(source.get("ReferencedFrameNumber", 0)))
        assert key not in frames  # one frame per source frame
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        frames[key] = (frame, position)
    return raw, frames


def assert_frames(path: Path, expected: dict[tuple[str, int], np.ndarray], positions: dict) -> None:
    """The SEG has a frame exactly for the source frames whose expected mask is not empty, equal to it and
    at the source frame's position."""
    raw, frames = read_seg(path)
    assert set(frames) == {key for key, frame in expected.items() if frame.any()}
    for key, (frame, position) in frames.items():
        np.testing.assert_array_equal(frame, expected[key], err_msg=str(key))
        np.testing.assert_allclose(position, positions[key], atol=1e-4)


def _uid(file: str) -> str:
    return pydicom.dcmread(file, stop_before_pixels=True).SOPInstanceUID


def _sha256(files: list[str]) -> list[str]:
    return [hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in files]


# ------------------------------------------------------------------------------------------ tests
AX_SHAPE, AX_SPACING, AX_SLICES = (6, 5), (0.8, 0.6), 7  # rows, columns; row, column spacing (mm)
AX_ORIGIN, AX_STEP = np.array([-10.0, 20.0, 30.0]), 2.5


def axial_series(folder: Path, edit=None) -> tuple[list[str], np.ndarray, np.ndarray, dict, dict]:
    """A shuffled axial series and a mask on its own voxel grid (voxel (i, j, k) = column i, row j of
    slice k): files, mask, affine, and per source frame the expected SEG frame and position."""
    positions = AX_ORIGIN + np.outer(np.arange(AX_SLICES), [0.0, 0.0, AX_STEP])
    files = write_series(folder, positions, AXIAL, AX_SPACING, AX_SHAPE, edit)
    mask = (np.random.default_rng(1).random((AX_SHAPE[1], AX_SHAPE[0], AX_SLICES)) > 0.55).astype(np.uint8)
    mask[:, :, [0, 4]] = 0  # two empty slices
    # by hand: LPS of voxel (i, j, k) is origin + (i * 0.6, j * 0.8, k * 2.5); RAS negates x and y
    affine = np.array(
        [
            [-AX_SPACING[1], 0, 0, -AX_ORIGIN[0]],
            [0, -AX_SPACING[0], 0, -AX_ORIGIN[1]],
            [0, 0, AX_STEP, AX_ORIGIN[2]],
            [0, 0, 0, 1],
        ]
    )
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    slice_of = {ds.SOPInstanceUID: int(ds.InstanceNumber) - 1 for ds in headers}  # slice k is instance k + 1
    expected = {(uid, 0): mask[:, :, k].T for uid, k in slice_of.items()}
    where = {(uid, 0): positions[k] for uid, k in slice_of.items()}
    return files, mask, affine, expected, where


def test_axial_series_in_any_file_order(tmp_path: Path) -> None:
    files, mask, affine, expected, where = axial_series(tmp_path / "flair")
    out = write_dicom_seg(mask, files, tmp_path / "out" / "seg.dcm", affine=affine)
    assert sorted(p.name for p in out.parent.iterdir()) == ["seg.dcm"]
    assert_frames(out, expected, where)
    raw = pydicom.dcmread(out)
    assert raw.NumberOfFrames == AX_SLICES - 2 and raw.SegmentationType == "BINARY"
    measures = raw.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(measures.SpacingBetweenSlices) == pytest.approx(AX_STEP)

    # the same voxels stored in another axis order (k, flipped i, j): the same SEG frames
    reindex = np.array([[0, -1, 0, AX_SHAPE[1] - 1], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
    other = mask[::-1].transpose(2, 0, 1)  # other[a, b, c] = mask[4 - b, c, a]
    out2 = write_dicom_seg(other, files, tmp_path / "out2" / "seg.dcm", affine=affine @ reindex)
    assert_frames(out2, expected, where)


@pytest.mark.parametrize("plane", ["sagittal", "coronal"])
def test_sagittal_and_coronal_series(tmp_path: Path, plane: str) -> None:
    orientation = SAGITTAL if plane == "sagittal" else CORONAL
    normal = np.cross(orientation[:3], orientation[3:])
    shape, spacing = (11, 10), (2.0, 2.0)
    corner = np.array([-9.0, -9.0, 11.0]) if plane == "sagittal" else np.array([-9.0, -6.0, 11.0])
    positions = corner + np.outer(np.arange(-3, 4), 2.0 * normal)
    files = write_series(tmp_path / plane, positions, orientation, spacing, shape)
    mask, affine = region_on_grid()
    expected, where = {}, {}
    for f in files:
        ds = pydicom.dcmread(f)
        position = [float(v) for v in ds.ImagePositionPatient]
        ras = pixel_centres_lps(position, orientation, spacing, shape) * [-1, -1, 1]
        expected[(ds.SOPInstanceUID, 0)] = region(ras)
        where[(ds.SOPInstanceUID, 0)] = position
    non_empty = [e for e in expected.values() if e.any()]
    assert 3 <= len(non_empty) < len(files) and all(not e.all() for e in non_empty)  # a real test
    out = write_dicom_seg(mask, files, tmp_path / "seg.dcm", affine=affine)
    assert_frames(out, expected, where)
    orientation_written = pydicom.dcmread(out).SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
    assert [float(v) for v in orientation_written.ImageOrientationPatient] == list(orientation)


def test_gantry_tilted_series(tmp_path: Path) -> None:
    """Each slice is shifted 1.5 mm along y from the last (not along its normal): a mask that is 1 anterior
    of a plane cuts each slice at another row."""
    shape, spacing = (16, 6), (1.0, 1.0)
    positions = np.array([[-3.0, -2.0 + 1.5 * k, 4.0 + 3.0 * k] for k in range(6)])
    files = write_series(tmp_path / "tilted", positions, AXIAL, spacing, shape)
    affine = np.diag([1.0, 0.5, 1.0, 1.0])
    affine[:3, 3] = -20.0
    j = np.arange(81)
    mask = np.broadcast_to((-20.0 + 0.5 * j > -5.25)[None, :, None], (41, 81, 41)).astype(np.uint8)
    expected, where = {}, {}
    for f in files:
        ds = pydicom.dcmread(f)
        y = float(ds.ImagePositionPatient[1])
        rows = (y + np.arange(shape[0]) < 5.25).astype(np.uint8)  # LPS y < 5.25 is RAS A > -5.25
        expected[(ds.SOPInstanceUID, 0)] = np.repeat(rows[:, None], shape[1], axis=1)
        where[(ds.SOPInstanceUID, 0)] = [float(v) for v in ds.ImagePositionPatient]
    assert sorted(int(e[:, 0].sum()) for e in expected.values()) == [0, 2, 3, 5, 6, 8]  # the cut moves
    out = write_dicom_seg(mask, files, tmp_path / "seg.dcm", affine=affine)
    assert_frames(out, expected, where)
    measures = pydicom.dcmread(out).SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert "SpacingBetweenSlices" not in measures  # no regular stack along the normal


@pytest.mark.parametrize("per_frame_geometry", [False, True], ids=["shared", "per-frame"])
def test_enhanced_multiframe_mr(tmp_path: Path, per_frame_geometry: bool) -> None:
    shape, spacing = (11, 10), (2.0, 2.0)
    order = np.random.default_rng(3).permutation(7)  # frames not in spatial order
    positions = np.array([-9.0, -6.0, 11.0]) + np.outer(order - 3, [0.0, -2.0, 0.0])
    path = tmp_path / "enhanced.dcm"
    write_enhanced(path, positions, CORONAL, spacing, shape, per_frame_geometry)
    before = _sha256([str(path)])
    uid = _uid(str(path))
    expected, where = {}, {}
    for n, position in enumerate(positions):
        ras = pixel_centres_lps(position, CORONAL, spacing, shape) * [-1, -1, 1]
        expected[(uid, n + 1)] = region(ras)
        where[(uid, n + 1)] = position
    assert 3 <= sum(e.any() for e in expected.values()) < len(positions)
    mask, affine = region_on_grid()
    out = write_dicom_seg(mask, [path], tmp_path / "seg.dcm", affine=affine)
    assert_frames(out, expected, where)
    raw = pydicom.dcmread(out)
    (series,) = raw.ReferencedSeriesSequence
    assert [item.ReferencedSOPInstanceUID for item in series.ReferencedInstanceSequence] == [uid]
    shared = raw.SharedFunctionalGroupsSequence[0]
    assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == list(spacing)
    assert [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient] == list(CORONAL)
    assert _sha256([str(path)]) == before


def test_vendor_header_quirks(tmp_path: Path) -> None:
    """``NumberOfFrames = 1`` on single-frame files (Hitachi), a birth date and study time of ``***``, no
    Patient's Sex, Accession Number or Study ID: a SEG is written and the user's files are unchanged."""

    def quirks(k: int, ds: Dataset) -> None:
        ds.NumberOfFrames = 1
        ds.PatientBirthDate, ds.StudyTime = "***", "***"
        del ds.PatientSex, ds.AccessionNumber, ds.StudyID

    files, mask, affine, expected, where = axial_series(tmp_path / "hitachi", quirks)
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert header.NumberOfFrames == 1 and header.PatientBirthDate == "***" and "PatientSex" not in header
    before = _sha256(files)
    out = write_dicom_seg(mask, files, tmp_path / "seg.dcm", affine=affine)
    assert _sha256(files) == before
    assert_frames(out, expected, where)
    seg = pydicom.dcmread(out, stop_before_pixels=True)
    assert seg.PatientID == "P1" and seg.StudyDate == "20240102"  # valid values kept
    for keyword in ("PatientBirthDate", "StudyTime", "PatientSex", "AccessionNumber", "StudyID"):
        assert keyword in seg and seg[keyword].value in ("", None), keyword  # Type 2: present, empty


def _no_frame_of_reference(k: int, ds: Dataset) -> None:
    del ds.FrameOfReferenceUID


def _on(slice_: int, change: Callable[[Dataset], None]) -> Callable[[int, Dataset], None]:
    return lambda k, ds: change(ds) if k == slice_ else None


SKIPS = {
    "no FrameOfReferenceUID": (_no_frame_of_reference, "FrameOfReferenceUID"),
    "no ImagePositionPatient": (
        _on(2, lambda ds: delattr(ds, "ImagePositionPatient")),
        "ImagePositionPatient",
    ),
    "no ImageOrientationPatient": (
        _on(2, lambda ds: delattr(ds, "ImageOrientationPatient")),
        "ImageOrientationPatient",
    ),
    "odd ImageOrientationPatient": (
        _on(2, lambda ds: setattr(ds, "ImageOrientationPatient", "0\\0\\0\\0\\0\\0")),
        "ImageOrientationPatient",
    ),
    "two orientations": (
        _on(2, lambda ds: setattr(ds, "ImageOrientationPatient", _ds(CORONAL))),
        "Orientation",
    ),
    "one position twice": (
        _on(2, lambda ds: setattr(ds, "ImagePositionPatient", _ds(AX_ORIGIN + [0, 0, AX_STEP]))),
        "ImagePositionPatient",
    ),
    "not an image": (_on(2, lambda ds: delattr(ds, "Rows")), "Rows"),
}


@pytest.mark.parametrize("defect", list(SKIPS))
def test_series_without_a_seg_is_skipped_in_one_line(tmp_path: Path, defect: str) -> None:
    edit, attribute = SKIPS[defect]
    files, mask, affine, _, _ = axial_series(tmp_path / "flair", edit)
    named = [f for f in files if pydicom.dcmread(f, stop_before_pixels=True).get("InstanceNumber") in (2, 3)]
    if defect == "no FrameOfReferenceUID":
        named = [files[0]]
    out = tmp_path / "out" / "seg.dcm"
    with pytest.raises(DicomSegSkipped) as caught:
        write_dicom_seg(mask, files, out, affine=affine)
    reason = str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert "\n" not in reason and attribute in reason
    assert any(f in reason for f in named), reason
    assert try_write_dicom_seg(mask, files, out, affine=affine) == (None, reason)
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_slice_order_call_without_affine(tmp_path: Path) -> None:
    """The old contract: ``mask[k]`` on ``source_files[k]`` (whatever the files' positions)."""
    files, _, _, _, where = axial_series(tmp_path / "flair")
    frames = (np.random.default_rng(2).random((len(files), *AX_SHAPE)) > 0.5).astype(np.uint8)
    frames[3] = 0
    uids = [_uid(f) for f in files]
    out = write_dicom_seg(frames, files, tmp_path / "seg.dcm")
    assert_frames(out, {(u, 0): frames[k] for k, u in enumerate(uids)}, where)
    path, reason = try_write_dicom_seg(frames, files, tmp_path / "again.dcm")
    assert path == tmp_path / "again.dcm" and path.is_file() and reason is None
    # a mask of another shape is the caller's error, not a skipped SEG
    with pytest.raises(ValueError, match="does not match the DICOM series") as caught:
        try_write_dicom_seg(frames[1:], files, tmp_path / "wrong.dcm")
    assert not isinstance(caught.value, DicomSegSkipped)
    with pytest.raises(ValueError, match="3D"):
        write_dicom_seg(frames[0], files, tmp_path / "wrong.dcm", affine=np.eye(4))
    assert not (tmp_path / "wrong.dcm").exists()


def test_an_enhanced_flair_with_frames_out_of_order_is_read_in_place_and_segmented(tmp_path: Path) -> None:
    """GDCM stacks an enhanced file's frames in file order with a made-up 1 mm spacing; the reader places each
    frame by its own position, and ``lggseg infer`` writes the mask on that grid and a SEG on the one file."""
    from dataclasses import asdict

    import torch

    from pipeline.cli import main
    from pipeline.config import RunConfig
    from pipeline.ingestion.scan_reading import read_scan_volume
    from pipeline.model_files import create_network

    shape, count = (40, 44), 9
    order = np.random.default_rng(5).permutation(count)
    positions = np.array([-20.0, -22.0, 4.0]) + np.outer(order, [0.0, 0.0, 3.0])
    path = tmp_path / "study" / "flair.dcm"
    path.parent.mkdir()
    write_enhanced(path, positions, AXIAL, (1.0, 1.0), shape, per_frame_geometry=False)
    ds = pydicom.dcmread(path)
    frames = np.zeros((count, *shape), dtype=np.int16)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for n, spatial in enumerate(order):  # a head-like disk whose value tells the frame's place
        frames[n] = ((yy - 20) ** 2 + (xx - 22) ** 2 < 15**2) * (200 + 10 * spatial)
    ds.PixelData = frames.tobytes()
    ds.SeriesDescription = "AX FLAIR"
    ds.save_as(path)
    scan = read_scan_volume(path)
    np.testing.assert_allclose(scan.image.GetSpacing(), (1.0, 1.0, 3.0))
    array = np.asarray(__import__("SimpleITK").GetArrayFromImage(scan.image))
    assert [int(array[k].max()) for k in range(count)] == [200 + 10 * k for k in range(count)]
    cfg = RunConfig(arch="unext")
    torch.manual_seed(0)
    model = tmp_path / "model.pt"
    torch.save({"model": create_network(cfg).state_dict(), "config": asdict(cfg)}, model)
    out = tmp_path / "out"
    assert (
        main(
            [
                "infer",
                "--checkpoint",
                str(model),
                "--flair",
                str(path),
                "--case",
                "enh",
                "--output",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    seg = pydicom.dcmread(out / "enh" / "enh_seg.dcm") if (out / "enh" / "enh_seg.dcm").exists() else None
    import nibabel as nib

    mask = nib.load(out / "enh" / "enh_seg.nii.gz")
    assert mask.shape == (shape[1], shape[0], count)
    if seg is not None:  # an untrained network may find nothing: no frame, no SEG needed
        (series,) = seg.ReferencedSeriesSequence
        assert [i.ReferencedSOPInstanceUID for i in series.ReferencedInstanceSequence] == [_uid(str(path))]
