"""The inference tests: post-processing, the quality estimate and its flags, the per-case outputs (QC picture,
volume, summary table) and the DICOM SEG on source series of every kind.

Their fixtures are those of ``tests/conftest.py``; plain functions are in ``tests/helpers.py``.
"""
