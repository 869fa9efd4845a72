"""The preprocessing tests: the MONAI transforms and the chains ``pipeline.transforms`` builds, loading a
case, the training augmentations.

Their fixtures are those of ``tests/conftest.py``; plain functions are in ``tests/helpers.py``.
"""
