"""Inference: from a normalised volume to a mask on disk.

- :mod:`~pipeline.inference.inferers`: :class:`VolumeInferer` (slice-by-slice 2D / 2.5D or sliding-window
  3D, test-time augmentation) and :class:`VolumePrepareBatch`.
- :mod:`~pipeline.inference.postprocessing`: threshold and connected-component filters.
- :mod:`~pipeline.inference.writer`: predictions written with MONAI's ``SaveImaged`` (temporary name, then
  rename) and the check of their targets before any work.
- :mod:`~pipeline.inference.case_report` and :mod:`~pipeline.inference.dicom_seg`: per case the QC picture,
  the tumour volume, the summary table and, for a DICOM FLAIR, a DICOM SEG that references it.
- :mod:`~pipeline.inference.case_outputs_handler`: :class:`CaseOutputsHandler`, the Ignite handler that
  publishes each case's files and ``summary.csv`` for ``lggseg infer`` and the bundle's ``inference.json``
  (imported from its module: it pulls in matplotlib and highdicom).
"""

from pipeline.inference.inferers import TTA_MODES, VolumeInferer, VolumePrepareBatch
from pipeline.inference.postprocessing import build_postprocessing
from pipeline.inference.writer import check_prediction_targets, prediction_path, prediction_writer

__all__ = [
    "TTA_MODES",
    "VolumeInferer",
    "VolumePrepareBatch",
    "build_postprocessing",
    "check_prediction_targets",
    "prediction_path",
    "prediction_writer",
]
