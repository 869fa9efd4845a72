"""A predicted mask as a DICOM Segmentation (SEG) object that references the user's FLAIR series.

The SEG is written with highdicom 0.22 (the newest release that works with pydicom 2.4.4, which MONAI Label
needs): BINARY, one segment, derived from the source images (same patient, study and frame of reference; the
SEG's Referenced Series Sequence names the FLAIR series and every frame names the source instance, or the
frame of a multi-frame source, it lies on), empty frames left out. The segment is coded as

- Segmented Property Category: SCT 49755003 "Morphologically Abnormal Structure" (DICOM CID 7150, called
  "Morphologically Altered Structure" in older editions);
- Segmented Property Type: SCT 108369006 "Neoplasm" (CID 7151);
- Anatomic Region: SCT 12738006 "Brain";
- algorithm family DCM 123110 "Artificial Intelligence" (CID 7162), segment algorithm type AUTOMATIC.

The frames of the SEG are the frames of the source: one per single-frame file, or one per frame of one
multi-frame (enhanced) file. Given the mask's voxel-to-world affine (RAS mm, the nibabel / MONAI convention),
each source frame's pixel centres are taken from its own Image Position / Orientation (Patient) and Pixel
Spacing (in the file or in its Shared / Per-Frame Functional Groups), turned from DICOM's LPS into RAS and
into the mask's voxel indices, and the mask is read there by nearest neighbour (0 outside the mask's grid).
So neither the order of the files, nor a gantry tilt, nor the frame layout of the source matters. Without an
affine the old contract holds: ``mask[k]`` is the pixel matrix of the ``k``-th source frame (SimpleITK's
``ImageSeriesReader`` order and ``GetArrayFromImage``).

Vendor headers that highdicom refuses are mended in the in-memory copies it is given (the user's files are
only read): ``NumberOfFrames = 1`` on single-frame images (Hitachi) is dropped, date and time values that
are not valid DA / TM / DT (``PatientBirthDate`` of ``***``) and a Patient's Sex other than M / F / O are
blanked, and the Type 2 patient and study attributes highdicom reads are added empty where missing. A
series no SEG can describe (no Frame of Reference UID, no image position or orientation, frames of several
orientations or at one position, ...) raises :class:`DicomSegSkipped`, one line naming the file and the
attribute; :func:`try_write_dicom_seg` returns that line instead.

For single-frame series, the slice geometry written is that of the source slices' Image Position
(Patient): their Spacing Between Slices tag is replaced by the distance between the positions (or left out
when the slices are unevenly spaced or tilted). Series written slice by slice with SimpleITK / GDCM carry
``SpacingBetweenSlices = 1`` whatever the real distance, and a reader that believes it (pydicom-seg does)
would stack the SEG's frames wrongly.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid
from pydicom.valuerep import DA, DT, TM

from pipeline import __version__
from pipeline.errors import ErrorKind, LGGSegError
from pipeline.ingestion.slice_geometry import (
    in_plane_offsets,
    is_tilted,
    positions_along_normal,
    uneven_spacing,
)
from pipeline.safety import atomic_path

__all__ = [
    "SEGMENT_ANATOMIC_REGION",
    "SEGMENT_CATEGORY",
    "SEGMENT_TYPE",
    "DicomSegSkipped",
    "try_write_dicom_seg",
    "write_dicom_seg",
]

SEGMENT_CATEGORY = codes.cid7150.MorphologicallyAbnormalStructure  # SCT 49755003
SEGMENT_TYPE = codes.cid7151.Neoplasm  # SCT 108369006
SEGMENT_ANATOMIC_REGION = codes.SCT.Brain  # SCT 12738006
_ALGORITHM_FAMILY = codes.cid7162.ArtificialIntelligence  # DCM 123110
_SERIES_NUMBER = 9901  # beside the scanner's series numbers, not among them
_PIXEL_SPACING_TOLERANCE = 1e-3  # relative: the frames' pixel spacings count as one within it
# the slice spacing and a gantry tilt: pipeline.ingestion.slice_geometry (the scan reader's rule too)
_ORIENTATION_TOLERANCE = 1e-3  # direction cosines of two frames count as one orientation within it
_UNIT_TOLERANCE = 1e-2  # direction cosines count as unit and orthogonal within it (vendors round them)
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
# Type 2 attributes of the Patient and General Study modules highdicom 0.22 reads from the first source
# (``Segmentation.__init__`` passes them to ``SOPClass``): present, possibly empty, in every SEG
_TYPE2_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDate",
    "StudyTime",
)
_PATIENT_SEX = ("M", "F", "O")  # highdicom.PatientSexValues
_FUNCTIONAL_GROUP = {  # the functional group macro holding each per-frame attribute of an enhanced image
    "ImagePositionPatient": "PlanePositionSequence",
    "ImageOrientationPatient": "PlaneOrientationSequence",
    "PixelSpacing": "PixelMeasuresSequence",
    "SliceThickness": "PixelMeasuresSequence",
    "SpacingBetweenSlices": "PixelMeasuresSequence",
}

_NUMPY_ALIAS_LOCK = threading.Lock()


class DicomSegSkipped(LGGSegError, ValueError):
    """No DICOM SEG can be made of these source files; the message is one line naming the file and the
    missing or odd attribute (the caller keeps the case and reports it as a warning)."""

    kind = ErrorKind.BAD_INPUT


@dataclass(frozen=True)
class _Frame:
    """One source frame: its file (index into the files), frame number in that file (0-based) and geometry
    in DICOM patient space (LPS mm)."""

    file: int
    number: int
    position: np.ndarray  # Image Position (Patient): centre of the first pixel
    orientation: np.ndarray  # Image Orientation (Patient): row direction, then column direction
    spacing: np.ndarray  # Pixel Spacing: between rows, then between columns


@contextlib.contextmanager
def _numpy_float_alias() -> Iterator[None]:
    """``numpy.float_`` while highdicom 0.22 builds a SEG (it names the alias removed in numpy 2; highdicom
    0.23 dropped it but needs pydicom 3). The alias exists only inside the block, one writer at a time."""
    with _NUMPY_ALIAS_LOCK:
        if "float_" in vars(np):  # numpy 1.x: nothing to do
            yield
            return
        np.float_ = np.float64  # type: ignore[attr-defined]
        try:
            yield
        finally:
            del np.float_  # type: ignore[attr-defined]


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _present(value: object) -> bool:
    if value is None or (isinstance(value, str) and not value.strip()):
        return False
    return not (isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 0)


def _read_sources(files: Sequence[str]) -> list[Dataset]:
    """The header of each source file (no pixel data), checked to form one series in one frame of reference.

    Raises:
        DicomSegSkipped: no files, an unreadable file, a file that is not an image, no Frame of Reference
            UID, or files of different studies, series, frames of reference or matrix sizes.
    """
    if len(files) == 0:
        raise DicomSegSkipped("no source DICOM files given for the DICOM SEG")
    datasets = []
    for f in files:
        try:
            try:
                ds = pydicom.dcmread(f, stop_before_pixels=True)
            except InvalidDicomError:  # no preamble (older scanners write none): read it as GDCM does
                ds = pydicom.dcmread(f, stop_before_pixels=True, force=True)
            if "SOPInstanceUID" not in ds and "SOPClassUID" not in ds:
                raise InvalidDicomError("no DICOM header")
        except Exception as err:  # pydicom raises several kinds; all mean the same to the user
            raise DicomSegSkipped(
                f"{f}: not a readable DICOM file ({type(err).__name__}: {_one_line(err)})"
            ) from None
        missing = [
            a
            for a in (
                "SOPClassUID",
                "SOPInstanceUID",
                "StudyInstanceUID",
                "SeriesInstanceUID",
                "Rows",
                "Columns",
            )
            if not _present(ds.get(a))
        ]
        if missing:
            raise DicomSegSkipped(f"{f}: not an image of a series (no {', '.join(missing)})")
        if not _present(ds.get("FrameOfReferenceUID")):
            raise DicomSegSkipped(f"{f}: no FrameOfReferenceUID; the DICOM SEG needs it")
        datasets.append(ds)
    first = datasets[0]
    for f, ds in zip(files, datasets, strict=True):
        for attr in ("SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID", "Rows", "Columns"):
            if ds.get(attr) != first.get(attr):
                raise DicomSegSkipped(
                    f"{f}: {attr} {ds.get(attr)} differs from {first.get(attr)} of {files[0]}; "
                    "give the files of one series"
                )
    return datasets


def _number_of_frames(ds: Dataset, file: str) -> int:
    try:
        n = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise DicomSegSkipped(f"{file}: odd NumberOfFrames {ds.get('NumberOfFrames')!r}")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and len(per_frame) != n:
        raise DicomSegSkipped(
            f"{file}: PerFrameFunctionalGroupsSequence has {len(per_frame)} items for NumberOfFrames {n}"
        )
    return n


def _frame_value(ds: Dataset, number: int, keyword: str) -> object:
    """``keyword`` of frame ``number``: from its Per-Frame Functional Group, the Shared one, or the file's
    root (single-frame images), in that order; ``None`` when none has a value."""
    groups = []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and number < len(per_frame):
        groups.append(per_frame[number])
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        groups.append(shared[0])
    for group in groups:
        macro = group.get(_FUNCTIONAL_GROUP[keyword])
        if macro and _present(macro[0].get(keyword)):
            return macro[0].get(keyword)
    value = ds.get(keyword)
    return value if _present(value) else None


def _numbers(ds: Dataset, number: int, keyword: str, count: int, file: str) -> np.ndarray:
    value = _frame_value(ds, number, keyword)
    if value is None:
        raise DicomSegSkipped(
            f"{file}: no {keyword} (neither in the file nor in its functional groups); the DICOM SEG needs it"
        )
    values = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    try:
        array = np.asarray([float(v) for v in values], dtype=float)
    except (TypeError, ValueError):
        array = np.empty(0)
    if array.shape != (count,) or not np.all(np.isfinite(array)):
        raise DicomSegSkipped(f"{file}: odd {keyword} {_one_line(value)!r} ({count} numbers expected)")
    return array


def _source_frames(files: Sequence[str], datasets: Sequence[Dataset]) -> list[_Frame]:
    """Every frame of the sources with its geometry, in file order then frame order.

    Raises:
        DicomSegSkipped: a frame without (or with an odd) position, orientation or pixel spacing; frames of
            several orientations or pixel spacings; two frames at one position; a multi-frame file among
            several files.
    """
    frames = []
    for index, (f, ds) in enumerate(zip(files, datasets, strict=True)):
        n = _number_of_frames(ds, f)
        if n > 1 and len(files) > 1:
            raise DicomSegSkipped(
                f"{f}: multi-frame image ({n} frames) among {len(files)} files; the DICOM SEG needs one "
                "multi-frame file or single-frame files"
            )
        for number in range(n):
            orientation = _numbers(ds, number, "ImageOrientationPatient", 6, f)
            row, column = orientation[:3], orientation[3:]
            if (
                abs(np.linalg.norm(row) - 1) > _UNIT_TOLERANCE
                or abs(np.linalg.norm(column) - 1) > _UNIT_TOLERANCE
                or abs(np.dot(row, column)) > _UNIT_TOLERANCE
            ):
                raise DicomSegSkipped(
                    f"{f}: odd ImageOrientationPatient {orientation.tolist()} "
                    "(not two orthogonal unit vectors)"
                )
            spacing = _numbers(ds, number, "PixelSpacing", 2, f)
            if np.any(spacing <= 0):
                raise DicomSegSkipped(f"{f}: odd PixelSpacing {spacing.tolist()} (not positive)")
            position = _numbers(ds, number, "ImagePositionPatient", 3, f)
            frames.append(_Frame(index, number, position, orientation, spacing))
    first = frames[0]
    for frame in frames[1:]:
        where = f"{files[frame.file]}" + (f" (frame {frame.number + 1})" if len(files) == 1 else "")
        if np.max(np.abs(frame.orientation - first.orientation)) > _ORIENTATION_TOLERANCE:
            raise DicomSegSkipped(
                f"{where}: ImageOrientationPatient {frame.orientation.tolist()} differs from "
                f"{first.orientation.tolist()} of {files[first.file]}; the DICOM SEG needs one orientation"
            )
        if np.max(np.abs(frame.spacing / first.spacing - 1)) > _PIXEL_SPACING_TOLERANCE:
            raise DicomSegSkipped(
                f"{where}: PixelSpacing {frame.spacing.tolist()} differs from {first.spacing.tolist()} "
                f"of {files[first.file]}; the DICOM SEG needs one pixel spacing"
            )
    positions = np.stack([frame.position for frame in frames])
    _, first_at, counts = np.unique(positions, axis=0, return_index=True, return_counts=True)
    if np.any(counts > 1):
        twice = frames[int(first_at[np.argmax(counts > 1)])]
        raise DicomSegSkipped(
            f"{files[twice.file]}: {int(counts.max())} frames share ImagePositionPatient "
            f"{twice.position.tolist()} (several echoes or time points?); the DICOM SEG needs one frame per "
            "position"
        )
    return frames


def _binary(mask: object) -> np.ndarray:
    array = np.asarray(mask)
    if array.dtype != bool and not np.all(np.isin(array, (0, 1))):
        raise ValueError("mask must be binary (values 0 and 1 only) for a BINARY DICOM SEG")
    return array.astype(np.uint8)


def _frames_in_order(mask: object, expected: tuple[int, int, int]) -> np.ndarray:
    """The mask given frame by frame in the sources' order (the call without an affine)."""
    array = np.asarray(mask)
    if array.shape != expected:
        raise ValueError(
            f"mask shape {tuple(array.shape)} does not match the DICOM series "
            f"(slices, rows, columns) {expected}"
        )
    return _binary(array)


def _sampled_frames(
    mask: object, affine: object, frames: Sequence[_Frame], rows: int, columns: int
) -> np.ndarray:
    """The mask read by nearest neighbour at each source frame's pixel centres: ``(frames, rows, columns)``.

    A pixel ``(r, c)`` of a frame lies at ``position + c * spacing[1] * orientation[:3] + r * spacing[0] *
    orientation[3:]`` in LPS; in RAS (x and y negated) the inverse affine gives its voxel index.
    """
    array = np.asarray(mask)
    if array.ndim == 4 and array.shape[0] == 1:  # channel-first (1, H, W, D)
        array = array[0]
    if array.ndim != 3:
        raise ValueError(f"mask must be a 3D array (i, j, k); got shape {tuple(array.shape)}")
    array = _binary(array)
    matrix = np.asarray(affine, dtype=float)
    if (
        matrix.shape != (4, 4)
        or not np.all(np.isfinite(matrix))
        or abs(np.linalg.det(matrix[:3, :3])) < 1e-12
    ):
        raise ValueError(f"affine must be an invertible 4x4 voxel-to-world matrix; got {matrix.tolist()}")
    to_voxel = np.linalg.inv(matrix)
    linear = to_voxel[:3, :3] @ _LPS_TO_RAS
    r = np.arange(rows, dtype=float)[None, :, None]
    c = np.arange(columns, dtype=float)[None, None, :]
    shape = np.asarray(array.shape)[:, None, None]
    out = np.zeros((len(frames), rows, columns), dtype=np.uint8)
    for n, frame in enumerate(frames):
        origin = linear @ frame.position + to_voxel[:3, 3]
        along_row = linear @ (frame.orientation[:3] * frame.spacing[1])  # one column further
        along_column = linear @ (frame.orientation[3:] * frame.spacing[0])  # one row further
        index = origin[:, None, None] + along_row[:, None, None] * c + along_column[:, None, None] * r
        index = np.floor(index + 0.5).astype(np.int64)
        inside = np.all((index >= 0) & (index < shape), axis=0)
        out[n][inside] = array[index[0][inside], index[1][inside], index[2][inside]]
    return out


def _valid_value(vr: str, value: object) -> bool:
    parse = {"DA": DA, "TM": TM, "DT": DT}[vr]
    values = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    try:
        for v in values:
            if _present(v):
                parse(str(v).strip())
    except (TypeError, ValueError, OverflowError):
        return False
    return True


def _mend_header(ds: Dataset) -> None:
    """Blank what highdicom refuses in the patient and study data of an in-memory header, add the Type 2
    attributes it reads where missing."""
    for tag in list(ds.keys()):
        if tag.is_private:
            continue
        try:
            element = ds[tag]
        except Exception:  # an element pydicom cannot even decode: highdicom would stumble on it too
            del ds[tag]
            continue
        if element.VR in ("DA", "TM", "DT") and not _valid_value(element.VR, element.value):
            element.value = ""
    if "PatientSex" in ds:
        sex = str(ds.PatientSex or "").strip().upper()
        ds.PatientSex = sex if sex in _PATIENT_SEX else ""
    for keyword in _TYPE2_PATIENT_STUDY:
        if keyword not in ds:
            setattr(ds, keyword, "")


def _slice_spacing(frames: Sequence[_Frame]) -> float | None:
    """Distance between neighbouring slices along the slice normal, or ``None`` when there is one slice, or
    the slices are unevenly spaced, or shifted in-plane from one to the next (a gantry tilt): the rule of the
    scan reader (:mod:`pipeline.ingestion.slice_geometry`)."""
    if len(frames) < 2:
        return None
    row, column = frames[0].orientation[:3], frames[0].orientation[3:]
    positions = np.stack([f.position for f in frames])
    along = positions_along_normal(positions, row, column)
    order = np.argsort(along, kind="stable")
    along = along[order]
    if uneven_spacing(along) is not None or is_tilted(in_plane_offsets(positions[order], row, column)):
        return None
    return float(np.mean(np.diff(along)))


def _single_frame_sources(datasets: Sequence[Dataset], frames: Sequence[_Frame]) -> list[Dataset]:
    """The headers as highdicom's single-frame path reads them: geometry at the root (taken from the
    functional groups where only they have it), no Number of Frames, Spacing Between Slices set from the
    positions (removed when undefined) and a Slice Thickness (highdicom builds the Pixel Measures of both)."""
    spacing = _slice_spacing(frames)
    for ds in datasets:
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness"):
            value = _frame_value(ds, 0, keyword)
            if value is not None and not _present(ds.get(keyword)):
                setattr(ds, keyword, value)
        if "NumberOfFrames" in ds:
            del ds.NumberOfFrames
        if spacing is None:
            if "SpacingBetweenSlices" in ds:
                del ds.SpacingBetweenSlices
        else:
            ds.SpacingBetweenSlices = f"{spacing:.6g}"
        if not _present(ds.get("SliceThickness")):
            # highdicom 0.22 needs one to compare the pixel measures: the slice spacing is the best guess
            ds.SliceThickness = f"{spacing:.6g}" if spacing else "1"
    return list(datasets)


def _multi_frame_source(ds: Dataset) -> Dataset:
    """The header of an enhanced image as highdicom's multi-frame path reads it: pixel measures and plane
    orientation in the Shared Functional Group (taken from the first frame where they are per frame), a
    plane position in every Per-Frame Functional Group."""
    if not ds.get("SharedFunctionalGroupsSequence"):
        ds.SharedFunctionalGroupsSequence = [Dataset()]
    shared = ds.SharedFunctionalGroupsSequence[0]
    measures = shared.get("PixelMeasuresSequence")
    if not measures or not _present(measures[0].get("PixelSpacing")):
        item = Dataset()
        for keyword in ("PixelSpacing", "SliceThickness", "SpacingBetweenSlices"):
            value = _frame_value(ds, 0, keyword)
            if value is not None:
                setattr(item, keyword, value)
        shared.PixelMeasuresSequence = [item]
    orientation = shared.get("PlaneOrientationSequence")
    if not orientation or not _present(orientation[0].get("ImageOrientationPatient")):
        item = Dataset()
        item.ImageOrientationPatient = _frame_value(ds, 0, "ImageOrientationPatient")
        shared.PlaneOrientationSequence = [item]
    for number, group in enumerate(ds.PerFrameFunctionalGroupsSequence):
        position = group.get("PlanePositionSequence")
        if not position or not _present(position[0].get("ImagePositionPatient")):
            item = Dataset()
            item.ImagePositionPatient = _frame_value(ds, number, "ImagePositionPatient")
            group.PlanePositionSequence = [item]
    return ds


def _content_label(ds: Dataset) -> str:
    modality = str(ds.get("Modality") or "").strip().upper()
    return f"{modality}_SEG" if re.fullmatch(r"[A-Z0-9_ ]{1,12}", modality) else "SEG"


def write_dicom_seg(
    mask: np.ndarray,
    source_files: Sequence[str | os.PathLike],
    output_path: str | os.PathLike,
    *,
    affine: np.ndarray | None = None,
    segment_label: str = "FLAIR abnormality",
    algorithm_name: str = "lggseg",
    algorithm_version: str = __version__,
    series_description: str = "lggseg FLAIR abnormality",
    series_number: int = _SERIES_NUMBER,
    software_version: str = __version__,
) -> Path:
    """Write ``mask`` as a BINARY DICOM SEG on the frames of ``source_files`` (atomically).

    With ``affine``, the mask is read at every source frame's pixel centres (nearest neighbour, 0 outside
    its grid), so any file order, gantry tilt, orientation or multi-frame layout works. Without it, the old
    contract: ``mask[k]`` is the ``k``-th source frame.

    Args:
        mask: binary array. With ``affine``: ``mask[i, j, k]`` at voxel ``(i, j, k)`` of the grid ``affine``
            describes (a leading channel of size 1 is dropped). Without: ``(frames, rows, columns)``, frame
            ``k`` lying on ``source_files[k]`` (the order of SimpleITK's ``ImageSeriesReader`` and
            ``GetArrayFromImage``), or on frame ``k`` of a single multi-frame file.
        source_files: the series' DICOM files: single-frame images of one series in any order (with
            ``affine``), or one multi-frame (enhanced) image. They are only read.
        output_path: the ``.dcm`` file to write; its folder is created when missing.
        affine: the mask's 4x4 voxel-to-world matrix in RAS mm (nibabel / MONAI convention), or ``None``.
        segment_label: the segment's label (shown by viewers).
        algorithm_name: the algorithm named in the segment's Algorithm Identification.
        algorithm_version: its version: the trained model's (:func:`pipeline.model_files.model_version`)
            where known, else the package's.
        series_description: the SEG series' description.
        series_number: the SEG series' number.
        software_version: the SEG's Software Versions: the package's (the code that wrote it).

    Returns:
        the path written.

    Raises:
        DicomSegSkipped: the source files are no series a SEG can describe (unreadable, not an image, of
            several series, no Frame of Reference UID, no or odd image position / orientation / pixel
            spacing, frames of several orientations or at one position) or highdicom refuses them; one line
            naming the file and the attribute. Nothing is written.
        ValueError: a mask that is not binary; without ``affine``, a mask whose shape is not the series'
            ``(frames, rows, columns)``; with it, a mask that is not 3D or an affine that is not an
            invertible 4x4 matrix (one line).
    """
    files = [os.fspath(f) for f in source_files]
    datasets = _read_sources(files)
    frames = _source_frames(files, datasets)
    rows, columns = int(datasets[0].Rows), int(datasets[0].Columns)
    if affine is None:
        pixels = _frames_in_order(mask, (len(frames), rows, columns))
    else:
        pixels = _sampled_frames(mask, affine, frames, rows, columns)
    for ds in datasets:
        _mend_header(ds)
    if len(frames) == len(datasets):
        sources = _single_frame_sources(datasets, frames)
    else:
        sources = [_multi_frame_source(datasets[0])]
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=segment_label,
        segmented_property_category=SEGMENT_CATEGORY,
        segmented_property_type=SEGMENT_TYPE,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=algorithm_name, family=_ALGORITHM_FAMILY, version=algorithm_version
        ),
        anatomic_regions=[SEGMENT_ANATOMIC_REGION],
    )
    try:
        with _numpy_float_alias():
            seg = hd.seg.Segmentation(
                source_images=sources,
                pixel_array=pixels,
                segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                segment_descriptions=[segment],
                series_instance_uid=generate_uid(),
                series_number=series_number,
                sop_instance_uid=generate_uid(),
                instance_number=1,
                manufacturer=algorithm_name,
                manufacturer_model_name=algorithm_name,
                software_versions=software_version,
                device_serial_number="0",
                series_description=series_description,
                content_label=_content_label(sources[0]),
                omit_empty_frames=True,
            )
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as err:
        raise DicomSegSkipped(
            f"{files[0]}: highdicom cannot derive a DICOM SEG from this series "
            f"({type(err).__name__}: {_one_line(err)})"
        ) from err
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(output_path) as tmp:
        seg.save_as(tmp)
    return output_path


def try_write_dicom_seg(
    mask: np.ndarray,
    source_files: Sequence[str | os.PathLike],
    output_path: str | os.PathLike,
    **kwargs: object,
) -> tuple[Path | None, str | None]:
    """:func:`write_dicom_seg`, with the reason instead of the exception when no SEG can be made.

    Args:
        mask: as for :func:`write_dicom_seg`.
        source_files: as for :func:`write_dicom_seg`.
        output_path: as for :func:`write_dicom_seg`.
        kwargs: its keyword arguments (``affine``, ``segment_label``, ...).

    Returns:
        ``(path written, None)``, or ``(None, one-line reason)`` when :class:`DicomSegSkipped` was raised.

    Raises:
        ValueError: a mask or affine :func:`write_dicom_seg` refuses (a caller's error, not the data's).
    """
    try:
        return write_dicom_seg(mask, source_files, output_path, **kwargs), None  # type: ignore[arg-type]
    except DicomSegSkipped as skipped:
        return None, str(skipped)
