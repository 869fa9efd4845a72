"""Ingestion: data in and out of the pipeline.

- :mod:`~pipeline.ingestion.kaggle`: raw Kaggle patient folders, read and checked (TIFF slices -> volumes).
- :mod:`~pipeline.ingestion.nifti`: the prepared NIfTI files (writing volumes, reading labels back).
- :mod:`~pipeline.ingestion.datalist`: the decathlon datalist, patient-level folds, the patients table.
- :mod:`~pipeline.ingestion.prepare`: ``lggseg prepare`` (Kaggle folder -> prepared data set, written safely).
- :mod:`~pipeline.ingestion.export`: ``lggseg export-kaggle`` (a label back to per-slice TIFF masks).
- :mod:`~pipeline.ingestion.forms`: the registry of input forms (detect, list and load each form of input);
  :mod:`~pipeline.ingestion.cases`: what to segment (paths -> cases with unique, safe names).
- :mod:`~pipeline.ingestion.studies`: MONAI Label studies folders.
- :mod:`~pipeline.ingestion.synthetic`: the built-in synthetic data set.
- :mod:`~pipeline.ingestion.errors`: :class:`LGGDataError`, the one-line data error, and :class:`CaseError`.
- A user's own scans: :mod:`~pipeline.ingestion.sequences` (which file or series is which sequence),
  :mod:`~pipeline.ingestion.dicom_files` (DICOM files grouped into image series),
  :mod:`~pipeline.ingestion.scan_cases` (finding the sequences of a case) and
  :mod:`~pipeline.ingestion.scan_reading` (reading one sequence with its geometry; where the slices of a
  series lie: :mod:`~pipeline.ingestion.slice_geometry`). Turning them into the
  model's input is :mod:`pipeline.preprocessing` (the scan chain, registration, the model grid).
"""

from pipeline.ingestion.cases import CaseError, case_name, find_cases
from pipeline.ingestion.datalist import DATALIST_FILENAME, load_datalist, make_folds, split_folds
from pipeline.ingestion.errors import LGGDataError
from pipeline.ingestion.export import export_kaggle
from pipeline.ingestion.kaggle import (
    ORIENTATION,
    discover_patients,
    institution_of,
    make_affine,
    read_patient_folder,
    scan_patient_folder,
)
from pipeline.ingestion.nifti import IMAGE_FILENAME, LABEL_FILENAME, load_label_volume, save_nifti
from pipeline.ingestion.prepare import PrepareResult, prepare_dataset
from pipeline.ingestion.sequences import CHANNEL_NAMES

__all__ = [
    "CHANNEL_NAMES",
    "DATALIST_FILENAME",
    "IMAGE_FILENAME",
    "LABEL_FILENAME",
    "ORIENTATION",
    "CaseError",
    "LGGDataError",
    "PrepareResult",
    "case_name",
    "discover_patients",
    "export_kaggle",
    "find_cases",
    "institution_of",
    "load_datalist",
    "load_label_volume",
    "make_affine",
    "make_folds",
    "prepare_dataset",
    "read_patient_folder",
    "save_nifti",
    "scan_patient_folder",
    "split_folds",
]
