"""A user's own scans: read one sequence, with its geometry as the tools of the field read it.

:func:`read_scan_volume` reads a scan reference (:mod:`pipeline.ingestion.dicom_files`) into a
:class:`ScanVolume`: a 3D SimpleITK image (geometry in ITK's LPS) and what was read with it, carried
forward to the writer (the NIfTI header, the DICOM files in slice order, the notes said about the scan).

- **NIfTI** files are read with nibabel, and their geometry is nibabel's (``img.affine``: the sform when
  its code is set, else the qform, else nibabel's fallback for a header that has neither), which is how
  nibabel, FSL and MONAI's NibabelReader place the voxels; ITK guesses differently for a header without
  codes. The header itself travels with the scan (:attr:`ScanVolume.nifti_header`), so the mask is written
  with the FLAIR's exact header (every qform / sform combination) and overlays the FLAIR in any viewer. A
  header with neither code, or with a sheared affine (non-orthogonal axes; the nearest rotation is used to
  resample), is said in the log and in :attr:`ScanVolume.notes`. Data with fewer voxels than the header
  announces, and NaN or Inf voxels, are refused in one line.
- **DICOM** series are read with SimpleITK (which matched dcm2niix on real vendor series). Every slice
  must carry ImagePositionPatient and ImageOrientationPatient, all slices one orientation: without them a
  series cannot be placed in space, and is refused rather than given a made-up spacing. Slices are sorted
  along the slice normal and must be evenly spaced (a missing slice, two slices at one position: refused).
  A **gantry tilt** (slice positions shifted in-plane slice after slice) is resampled onto a regular grid,
  each slice shifted back in-plane (as dcm2niix does), and said. An unreadable file is skipped when the
  other slices are still evenly spaced; otherwise the series is refused naming that file. A single file is
  read as a whole volume (an enhanced multi-frame image).
- Other files SimpleITK reads (NRRD, MHA) are read with it.
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pipeline.ingestion.dicom_files import (
    DicomSeries,
    error_reason,
    is_dicom_file,
    is_nifti,
    parse_reference,
    read_dicom_headers,
)
from pipeline.ingestion.errors import LGGDataError
from pipeline.ingestion.slice_geometry import (
    SPACING_TOLERANCE,
    TILT_TOLERANCE_MM,
    in_plane_offsets,
    is_tilted,
    positions_along_normal,
    slice_normal,
    uneven_spacing,
)
from pipeline.ingestion.volume_checks import check_finite, check_nifti_header, unreadable_data

logger = logging.getLogger(__name__)

__all__ = [
    "SOURCE_FILES_KEY",
    "SPACING_TOLERANCE",
    "TILT_TOLERANCE_MM",
    "ScanVolume",
    "check_finite",
    "ras_affine",
    "read_scan",
    "read_scan_volume",
    "voxels_xyz",
]

SOURCE_FILES_KEY = "lggseg:source_files"  # SimpleITK metadata of a series read here: its files, slice order
# SPACING_TOLERANCE and TILT_TOLERANCE_MM: pipeline.ingestion.slice_geometry (the SEG writer's rule too)
ORTHOGONAL_TOLERANCE = 1e-4
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class ScanVolume:
    """One sequence as read, with what the writer and the quality report need later.

    Args:
        image: the 3D image (ITK geometry, LPS).
        reference: the scan reference it was read from.
        nifti_header: the NIfTI header's 348 bytes (NIfTI inputs only).
        source_files: the DICOM files in slice order (DICOM series only).
        notes: what was said about the scan (no qform/sform, sheared affine, gantry tilt resampled).
        nifti_affine: the NIfTI file's affine as nibabel reads it (may be sheared; NIfTI inputs only).
    """

    image: sitk.Image
    reference: str
    nifti_header: bytes | None = None
    source_files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    nifti_affine: np.ndarray | None = None

    @property
    def affine(self) -> np.ndarray:
        """The voxel-to-world affine in RAS (nibabel's and MONAI's convention): a NIfTI file's own (sheared
        or not), else the image's."""
        return np.array(self.nifti_affine) if self.nifti_affine is not None else ras_affine(self.image)


def ras_affine(image: sitk.Image) -> np.ndarray:
    """The voxel-to-world affine of a SimpleITK image in RAS (MONAI's and nibabel's convention).

    ITK's direction, spacing and origin are in LPS; voxel ``(i, j, k)`` is ``array[k, j, i]`` of
    ``sitk.GetArrayFromImage``.
    """
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction * np.asarray(image.GetSpacing(), dtype=np.float64)
    affine[:3, 3] = image.GetOrigin()
    return _LPS @ affine


def voxels_xyz(image: sitk.Image) -> np.ndarray:
    """The image's voxels as a float32 ``(i, j, k)`` array."""
    return np.ascontiguousarray(sitk.GetArrayFromImage(image).transpose(2, 1, 0), dtype=np.float32)


def image_from_ras(array: np.ndarray, affine: np.ndarray) -> tuple[sitk.Image, bool]:
    """A SimpleITK image of an ``(i, j, k)`` array on the grid of a RAS ``affine``.

    Returns:
        the image and whether the affine was sheared (then its nearest rotation is used: ITK grids have
        orthogonal axes).
    """
    lps = _LPS @ np.asarray(affine, dtype=np.float64)
    matrix = lps[:3, :3]
    spacing = np.linalg.norm(matrix, axis=0)
    direction = matrix / spacing
    u, _, vt = np.linalg.svd(direction)
    rotation = u @ vt
    sheared = bool(np.max(np.abs(rotation - direction)) > ORTHOGONAL_TOLERANCE)
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(v) for v in rotation.ravel()])
    image.SetOrigin([float(v) for v in lps[:3, 3]])
    return image, sheared


def _as_volume(image: sitk.Image, where: str) -> sitk.Image:
    """``image`` as one 3D grey-level volume of at least 2 slices, or a one-line error."""
    if image.GetNumberOfComponentsPerPixel() > 1:
        raise LGGDataError(
            f"{where}: {image.GetNumberOfComponentsPerPixel()} components per voxel (colour or vector "
            "image); give one grey-level volume per sequence"
        )
    size = image.GetSize()
    while image.GetDimension() > 3 and size[-1] == 1:
        image = image[(slice(None),) * (image.GetDimension() - 1) + (0,)]
        size = image.GetSize()
    if image.GetDimension() == 4:
        raise LGGDataError(f"{where}: a 4D image of {size[3]} volumes; give one 3D volume per sequence")
    if image.GetDimension() != 3:
        raise LGGDataError(f"{where}: a {image.GetDimension()}D image of size {size}; a scan must be 3D")
    if size[2] < 2:
        raise LGGDataError(f"{where}: has {size[2]} slice; a volume needs at least 2")
    return image


# ------------------------------------------------------------------------------------------------- NIfTI


def _check_stream(path: Path, expected: int) -> None:
    """Refuse a file with less data than its header announces (nibabel would read it partly)."""
    if path.name.lower().endswith(".gz"):
        total = 0
        try:
            with gzip.open(path, "rb") as stream:
                while chunk := stream.read(1 << 22):
                    total += len(chunk)
        except (EOFError, OSError, zlib.error) as err:
            raise unreadable_data(path, err) from None
    else:
        total = path.stat().st_size
    if total < expected:
        raise LGGDataError(f"{path}: truncated file ({total} bytes of data, the header needs {expected})")


def _read_nifti(path: Path) -> ScanVolume:
    loaded = check_nifti_header(path)
    header = loaded.header
    shape = tuple(int(s) for s in header.get_data_shape())
    dtype = header.get_data_dtype()
    _check_stream(path, int(header.get_data_offset()) + int(np.prod(shape)) * int(dtype.itemsize))
    if len(shape) < 3 or any(s != 1 for s in shape[4:]) or (len(shape) >= 4 and shape[3] != 1):
        if len(shape) >= 4 and shape[3] > 1:
            raise LGGDataError(f"{path}: a 4D image of {shape[3]} volumes; give one 3D volume per sequence")
        raise LGGDataError(f"{path}: a {len(shape)}D image of shape {shape}; a scan must be 3D")
    if shape[2] < 2:
        raise LGGDataError(f"{path}: has {shape[2]} slice; a volume needs at least 2")
    try:
        data = np.asanyarray(loaded.dataobj)
    except (EOFError, OSError, ValueError, zlib.error) as err:
        raise unreadable_data(path, err) from None
    if data.dtype.kind == "c" or (data.dtype.names is not None):
        raise LGGDataError(f"{path}: {data.dtype} voxels (complex or RGB); give one grey-level volume")
    data = np.reshape(data, shape[:3])
    check_finite(data, path)
    notes = []
    qform_code, sform_code = int(header["qform_code"]), int(header["sform_code"])
    if qform_code == 0 and sform_code == 0:
        notes.append(
            "no qform or sform (both codes 0): the orientation is unknown, taken as nibabel and FSL take it"
        )
    image, sheared = image_from_ras(data, loaded.affine)
    if sheared:
        notes.append("sheared affine (axes not orthogonal): resampled along the nearest rotation")
    for note in notes:
        logger.warning("%s: %s", path, note)
    return ScanVolume(
        image,
        str(path),
        nifti_header=bytes(header.binaryblock),
        notes=notes,
        nifti_affine=np.asarray(loaded.affine, dtype=np.float64),
    )


# ------------------------------------------------------------------------------------------------- DICOM


def _geometry(files: list) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """``(row direction, column direction, [position])`` of the slices, or a one-line error.

    Raises:
        LGGDataError: a slice without position or orientation, or slices of several orientations.
    """
    orientations, positions = [], []
    for path, header in files:
        try:
            orientation = np.asarray(header.ImageOrientationPatient, dtype=float)
            position = np.asarray(header.ImagePositionPatient, dtype=float)
        except (AttributeError, TypeError, ValueError):
            orientation = position = None
        if orientation is None or orientation.shape != (6,) or position is None or position.shape != (3,):
            raise LGGDataError(
                f"{path}: no ImagePositionPatient / ImageOrientationPatient; without them the slices cannot "
                "be placed in space (convert the series with its scanner geometry)"
            )
        orientations.append(orientation)
        positions.append(position)
    first = orientations[0]
    for (path, _), orientation in zip(files, orientations, strict=True):
        if np.max(np.abs(orientation - first)) > 1e-3:
            raise LGGDataError(
                f"{path}: ImageOrientationPatient {orientation.round(3).tolist()} differs from the first "
                f"slice's {first.round(3).tolist()}; one series must be one stack of parallel slices"
            )
    return first[:3], first[3:], positions


def _untilt(
    image: sitk.Image, offsets: np.ndarray, normal: np.ndarray, origin: np.ndarray, gap: float
) -> sitk.Image:
    """A gantry-tilted stack resampled onto a regular grid: each slice shifted back in-plane by its offset.

    Slice ``k`` of the result lies at ``first position + k * gap * normal``, with the series' row and column
    directions; outside the acquired field of view is the image's minimum.
    """
    from scipy import ndimage

    array = sitk.GetArrayFromImage(image).astype(np.float32)  # (k, rows, columns)
    spacing = image.GetSpacing()  # (column spacing, row spacing, slice)
    fill = float(array.min())
    out = np.empty_like(array)
    for k in range(array.shape[0]):
        shift = (offsets[k, 1] / spacing[1], offsets[k, 0] / spacing[0])  # (rows, columns) in pixels
        out[k] = ndimage.shift(array[k], shift, order=1, mode="constant", cval=fill)
    result = sitk.GetImageFromArray(out)
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3).copy()
    direction[:, 2] = normal
    result.SetDirection([float(v) for v in direction.ravel()])
    result.SetSpacing((spacing[0], spacing[1], float(gap)))
    result.SetOrigin([float(v) for v in origin])
    return result


def _read_files(series: DicomSeries, files: list) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p, _ in files])
    try:
        return reader.Execute()
    except RuntimeError as err:
        raise LGGDataError(f"{series.reference}: not a readable DICOM series ({error_reason(err)})") from None


def _read_series(series: DicomSeries, unreadable: list[tuple[Path, str]]) -> ScanVolume:
    where = series.reference
    files = list(series.files)
    if len(files) == 1 and not unreadable:  # one file: an enhanced multi-frame volume, or a single slice
        path = files[0][0]
        try:
            image = _as_volume(sitk.ReadImage(str(path)), where)
        except RuntimeError as err:
            raise LGGDataError(f"{path}: unreadable DICOM file ({error_reason(err)})") from None
        return ScanVolume(_frames_in_place(image, path), where, source_files=[str(path)])
    row, col, positions = _geometry(files)
    normal = slice_normal(row, col)
    along = positions_along_normal(positions, row, col)
    order = np.argsort(along, kind="stable")
    files = [files[i] for i in order]
    positions = [positions[i] for i in order]
    along = along[order]
    bad: list[tuple[Path, str]] = list(unreadable)
    image = None
    try:
        image = _read_files(series, files)
    except LGGDataError:  # a file whose pixels cannot be read: skipped if the others leave no gap
        keep = []
        for index, (path, _) in enumerate(files):
            try:
                sitk.ReadImage(str(path))
                keep.append(index)
            except RuntimeError as err:
                bad.append((path, error_reason(err)))
        files = [files[i] for i in keep]
        positions = [positions[i] for i in keep]
        along = along[keep]
    problem = uneven_spacing(along) if len(files) >= 2 else f"{len(files)} slice left"
    if bad:
        (first, reason), others = bad[0], len(bad) - 1
        if problem:
            more = f" and {others} other unreadable file(s)" if others else ""
            raise LGGDataError(
                f"{first}: unreadable DICOM file ({reason}){more}; without it the series {series.label!r} "
                f"has a gap: {problem}"
            )
        names = ", ".join(f"{p.name} ({r})" for p, r in bad)
        logger.warning(
            "%s: skipped unreadable DICOM file(s) %s; the other slices are evenly spaced", where, names
        )
    elif problem:
        raise LGGDataError(f"{where}: {problem}")
    if image is None:
        image = _read_files(series, files)
    image = _as_volume(image, where)
    notes: list[str] = []
    offsets = in_plane_offsets(positions, row, col)
    gap = float(np.median(np.diff(along)))
    steps = np.arange(len(files))[:, None]
    if is_tilted(offsets):
        slope = offsets[-1] / max(len(files) - 1, 1)
        if np.max(np.abs(offsets - steps * slope)) > 0.05 * min(image.GetSpacing()[:2]):
            raise LGGDataError(
                f"{where}: slice positions wander in-plane irregularly (not a gantry tilt); the slices do "
                "not form one volume"
            )
        angle = math.degrees(math.atan2(float(np.linalg.norm(slope)), gap))
        image = _untilt(image, offsets, normal, positions[0], gap)  # DICOM patient space is LPS, as ITK's
        notes.append(f"gantry tilt of {angle:.1f} degrees: resampled onto a regular grid (as dcm2niix does)")
        logger.warning("%s: %s", where, notes[-1])
    return ScanVolume(image, where, source_files=[str(p) for p, _ in files], notes=notes)


def _frame_geometry(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float]] | None:
    """``(row, column, positions (n, 3), (row spacing, column spacing))`` of an enhanced multi-frame file's
    frames, from its per-frame (else shared) functional groups; ``None`` for a file without them."""
    import pydicom

    ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    frames = ds.get("PerFrameFunctionalGroupsSequence")
    if not frames:
        return None
    shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]

    def item(group, sequence: str, keyword: str):
        for source in (group, shared):
            if source is not None and sequence in source and keyword in source[sequence][0]:
                return source[sequence][0][keyword].value
        return None

    positions, orientation, spacing = [], None, None
    for index, group in enumerate(frames):
        position = item(group, "PlanePositionSequence", "ImagePositionPatient")
        orientation = orientation or item(group, "PlaneOrientationSequence", "ImageOrientationPatient")
        spacing = spacing or item(group, "PixelMeasuresSequence", "PixelSpacing")
        if position is None:
            raise LGGDataError(
                f"{path}: frame {index + 1} has no ImagePositionPatient; the frames cannot be placed in space"
            )
        positions.append(np.asarray(position, dtype=float))
    if orientation is None or spacing is None:
        raise LGGDataError(f"{path}: no ImageOrientationPatient or PixelSpacing for its frames")
    orientation = np.asarray(orientation, dtype=float)
    return orientation[:3], orientation[3:], np.asarray(positions), (float(spacing[0]), float(spacing[1]))


def _frames_in_place(image: sitk.Image, path: Path) -> sitk.Image:
    """An enhanced multi-frame file's volume with each frame where its own position puts it.

    GDCM stacks the frames in file order and takes the geometry of the first ones: frames stored out of
    spatial order came out shuffled with a 1 mm spacing, without a word. The frames are sorted along the
    slice normal here and the geometry is set from their positions; unevenly spaced frames, several frames
    at one position (echoes, time points) or a tilted stack are refused in one line.
    """
    geometry = _frame_geometry(path)
    if geometry is None or image.GetSize()[2] != len(geometry[2]):
        return image
    row, column, positions, (row_spacing, column_spacing) = geometry
    along = positions_along_normal(positions, row, column)
    order = np.argsort(along, kind="stable")
    problem = uneven_spacing(along[order])
    if problem:
        raise LGGDataError(f"{path}: {problem}")
    if is_tilted(in_plane_offsets(positions[order], row, column)):
        raise LGGDataError(f"{path}: the frames' positions drift in-plane (a tilted stack); not supported")
    array = sitk.GetArrayFromImage(image)[order]
    out = sitk.GetImageFromArray(array)
    out.SetSpacing((column_spacing, row_spacing, float(np.median(np.diff(along[order])))))
    out.SetDirection([float(v) for v in np.stack([row, column, slice_normal(row, column)], axis=1).ravel()])
    out.SetOrigin([float(v) for v in positions[order][0]])
    return out


def _read_dicom(folder: Path, uid: str | None) -> ScanVolume:
    if not folder.is_dir():
        raise LGGDataError(f"{folder}: not found")
    series, unreadable = read_dicom_headers(folder)
    if uid is not None:
        chosen = [s for s in series if s.uid == uid]
        if not chosen:
            raise LGGDataError(f"{folder}: no DICOM image series with SeriesInstanceUID {uid}")
    elif len(series) > 1:
        names = ", ".join(f"{s.label!r}" for s in series)
        raise LGGDataError(
            f"{folder}: holds {len(series)} DICOM series ({names}); "
            f"name one as dicom:{folder}#<SeriesInstanceUID>"
        )
    elif not series:
        detail = f" ({unreadable[0][0].name}: {unreadable[0][1]})" if unreadable else ""
        raise LGGDataError(f"{folder}: no readable DICOM image series{detail}")
    else:
        chosen = series
    return _read_series(chosen[0], unreadable)


def read_scan_volume(reference: str | os.PathLike) -> ScanVolume:
    """Read one sequence as a :class:`ScanVolume` (module docstring).

    Args:
        reference: a NIfTI file, a DICOM series folder, ``dicom:<folder>#<uid>``, or another file SimpleITK
            reads.

    Returns:
        the scan: a 3D image in its own type and geometry, with its NIfTI header or DICOM files.

    Raises:
        LGGDataError: one line naming the file or folder: not found, unreadable or truncated, not 3D,
            fewer than 2 slices, no slice positions, slices unevenly spaced or missing, an unreadable DICOM
            file that leaves a gap, NaN or Inf voxels.
    """
    path, uid = parse_reference(reference)
    if uid is not None or path.is_dir():
        scan = _read_dicom(path, uid)
    elif not path.exists():
        raise LGGDataError(f"{path}: not found")
    elif is_nifti(path):
        scan = _read_nifti(path)
    elif is_dicom_file(path):  # one DICOM file: an enhanced multi-frame volume
        try:
            image = _as_volume(sitk.ReadImage(str(path)), str(path))
        except RuntimeError as err:
            raise LGGDataError(f"{path}: unreadable DICOM file ({error_reason(err)})") from None
        scan = ScanVolume(_frames_in_place(image, path), str(path), source_files=[str(path)])
    else:
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as err:
            raise LGGDataError(f"{path}: not a readable image file ({error_reason(err)})") from None
        scan = ScanVolume(_as_volume(image, str(path)), str(path))
    scan.reference = os.fspath(reference)
    check_finite(scan.image, scan.reference)
    if scan.source_files:
        scan.image.SetMetaData(SOURCE_FILES_KEY, "\n".join(scan.source_files))
    return scan


def read_scan(reference: str | os.PathLike) -> sitk.Image:
    """Read one sequence as a 3D SimpleITK image in its own type and geometry (see :func:`read_scan_volume`).

    A DICOM series' files, in slice order, are in the image's metadata under :data:`SOURCE_FILES_KEY`.
    """
    return read_scan_volume(reference).image
