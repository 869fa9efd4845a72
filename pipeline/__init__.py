"""lggseg: volumetric LGG FLAIR-abnormality segmentation on MONAI.

Modules (arrows point down only, see ``DESIGN.md`` in the shared docs):

- faces: ``pipeline.cli`` (the ``lggseg`` command; one module per group of sub-commands), the bundle's
  ``bundle/configs/*.json``, ``scripts/``.
- floor 5: ``pipeline.model_selection`` (from a cross-validation to a model: post-processing chosen on the
  validation folds, the folds' models combined into one model file).
- floor 4: ``pipeline.workflows`` (the CLI's train / evaluate / infer / cross-validate: the one place that
  turns a run configuration into builder arguments).
- floor 3: ``pipeline.engines`` (builders: datasets, loaders, MONAI ``SupervisedTrainer`` /
  ``SupervisedEvaluator``, the per-case runner) and ``pipeline.config`` (``RunConfig``, every option once,
  its validation).
- floor 2: ``pipeline.transforms`` (MONAI dictionary transforms, the raw-folder loader, composed chains),
  ``pipeline.inference`` (slice / sliding-window inferer, TTA, post-processing, the prediction writer),
  ``pipeline.evaluation`` (per-patient report handler), ``pipeline.report`` (report files and plots).
- floor 1: ``pipeline.data`` (raw Kaggle folders -> validated volumes, NIfTI, datalist, folds),
  ``pipeline.cases`` (what to segment, case names), ``pipeline.studies`` (MONAI Label studies folders),
  ``pipeline.safety`` (atomic writes, output guard, manifest), ``pipeline.networks`` (the registry;
  ``pipeline.ensemble`` averages several networks) with
  the custom architectures beside it (``unext``, ``unet``, ``resunet``, ``unetplusplus``, ``deeplab``,
  ``segmenter``, ``fcn``, ``hrnet``; ``unext_reference`` is the public design, for benchmarks and weight
  loading), ``pipeline.metrics``, ``pipeline.losses``, ``pipeline.optim``, ``pipeline.overlays`` (overlay
  drawing and colours), ``pipeline.checkpoint``, ``pipeline.handlers``, ``pipeline.synthetic`` (the
  built-in synthetic data set).

Submodules load on first use (``pipeline.data`` after ``import pipeline``), which is what the bundle's
``"$import pipeline"`` expressions rely on.
"""

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = {
    "cases",
    "checkpoint",
    "config",
    "data",
    "engines",
    "ensemble",
    "evaluation",
    "handlers",
    "inference",
    "losses",
    "metrics",
    "model_selection",
    "networks",
    "optim",
    "overlays",
    "report",
    "safety",
    "studies",
    "synthetic",
    "transforms",
    "workflows",
}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
