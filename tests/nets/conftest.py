"""The network tests: the registry (``pipeline.networks``) and the architectures (``pipeline.nets``), padding
to the network's stride.

Their fixtures are those of ``tests/conftest.py``; plain functions are in ``tests/helpers.py``.
"""
