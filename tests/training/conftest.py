"""The training tests: the atomic checkpoint saver, the training-speed options (bf16 autocast, crops, hard
negatives).

Their fixtures are those of ``tests/conftest.py``; plain functions are in ``tests/helpers.py``.
"""
