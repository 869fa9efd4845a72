"""The built-in synthetic data set: LGG-like patients in the Kaggle ``kaggle_3m`` layout.

Each patient is a brain-like ellipsoid seen in three channels (pre-contrast, FLAIR, post-contrast) with a
FLAIR-hyperintense tumour blob and its mask, written as per-slice TIFFs exactly as the Kaggle download lays
them out, plus a ``data.csv``. Everything is deterministic from the seed, so the README's main command and
the tests need no download.

Example::

    from pipeline.ingestion.synthetic import write_synthetic_kaggle
    root = write_synthetic_kaggle("runs/synthetic/kaggle_3m", num_patients=10, seed=0, size=128)
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import tifffile

INSTITUTIONS = ("CS", "DU", "EZ", "FG", "HT")
_CLINICAL_COLUMNS = (
    "RNASeqCluster",
    "MethylationCluster",
    "miRNACluster",
    "CNCluster",
    "RPPACluster",
    "OncosignCluster",
    "COCCluster",
    "histological_type",
    "neoplasm_histologic_grade",
    "tumor_tissue_site",
    "laterality",
    "tumor_location",
    "gender",
    "age_at_initial_pathologic",
    "race",
    "ethnicity",
    "death01",
)


def make_synthetic_patient(
    rng: np.random.Generator, size: int = 256, num_slices: int = 24
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic patient: a brain ellipsoid with a FLAIR-hyperintense tumour blob.

    Args:
        rng: the random generator (all randomness comes from it).
        size: slice height and width in pixels.
        num_slices: number of axial slices.

    Returns:
        ``(image, mask)``: uint8 arrays ``(D, H, W, 3)`` and ``(D, H, W)`` with mask values 0/255.
    """
    z, y, x = np.meshgrid(
        np.linspace(-1, 1, num_slices), np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij"
    )
    radii = rng.uniform([0.95, 0.7, 0.55], [1.15, 0.85, 0.7])  # z, y, x
    brain = (z / radii[0]) ** 2 + (y / radii[1]) ** 2 + (x / radii[2]) ** 2 <= 1.0
    centre = rng.uniform([-0.4, -0.35, -0.3], [0.4, 0.35, 0.3])
    tumour_radii = rng.uniform([0.2, 0.1, 0.1], [0.45, 0.3, 0.3])
    distance = sum(((c - m) / r) ** 2 for c, m, r in zip((z, y, x), centre, tumour_radii, strict=True))
    wobble = 0.15 * np.sin(5 * np.arctan2(y - centre[1], x - centre[2]) + rng.uniform(0, 2 * np.pi))
    tumour = (distance <= 1.0 + wobble) & brain

    texture = rng.normal(0.0, 1.0, size=brain.shape)
    base = np.where(brain, 1.0, 0.0)
    pre = base * (90 + 8 * texture)
    flair = base * (80 + 8 * texture) + tumour * 70
    post = base * (100 + 8 * texture) + tumour * 15
    image = np.stack([pre, flair, post], axis=-1)
    image = np.clip(image + rng.normal(0, 2, size=image.shape) * base[..., None], 0, 255).astype(np.uint8)
    mask = (tumour * 255).astype(np.uint8)
    return image, mask


def write_synthetic_kaggle(
    root: str | os.PathLike,
    num_patients: int = 10,
    seed: int = 0,
    size: int = 256,
    slices: tuple[int, int] = (20, 32),
) -> Path:
    """Write synthetic patients in the Kaggle layout (TIFF slices + ``data.csv``).

    Args:
        root: the folder to create (it plays the role of ``kaggle_3m``); must not exist or be empty.
        num_patients: number of patients, spread over the five LGG institutions.
        seed: random seed; the same seed gives byte-identical files.
        size: slice height and width.
        slices: inclusive range of the number of slices per patient.

    Returns:
        ``root``.

    Raises:
        FileExistsError: ``root`` exists and is not empty.
    """
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} already exists and is not empty")
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(num_patients):
        institution = INSTITUTIONS[index % len(INSTITUTIONS)]
        case = f"TCGA_{institution}_S{index:03d}"
        folder_name = f"{case}_{20000101 + index}"
        folder = root / folder_name
        folder.mkdir()
        image, mask = make_synthetic_patient(rng, size, int(rng.integers(slices[0], slices[1] + 1)))
        for k in range(image.shape[0]):
            tifffile.imwrite(folder / f"{folder_name}_{k + 1}.tif", image[k])
            tifffile.imwrite(folder / f"{folder_name}_{k + 1}_mask.tif", mask[k])
        rows.append({"Patient": case, **{c: str(int(rng.integers(1, 4))) for c in _CLINICAL_COLUMNS}})
        rows[-1]["age_at_initial_pathologic"] = str(int(rng.integers(20, 75)))
    with (root / "data.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["Patient", *_CLINICAL_COLUMNS])
        writer.writeheader()
        writer.writerows(rows)
    return root
