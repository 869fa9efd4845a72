"""Plain functions and constants the tests share (their fixtures are in the ``conftest.py`` files): import
them with ``from helpers import ...`` (``tests/`` is on ``sys.path``: pyproject's ``pythonpath``).

- paths: :data:`REPO_ROOT`, :data:`APP_DIR`, the shared data (:data:`KAGGLE_ROOT`, :data:`EXTERNAL_ROOT`);
  :func:`in_ci`, :func:`require_shared`, :func:`require_real_data`, :func:`require_monailabel` and
  :func:`app_on_path`;
- data: :func:`prepare_synthetic` (the small synthetic data set, prepared), :func:`tiny_config` and
  :func:`save_untrained_model` (model files), :func:`write_dicom_series` (an image as an MR DICOM series),
  :func:`write_flair_series` and :func:`blob_mask` (a synthetic FLAIR series and a mask on it,
  :func:`oblique_rotation`);
- checks: :func:`file_digest` and :func:`tree_digests` (what a folder holds, byte for byte), :func:`dice`,
  :func:`png_size`, :func:`run_lggseg` (``lggseg`` in-process, its errors) and :func:`prepare_args`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
"""The repository's root (``tests/helpers.py`` is one folder below it)."""
APP_DIR = REPO_ROOT / "apps" / "lggseg"
"""The MONAI Label app (its ``lib`` package imports with this folder on ``sys.path``)."""
KAGGLE_ROOT = REPO_ROOT.parent / "shared" / "data" / "lgg" / "kaggle_3m"
EXTERNAL_ROOT = REPO_ROOT.parent / "shared" / "data" / "external"


# ------------------------------------------------------------------------------------------------ the machine
def in_ci() -> bool:
    """``CI=true`` (or 1, yes): what a test needs must be there, it fails instead of skipping."""
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_shared(folder: Path, what: str) -> Path:
    """``folder`` when it holds data; otherwise skip the test, or fail it when ``CI=true``."""
    if folder.is_dir() and any(folder.iterdir()):
        return folder
    message = f"{what} not found at {folder}"
    if in_ci():
        pytest.fail(message + " (CI=true: the shared data is required)")
    pytest.skip(message)


def require_real_data() -> Path:
    """:data:`KAGGLE_ROOT` (the ``kaggle_root`` fixture), or skip; fail when ``CI=true``."""
    return require_shared(KAGGLE_ROOT, "real LGG data")


def require_monailabel() -> None:
    """Skip the test without MONAI Label (``scripts/install_monailabel.sh``); fail it when ``CI=true``."""
    try:
        import monailabel.client  # noqa: F401
        import psutil  # noqa: F401
    except ImportError as error:
        message = f"MONAI Label is not installed ({error}); run bash scripts/install_monailabel.sh"
        if in_ci():
            pytest.fail(message + " (CI=true: it is required)")
        pytest.skip(message)


@contextlib.contextmanager
def app_on_path() -> Iterator[None]:
    """:data:`APP_DIR` on ``sys.path`` for the block: the app's ``lib`` package (and ``main``) import."""
    sys.path.insert(0, str(APP_DIR))
    try:
        yield
    finally:
        sys.path.remove(str(APP_DIR))


# --------------------------------------------------------------------------------------------------- the data
def prepare_synthetic(root: Path, seed: int = 0) -> Path:
    """Six synthetic patients (64x64, 10-12 slices) written under ``root`` and prepared into NIfTI volumes and
    3 folds; returns the prepared folder."""
    from pipeline.ingestion.prepare import prepare_dataset
    from pipeline.ingestion.synthetic import write_synthetic_kaggle

    write_synthetic_kaggle(root / "kaggle_3m", num_patients=6, seed=seed, size=64, slices=(10, 12))
    prepare_dataset(root / "kaggle_3m", root / "prepared", num_folds=3, seed=0, workers=1)
    return root / "prepared"


TINY_WIDTHS = [4, 8, 12, 16, 24]  # UNeXt's default is 16, 32, 128, 160, 256
TINY = {"arch": "unext", "spatial_dims": 2, "context": 0, "num_classes": 1, "deep_supervision": False}
TINY |= {"members": 1, "network_kwargs": {"widths": TINY_WIDTHS}, "threshold": 0.4}


def tiny_config(**changes: Any) -> dict:
    """The saved configuration (every option, JSON values, as training writes it) of a UNeXt with the small
    :data:`TINY_WIDTHS`, with ``changes``."""
    from pipeline.config import RunConfig

    cfg = RunConfig.from_dict({**TINY, "progress": False, **changes})
    return json.loads(json.dumps(asdict(cfg), default=list))


def save_untrained_model(path: Path, arch: str = "unext", fold: int = 0, seed: int = 0) -> Path:
    """An untrained 2D network ``arch`` (3 channels in, 1 out) of fold ``fold`` saved with a minimal
    configuration as ``path`` (its folder made)."""
    import torch

    from pipeline.networks import build_network

    torch.manual_seed(seed)
    net = build_network(arch, 2, 3, 1)
    config = {"arch": arch, "spatial_dims": 2, "context": 0, "num_classes": 1, "fold": fold}
    config |= {"deep_supervision": False, "network_kwargs": {}, "input_size": [32, 32]}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": net.state_dict(), "config": config}, path)
    return path


def write_dicom_series(image: Any, folder: Path, description: str) -> None:
    """The SimpleITK ``image`` as an MR DICOM series, one file per slice (the way ENVIRONMENT.md describes),
    with the series description ``description``."""
    import SimpleITK as sitk

    folder.mkdir(parents=True)
    image = sitk.Cast(image, sitk.sitkInt16)
    series_uid = "1.2.826.0.1.3680043.2.1125." + str(abs(hash((str(folder), description))) % 10**12)
    direction = image.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        piece = image[:, :, k]
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {
            "0008|0060": "MR",
            "0008|103e": description,
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": series_uid,
            "0020|0052": "1.2.826.0.1.3680043.2.1125.2",
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in position),
            "0020|0037": "\\".join(f"{v:.6f}" for v in (*direction[0::3], *direction[1::3])),
            "0028|0030": "\\".join(f"{v:.6f}" for v in image.GetSpacing()[:2]),
            "0008|0018": f"{series_uid}.{k + 1}",
            "0008|0016": MR_IMAGE_STORAGE,
        }
        for tag, value in tags.items():
            piece.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(piece)


MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
SERIES_SHAPE = (9, 14, 12)  # the synthetic FLAIR series: slices, rows, columns
SERIES_SPACING = (0.5, 0.6, 2.0)  # columns (x), rows (y), slices (z) in mm, SimpleITK's order


def oblique_rotation(degrees: float) -> np.ndarray:
    """Direction cosines: a rotation about x then about z (an oblique plane)."""
    a, b = np.deg2rad(degrees), np.deg2rad(degrees / 2)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    return rz @ rx


def write_flair_series(
    folder: Path, oblique: bool = False, shape: tuple[int, int, int] = SERIES_SHAPE
) -> tuple[list[str], Any, dict[str, str]]:
    """A synthetic MR FLAIR series, one file per slice, with file names that do not sort in slice order.

    Returns:
        the files in ``GetGDCMSeriesFileNames`` order, the series read back with ``ImageSeriesReader``, and
        its study / series / frame-of-reference UIDs.
    """
    import SimpleITK as sitk
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True)
    direction = oblique_rotation(25.0) if oblique else np.eye(3)
    rng = np.random.default_rng(0)
    volume = sitk.GetImageFromArray(rng.integers(0, 800, shape).astype(np.int16))
    volume.SetSpacing(SERIES_SPACING)
    volume.SetDirection(direction.flatten().tolist())
    volume.SetOrigin((-30.0, 12.5, 40.0))
    uids = {"study": generate_uid(), "series": generate_uid(), "frame": generate_uid()}
    orientation = np.concatenate([direction[:, 0], direction[:, 1]])
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(shape[0]):
        plane = volume[:, :, k]
        tags = {
            "0008|0060": "MR",
            "0008|0016": MR_IMAGE_STORAGE,
            "0008|0018": generate_uid(),
            "0008|103e": "AX T2 FLAIR",
            "0020|000d": uids["study"],
            "0020|000e": uids["series"],
            "0020|0052": uids["frame"],
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{p:.6f}" for p in volume.TransformIndexToPhysicalPoint((0, 0, k))),
            "0020|0037": "\\".join(f"{c:.6f}" for c in orientation),
            # DICOM: the row spacing, then the column spacing
            "0028|0030": f"{SERIES_SPACING[1]}\\{SERIES_SPACING[0]}",
            "0018|0050": str(SERIES_SPACING[2]),
        }
        for tag, value in tags.items():
            plane.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"IM{(7 * k) % shape[0]:04d}.dcm"))  # name order != slice order
        writer.Execute(plane)
    files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    return files, reader.Execute(), uids


def blob_mask() -> np.ndarray:
    """A binary mask on the grid of :func:`write_flair_series`: a block with an irregular part and a hole."""
    mask = np.zeros(SERIES_SHAPE, dtype=np.uint8)
    mask[2:6, 4:10, 3:8] = 1
    mask[3, 9:12, 7:11] = 1  # an irregular part
    mask[4, 5, 4] = 0  # and a hole
    return mask


# ------------------------------------------------------------------------------------------------- the checks
def file_digest(path: Path) -> str:
    """The sha256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_digests(folder: Path, links: bool = False) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``folder``, hidden ones too (linked folders are not
    entered); with ``links``, a symbolic link is ``"link:<its target>"`` (a link to a folder too) instead of
    its target's bytes."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if links and path.is_symlink():
            found[str(path.relative_to(folder))] = "link:" + os.readlink(path)
        elif path.is_file():
            found[str(path.relative_to(folder))] = file_digest(path)
    return found


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """The Dice of two masks (non-zero voxels), 0 for two empty ones."""
    a, b = a > 0, b > 0
    return 2.0 * float((a & b).sum()) / max(1.0, float(a.sum() + b.sum()))


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """The ``(width, height)`` in pixels of a PNG file (which must be one)."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR", path
    return struct.unpack(">II", data[16:24])


def run_lggseg(capsys: pytest.CaptureFixture, *args: object) -> tuple[int, list[str], str]:
    """Run ``lggseg ARGS`` in-process (each argument as a string); no traceback may reach stderr.

    Returns:
        the exit code, the ``lggseg: error:`` lines and all of stderr.
    """
    from pipeline.cli import main

    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, [line for line in err.splitlines() if line.startswith("lggseg: error: ")], err


def prepare_args(kaggle: Path, output: Path, *extra: object) -> list[object]:
    """``lggseg prepare`` of a Kaggle folder into two folds with one worker, and ``extra`` options."""
    return ["prepare", "--input", kaggle, "--output", output, "--folds", "2", "--workers", "1", *extra]
