"""The workflow tests: resuming a run with its own settings, model selection and fold ensembles, a user's own
scans through the whole path with the shipped model.

Their fixtures are those of ``tests/conftest.py``; plain functions are in ``tests/helpers.py``.
"""
