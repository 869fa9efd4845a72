"""The checks of the bundle's ``inference.json``, answered as ``lggseg`` answers them (a face, like the CLI).

``python -m monai.bundle run`` wraps any ``Exception`` of a config expression in ``RuntimeError("Failed to
evaluate ...")`` and prints a 50-80 line traceback; ``SystemExit`` is no ``Exception``, so MONAI and Fire let
it end the process with its code and without a traceback. ``inference.json``'s first ``initialize``
expression is :func:`check_inference`: the checks of ``lggseg infer``, the same functions, before anything
is built or read; on bad input it prints the CLI's one line (``lggseg: error: <file or option>:
<problem>``) and exits with 2 (:func:`pipeline.cli.errors.exit_on_bad_input`).

Only ``initialize`` runs the checks: a config parsed in Python (``ConfigParser.get_parsed_content``) builds
its objects as before and raises ordinary exceptions.
"""

from __future__ import annotations

import os
from typing import Any

from pipeline.cli.errors import exit_on_bad_input
from pipeline.config import RunConfig, resolve_device, validate_config
from pipeline.inference.writer import check_prediction_targets
from pipeline.ingestion.cases import check_unique, find_cases

INFERENCE_OPTIONS = (
    "arch",
    "spatial_dims",
    "context",
    "num_classes",
    "deep_supervision",
    "members",
    "network_kwargs",
    "input_size",
    "patch_size",
    "sw_batch_size",
    "tta",
    "threshold",
    "keep_largest",
    "min_size",
    "num_workers",
    "amp",
)
"""The options of ``inference.json`` that are :class:`~pipeline.config.RunConfig` options (same names)."""


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


def check_inference(
    dataset_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    overwrite: bool | str = False,
    device: str = "auto",
    ckpt_path: str | os.PathLike | None = None,
    **options: Any,
) -> None:
    """:func:`inference_problems` under the CLI's error rule: on bad input, one line on stderr and
    ``SystemExit(2)`` (what ``python -m monai.bundle run`` shows without a traceback).

    Args:
        dataset_dir: what to segment.
        output_dir: where the predictions go.
        overwrite: replace existing predictions of these cases.
        device: ``auto``, ``cpu`` or ``cuda[:i]``.
        ckpt_path: the weights the bundle loads.
        options: the :data:`INFERENCE_OPTIONS`.

    Raises:
        SystemExit: code 2, on bad input.
    """
    exit_on_bad_input(inference_problems, dataset_dir, output_dir, overwrite, device, ckpt_path, **options)


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
