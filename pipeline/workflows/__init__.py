"""Workflows: the jobs of the CLI, from a :class:`pipeline.config.RunConfig` to results.

- :mod:`~pipeline.workflows.builders`: the one place that turns a configuration into builder arguments.
- :mod:`~pipeline.workflows.training`: train one fold (build, resume, run).
- :mod:`~pipeline.workflows.prediction`: evaluate a model per patient; segment cases.
- :mod:`~pipeline.workflows.cross_validation`: every fold, then one pooled report.
- :mod:`~pipeline.workflows.model_selection`: post-processing chosen on validation folds, fold ensembles.
- :mod:`~pipeline.workflows.bundle_checks`: the checks the bundle's configs run first (``lggseg``'s own, with
  its one-line errors).
"""

from pipeline.workflows.builders import transform_settings
from pipeline.workflows.cross_validation import cross_validate, evaluate_folds
from pipeline.workflows.prediction import evaluate, infer
from pipeline.workflows.training import prepare_run, resume_run, train

__all__ = [
    "cross_validate",
    "evaluate",
    "evaluate_folds",
    "infer",
    "prepare_run",
    "resume_run",
    "train",
    "transform_settings",
]
