"""The evaluation tests: per-patient metrics against hand-computed values, and the report.

Their fixtures are those of ``tests/conftest.py``; plain functions are in ``tests/helpers.py``.
"""
