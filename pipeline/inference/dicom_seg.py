"""A predicted mask as a DICOM Segmentation (SEG) object that references the user's FLAIR series.

The SEG is written with highdicom 0.22 (the newest release that works with pydicom 2.4.4, which MONAI Label
needs): BINARY, one segment, derived from the source images (same patient, study and frame of reference; the
SEG's Referenced Series Sequence names the FLAIR series and every frame names the source instance it was
cut from), empty frames left out. The segment is coded as

- Segmented Property Category: SCT 49755003 "Morphologically Abnormal Structure" (DICOM CID 7150, called
  "Morphologically Altered Structure" in older editions);
- Segmented Property Type: SCT 108369006 "Neoplasm" (CID 7151);
- Anatomic Region: SCT 12738006 "Brain";
- algorithm family DCM 123110 "Artificial Intelligence" (CID 7162), segment algorithm type AUTOMATIC.

The mask is given on the grid of the series as SimpleITK reads it: files in
``ImageSeriesReader.GetGDCMSeriesFileNames`` order, array from ``GetArrayFromImage``, so ``mask[k]`` is the
pixel matrix (rows, columns) of ``source_files[k]``.

The slice geometry written is that of the source slices' Image Position (Patient): their Spacing Between
Slices tag is replaced by the distance between the positions (or left out when the slices are unevenly
spaced). Series written slice by slice with SimpleITK / GDCM carry ``SpacingBetweenSlices = 1`` whatever the
real distance, and a reader that believes it (pydicom-seg does) would stack the SEG's frames wrongly.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from pipeline import __version__
from pipeline.safety import atomic_path

__all__ = [
    "SEGMENT_ANATOMIC_REGION",
    "SEGMENT_CATEGORY",
    "SEGMENT_TYPE",
    "read_source_series",
    "write_dicom_seg",
]

SEGMENT_CATEGORY = codes.cid7150.MorphologicallyAbnormalStructure  # SCT 49755003
SEGMENT_TYPE = codes.cid7151.Neoplasm  # SCT 108369006
SEGMENT_ANATOMIC_REGION = codes.SCT.Brain  # SCT 12738006
_ALGORITHM_FAMILY = codes.cid7162.ArtificialIntelligence  # DCM 123110
_SERIES_NUMBER = 9901  # beside the scanner's series numbers, not among them
_SPACING_TOLERANCE = 1e-3  # relative: the slices count as evenly spaced within it

_NUMPY_ALIAS_LOCK = threading.Lock()


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


def read_source_series(source_files: Sequence[str | os.PathLike]) -> list[pydicom.Dataset]:
    """Read the header of each source file (no pixel data) and check they form one single-frame series.

    Args:
        source_files: the DICOM files of the series, in the mask's slice order.

    Returns:
        the datasets, in the given order.

    Raises:
        ValueError: no files, an unreadable file, multi-frame images, or files of different series, frames
            of reference or matrix sizes (one line, naming the file).
    """
    if len(source_files) == 0:
        raise ValueError("no source DICOM files given for the DICOM SEG")
    datasets = []
    for f in source_files:
        try:
            ds = pydicom.dcmread(os.fspath(f), stop_before_pixels=True)
        except Exception as err:  # pydicom raises several kinds; all mean the same to the user
            raise ValueError(f"{f}: not a readable DICOM file ({type(err).__name__}: {err})") from None
        missing = [a for a in ("SeriesInstanceUID", "SOPInstanceUID", "Rows", "Columns") if a not in ds]
        if missing:
            raise ValueError(f"{f}: not an image of a series (no {', '.join(missing)})")
        if int(ds.get("NumberOfFrames", 1) or 1) != 1:
            raise ValueError(
                f"{f}: multi-frame image ({ds.NumberOfFrames} frames); one file per slice expected"
            )
        datasets.append(ds)
    first = datasets[0]
    for f, ds in zip(source_files, datasets, strict=True):
        for attr in ("SeriesInstanceUID", "FrameOfReferenceUID", "Rows", "Columns"):
            if ds.get(attr) != first.get(attr):
                raise ValueError(
                    f"{f}: {attr} {ds.get(attr)} differs from {first.get(attr)} of {source_files[0]}; "
                    "give the files of one series"
                )
    return datasets


def _slice_spacing(datasets: Sequence[pydicom.Dataset]) -> float | None:
    """Distance between neighbouring slices along the slice normal, or ``None`` when there is one slice, or
    the slices are unevenly spaced or lack a position."""
    if len(datasets) < 2 or not all(
        "ImagePositionPatient" in d and "ImageOrientationPatient" in d for d in datasets
    ):
        return None
    orientation = np.asarray(datasets[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    along = np.sort(
        [float(np.dot(normal, np.asarray(d.ImagePositionPatient, dtype=float))) for d in datasets]
    )
    steps = np.diff(along)
    spacing = float(np.mean(steps))
    if spacing <= 0 or np.max(np.abs(steps - spacing)) > _SPACING_TOLERANCE * spacing:
        return None
    return spacing


def _with_true_slice_spacing(datasets: Sequence[pydicom.Dataset]) -> list[pydicom.Dataset]:
    """The headers with Spacing Between Slices set from the positions (removed when undefined) and the slice
    spacing as Slice Thickness where there was none (highdicom reads both to build the Pixel Measures)."""
    spacing = _slice_spacing(datasets)
    fixed = []
    for ds in datasets:
        ds = ds.copy()
        if spacing is None:
            if "SpacingBetweenSlices" in ds:
                del ds.SpacingBetweenSlices
        else:
            ds.SpacingBetweenSlices = f"{spacing:.6g}"
        if "SliceThickness" not in ds or ds.SliceThickness in (None, ""):
            # highdicom 0.22 needs one to compare the pixel measures: the slice spacing is the best guess
            ds.SliceThickness = f"{spacing:.6g}" if spacing else "1"
        fixed.append(ds)
    return fixed


def _binary_frames(mask: np.ndarray, expected: tuple[int, int, int]) -> np.ndarray:
    array = np.asarray(mask)
    if array.shape != expected:
        raise ValueError(
            f"mask shape {tuple(array.shape)} does not match the DICOM series "
            f"(slices, rows, columns) {expected}"
        )
    if array.dtype != bool:
        if not np.all(np.isin(array, (0, 1))):
            raise ValueError("mask must be binary (values 0 and 1 only) for a BINARY DICOM SEG")
    return array.astype(np.uint8)


def write_dicom_seg(
    mask: np.ndarray,
    source_files: Sequence[str | os.PathLike],
    output_path: str | os.PathLike,
    *,
    segment_label: str = "FLAIR abnormality",
    algorithm_name: str = "lggseg",
    algorithm_version: str = __version__,
    series_description: str = "lggseg FLAIR abnormality",
    series_number: int = _SERIES_NUMBER,
) -> Path:
    """Write ``mask`` as a BINARY DICOM SEG that references the series of ``source_files`` (atomically).

    Args:
        mask: binary array ``(slices, rows, columns)``: ``mask[k]`` lies on ``source_files[k]`` (the order of
            SimpleITK's ``ImageSeriesReader`` and ``GetArrayFromImage``).
        source_files: the series' DICOM files (single-frame images of one series), in the mask's order.
        output_path: the ``.dcm`` file to write; its folder is created when missing.
        segment_label: the segment's label (shown by viewers).
        algorithm_name: the algorithm named in the segment's Algorithm Identification.
        algorithm_version: its version (also the SEG's Software Versions).
        series_description: the SEG series' description.
        series_number: the SEG series' number.

    Returns:
        the path written.

    Raises:
        ValueError: a mask whose shape is not the series' ``(slices, rows, columns)``, a mask that is not
            binary, or source files that are not one readable series (one line).
    """
    datasets = read_source_series(source_files)
    frames = _binary_frames(mask, (len(datasets), int(datasets[0].Rows), int(datasets[0].Columns)))
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
    with _numpy_float_alias():
        seg = hd.seg.Segmentation(
            source_images=_with_true_slice_spacing(datasets),
            pixel_array=frames,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[segment],
            series_instance_uid=generate_uid(),
            series_number=series_number,
            sop_instance_uid=generate_uid(),
            instance_number=1,
            manufacturer=algorithm_name,
            manufacturer_model_name=algorithm_name,
            software_versions=algorithm_version,
            device_serial_number="0",
            series_description=series_description,
            omit_empty_frames=True,
        )
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(output_path) as tmp:
        seg.save_as(tmp)
    return output_path
