"""The MONAI Label app's tests (``apps/lggseg``): its ``lib`` package, imported in this process."""

from __future__ import annotations

import pytest
from helpers import app_on_path, require_monailabel


@pytest.fixture(scope="module")
def app_lib():
    """The app's ``lib`` package with every module the tests call, imported in this process, the app's folder
    on ``sys.path`` while the module's tests run (MONAI Label required: skip without it, fail under CI)."""
    require_monailabel()
    with app_on_path():
        import lib.confined
        import lib.datastore
        import lib.infers
        import lib.model_files
        import lib.scan_studies
        import lib.trainers
        import lib.training_inputs

        yield lib
