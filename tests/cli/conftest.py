"""The ``lggseg`` command's tests: the one error rule, start-up costs, ``train`` / ``evaluate`` / ``infer``,
``demo`` and ``ensemble --quality``.

Their fixtures are those of ``tests/conftest.py``; plain functions are in ``tests/helpers.py``.
"""
