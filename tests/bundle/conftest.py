"""The MONAI Bundle's tests (``bundle/``): metadata, the configs against the CLI, inference, training checks,
torchrun.

Their fixtures are those of ``tests/conftest.py``; plain functions are in ``tests/helpers.py``.
"""
