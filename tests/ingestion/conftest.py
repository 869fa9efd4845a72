"""The ingestion tests: Kaggle reading and checks, NIfTI, datalist and folds, export, input forms, a user's
scans (sequence names, scan case folders, DICOM and NIfTI reading) and the headers of any scanner.

Their fixtures are those of ``tests/conftest.py``; plain functions are in ``tests/helpers.py``.
"""
