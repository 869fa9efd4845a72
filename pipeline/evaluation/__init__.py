"""Evaluation: per-patient 3D metrics, the report and its plots.

- :mod:`~pipeline.evaluation.metrics`: per-patient volumetric metrics and slice-level figures.
- :mod:`~pipeline.evaluation.handler`: :class:`PatientReportHandler`, the evaluator handler that collects
  them.
- :mod:`~pipeline.evaluation.report`: the report files (CSV, JSON, summaries per institution).
- :mod:`~pipeline.evaluation.plots`: Dice per institution, volumes, overlays of chosen patients (drawn with
  :mod:`pipeline.visualize`, as TensorBoard's images and the QC picture are).
"""

from pipeline.evaluation.handler import PatientReportHandler, patient_of, spacing_of

__all__ = ["PatientReportHandler", "patient_of", "spacing_of"]
