"""The checks of the bundle's configs, answered as ``lggseg`` answers them (a workflow, not the
CLI: the bundle's configs import it as they import the builders, never the CLI; it was
``pipeline.cli.bundle_checks``).

``python -m monai.bundle run`` wraps any ``Exception`` of a config expression in ``RuntimeError("Failed to
evaluate ...")`` and prints a 50-80 line traceback; ``SystemExit`` is no ``Exception``, so MONAI and Fire let
it end the process with its code and without a traceback. ``inference.json``'s first ``initialize``
expression is :func:`check_inference`: the checks of ``lggseg infer``, the same functions, before anything
is built or read; on bad input it prints the CLI's one line (``lggseg: error: <file or option>:
<problem>``) and exits with 2 (:func:`pipeline.errors.exit_on_bad_input`, the CLI's rule for bad input).

``train.json`` starts with :func:`check_training` and ``evaluate.json`` with :func:`check_evaluation` (the
options, the device, the splits, the weights, where the model and the report go) under the same rule.

Only ``initialize`` runs the checks: a config parsed in Python (``ConfigParser.get_parsed_content``) builds
its objects as before and raises ordinary exceptions, with one exception: ``train.json``'s ``splits``
(:func:`datalist_splits`) says a bad datalist in one line and exits with 2 wherever it is resolved.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.config import RunConfig, resolve_device, validate_config
from pipeline.errors import exit_on_bad_input
from pipeline.inference.writer import check_prediction_targets
from pipeline.ingestion.cases import check_unique, find_cases
from pipeline.ingestion.datalist import load_datalist, split_folds
from pipeline.model_files import INFERENCE_KEYS
from pipeline.safety import OutputTransaction, check_output_location

INFERENCE_OPTIONS = (*INFERENCE_KEYS, "sw_batch_size", "num_workers", "amp")
"""The options of ``inference.json`` that are :class:`~pipeline.config.RunConfig` options (same names): the
model's (:data:`pipeline.model_files.INFERENCE_KEYS`) and how it runs."""


def inference_problems(
    dataset_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    overwrite: bool | str = False,
    device: str = "auto",
    ckpt_path: str | os.PathLike | None = None,
    **options: Any,
) -> None:
    """The checks of ``lggseg infer`` on the values of ``inference.json``, raising the first problem.

    Args:
        dataset_dir: what to segment (:func:`pipeline.ingestion.cases.find_cases`).
        output_dir: where the predictions go (not inside the input; existing ones only with ``overwrite``).
        overwrite: replace existing predictions of these cases.
        device: ``auto``, ``cpu`` or ``cuda[:i]`` (:func:`pipeline.config.resolve_device`).
        ckpt_path: the weights ``CheckpointLoader`` will load (:func:`check_weights_file`).
        options: the :data:`INFERENCE_OPTIONS` (types and values as ``RunConfig`` checks them).

    Raises:
        ValueError: one line naming the option, file or folder and the problem (exit code 2 in the CLI).
    """
    validate_config(RunConfig.from_dict(options))
    resolve_device(device)
    cases = find_cases(dataset_dir)
    check_unique(cases)
    check_prediction_targets(cases, output_dir, [dataset_dir], overwrite)
    if ckpt_path is not None:
        check_weights_file(ckpt_path)


def check_inference(*args: Any, **kwargs: Any) -> None:
    """:func:`inference_problems` under the CLI's error rule: on bad input, one line on stderr and
    ``SystemExit(2)`` (what ``python -m monai.bundle run`` shows without a traceback)."""
    exit_on_bad_input(inference_problems, *args, **kwargs)


def check_weights_file(path: str | os.PathLike) -> None:
    """The weights ``CheckpointLoader`` will load, checked as ``lggseg`` checks a model file: readable,
    and no NaN or Inf (a diverged training gives empty masks). A bare ``state_dict`` (the MONAI Model Zoo's
    form) is accepted as well as an lggseg model file.

    Raises:
        ModelFileError: one line naming the file and the problem.
    """
    import torch

    from pipeline.model_files import MODEL_KEY, ModelFileError, check_finite_weights

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: model file not found")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is one line
        problem = f"not a readable PyTorch weights file ({type(error).__name__})"
        raise ModelFileError(f"{path}: {problem}") from None
    weights = content.get(MODEL_KEY, content) if isinstance(content, dict) else None
    if not isinstance(weights, dict):
        raise ModelFileError(f"{path}: holds no weights (a state_dict or an lggseg model file)")
    check_finite_weights(weights, path)


def _datalist_split(
    data_list_file_path: str | os.PathLike, fold: int, val_fold: int | None, train_on_all: bool
) -> dict:
    return split_folds(load_datalist(data_list_file_path), fold, val_fold, train_on_all)


def datalist_splits(
    data_list_file_path: str | os.PathLike, fold: int, val_fold: int | None, train_on_all: bool = False
) -> dict:
    """``train.json``'s ``splits``: the datalist read and split by patient folds
    (:func:`pipeline.ingestion.datalist.split_folds`, ``train_on_all`` as there); a missing or bad datalist,
    or an empty split, is one line and ``SystemExit(2)``. A caller that gives ``splits`` itself (the MONAI
    Label trainer) reads none.

    Returns:
        ``{"train": [...], "val": [...], "test": [...], "val_fold": int}``.
    """
    return exit_on_bad_input(_datalist_split, data_list_file_path, fold, val_fold, train_on_all)


def _check_parts(splits: Mapping[str, Any], parts: tuple[str, ...]) -> None:
    for part in parts:
        if not splits.get(part):
            what = "evaluate" if part == "test" else "train on"
            raise ValueError(f"splits: the {part} split is empty; nothing to {what}")


def training_problems(
    splits: Mapping[str, Any],
    device: str,
    ckpt_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    run_config: Mapping[str, Any],
    dataset_dir: str | os.PathLike | None = None,
) -> None:
    """The checks of ``lggseg train`` on the values of ``train.json``, raising the first problem.

    Args:
        splits: ``train.json``'s ``splits`` (:func:`datalist_splits`, which checked the datalist).
        device: ``auto``, ``cpu`` or ``cuda[:i]``.
        ckpt_dir: where ``model.pt`` goes (an existing one is never replaced).
        output_dir: where TensorBoard events and the cache go.
        run_config: ``train.json``'s ``run_config`` (:class:`~pipeline.config.RunConfig` fields).
        dataset_dir: the data folder (no output may be inside it).

    Raises:
        ValueError: one line naming the option, file or folder and the problem.
    """
    from pipeline.model_files import refuse_existing_model

    validate_config(RunConfig.from_dict(dict(run_config)))
    resolve_device(device)
    _check_parts(splits, ("train", "val"))
    inputs = [dataset_dir] if dataset_dir else []
    for folder in (ckpt_dir, output_dir):
        check_output_location(folder, inputs)
    refuse_existing_model(Path(ckpt_dir) / "model.pt")


def check_training(*args: Any, **kwargs: Any) -> None:
    """:func:`training_problems` under the CLI's error rule (one line, ``SystemExit(2)``)."""
    exit_on_bad_input(training_problems, *args, **kwargs)


def evaluation_problems(
    splits: Mapping[str, Any],
    device: str,
    ckpt_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    overwrite: bool,
    run_config: Mapping[str, Any],
    dataset_dir: str | os.PathLike | None = None,
) -> None:
    """The checks of ``lggseg evaluate`` on the values of ``evaluate.json``, raising the first problem;
    then the report's file names are claimed in the output's manifest (a later run may replace them with
    ``overwrite``; a file of the same name that lggseg did not write is never replaced).

    Args:
        splits: ``train.json``'s ``splits``; the ``test`` patients are evaluated.
        device: ``auto``, ``cpu`` or ``cuda[:i]``.
        ckpt_path: the weights to evaluate (:func:`check_weights_file`).
        output_dir: the report folder (an earlier report is replaced only with ``overwrite``).
        overwrite: replace an earlier report that lggseg wrote there.
        run_config: ``train.json``'s ``run_config``.
        dataset_dir: the data folder (the report may not be inside it).

    Raises:
        ValueError: one line naming the option, file or folder and the problem.
    """
    from pipeline.workflows.prediction import REPORT_FILES

    validate_config(RunConfig.from_dict(dict(run_config)))
    resolve_device(device)
    check_weights_file(ckpt_path)
    _check_parts(splits, ("test",))
    transaction = OutputTransaction(
        output_dir,
        "bundle evaluate",
        bool(overwrite),
        [*([dataset_dir] if dataset_dir else []), ckpt_path],
        results="an evaluation report",
        foreign_needs_overwrite=False,  # train.json's TensorBoard events and cache live there too
    )
    transaction.check(REPORT_FILES)
    transaction.claim(REPORT_FILES)


def check_evaluation(*args: Any, **kwargs: Any) -> None:
    """:func:`evaluation_problems` under the CLI's error rule (one line, ``SystemExit(2)``)."""
    exit_on_bad_input(evaluation_problems, *args, **kwargs)
