"""The tests of ``scripts/`` (imported by name: ``scripts/`` is on ``sys.path``, or through the
``load_script`` fixture).

Their fixtures are those of ``tests/conftest.py``; plain functions are in ``tests/helpers.py``.
"""
