"""lggseg: volumetric LGG FLAIR-abnormality segmentation on MONAI.

Folders show the stages, as nnU-Net's do: ``pipeline.errors``, ``pipeline.safety``, ``pipeline.ingestion``,
``pipeline.visualize``, ``pipeline.nets`` and ``pipeline.networks``, ``pipeline.preprocessing``,
``pipeline.training``, ``pipeline.transforms``, ``pipeline.inference``, ``pipeline.evaluation``,
``pipeline.config``, ``pipeline.engines``, ``pipeline.model_files``, ``pipeline.workflows`` and
``pipeline.cli`` (the ``lggseg`` command); the bundle's configs, the MONAI Label app (``apps/``) and
``scripts/`` use them. What each holds, the layers they form and who may import whom: ``ARCHITECTURE.md``
at the repository root (checked by ``lint-imports``, the contracts in ``setup.cfg``).

Sub-packages load on first use (``pipeline.ingestion`` after ``import pipeline``), which is what the
bundle's ``"$import pipeline"`` expressions rely on. The flat module paths of earlier versions
(``pipeline.data``, ``pipeline.handlers``, ``pipeline.checkpoint``, ...) still import, as aliases of
their new homes (:data:`MOVED_MODULES`) that warn (``DeprecationWarning``) and go in
:data:`REMOVED_IN`, so bundle configs written for them keep working meanwhile.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from typing import Any

# the package's version (the code, what pip installs; setup.cfg reads it), not the model's: the trained
# model's version is the bundle's (bundle/configs/metadata.json "version"), written into the shipped model
# file ("model_version", read by pipeline.model_files.model_version) and named by the DICOM SEG it writes
__version__ = "0.4.0"

_SUBPACKAGES = {
    "cli",
    "config",
    "engines",
    "errors",
    "evaluation",
    "inference",
    "ingestion",
    "model_files",
    "nets",
    "networks",
    "preprocessing",
    "safety",
    "training",
    "transforms",
    "visualize",
    "workflows",
}

REMOVED_IN = "0.5.0"  # the package version that drops the old module paths below

#: module paths of earlier versions -> their homes now (imported on first use, as aliases that warn)
MOVED_MODULES: dict[str, str | tuple[str, ...]] = {
    "data": "pipeline.ingestion",
    "cases": "pipeline.ingestion.cases",
    "studies": "pipeline.ingestion.studies",
    "synthetic": "pipeline.ingestion.synthetic",
    "checkpoint": "pipeline.model_files",
    "handlers": "pipeline.training",
    "losses": "pipeline.training.losses",
    "optim": "pipeline.training.optim",
    "metrics": "pipeline.evaluation.metrics",
    "report": "pipeline.evaluation.report",
    # FLAIR_CHANNEL was importable from the overlays module too; its home is the sequences module
    "overlays": ("pipeline.visualize.overlays", "pipeline.ingestion.sequences"),
    "evaluation.overlays": ("pipeline.visualize.overlays", "pipeline.ingestion.sequences"),
    "model_selection": "pipeline.workflows.model_selection",
    "augmentations": "pipeline.preprocessing.augmentations",
    "ingestion.scans": (
        "pipeline.ingestion.scan_cases",
        "pipeline.ingestion.scan_reading",
        "pipeline.ingestion.dicom_files",
    ),
    "ingestion.scan_loader": ("pipeline.preprocessing.scan_chain", "pipeline.ingestion.scan_reading"),
    "ingestion.model_grid": "pipeline.preprocessing.model_grid",
    "ingestion.registration": "pipeline.preprocessing.registration",
    "cli.bundle_checks": "pipeline.workflows.bundle_checks",
    "cli.train_commands": (
        "pipeline.cli.train_command",
        "pipeline.cli.cv_command",
        "pipeline.cli.evaluate_command",
        "pipeline.cli.infer_command",
        "pipeline.cli.run_options",
    ),
    **{
        name: f"pipeline.nets.{name}"
        for name in (
            "unext",
            "unet",
            "resunet",
            "unetplusplus",
            "deeplab",
            "segmenter",
            "fcn",
            "hrnet",
            "ensemble",
        )
    },
}


def _homes(old: str) -> tuple[str, ...]:
    target = MOVED_MODULES[old]
    return (target,) if isinstance(target, str) else tuple(target)


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Import ``pipeline.<old>`` as a module that forwards every attribute to its new home(s), with a
    ``DeprecationWarning`` naming the new path and the version that removes the old one."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        prefix, _, name = fullname.partition(".")
        if prefix != __name__ or name not in MOVED_MODULES:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        homes = _homes(spec.name.partition(".")[2])
        warnings.warn(
            f"{spec.name} is deprecated and will be removed in lggseg {REMOVED_IN}; import from "
            f"{' / '.join(homes)}",
            DeprecationWarning,
            stacklevel=3,
        )
        targets = [importlib.import_module(home) for home in homes]
        module = types.ModuleType(spec.name, f"Moved to {', '.join(homes)}.")

        def forward(attr: str) -> Any:
            for target in targets:
                if hasattr(target, attr):
                    return getattr(target, attr)
            raise AttributeError(f"module {spec.name!r} has no attribute {attr!r}")

        module.__getattr__ = forward  # type: ignore[method-assign]
        module.__dir__ = lambda: sorted({a for t in targets for a in dir(t)})  # type: ignore[method-assign]
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        pass


if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
    sys.meta_path.insert(0, _MovedModuleFinder())


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES or (name in MOVED_MODULES and "." not in name):
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
