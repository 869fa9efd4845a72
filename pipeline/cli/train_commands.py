"""``lggseg train``, ``evaluate``, ``infer`` and ``cv``: parse the options into a configuration and call
:mod:`pipeline.workflows`. The training options are generated from :class:`pipeline.config.RunConfig`
(``--lr 3e-4``, ``--input-size 256 256``, ``--deep-supervision`` / ``--no-deep-supervision``, ...), so
the CLI, a ``--config`` JSON file and the bundle share one list of options.
"""

from __future__ import annotations

import argparse
import json
import logging
import typing
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from pipeline.cli.parsing import add_command
from pipeline.config import (
    OPTION_HELP,
    POSTPROCESSING_KEYS,
    RunConfig,
    option_choices,
    option_type,
    read_config_file,
)
from pipeline.model_files import SHIPPED_MODEL

logger = logging.getLogger("lggseg")


def _add_option(parser: argparse.ArgumentParser, name: str, default: Any, help_suffix: str = "") -> None:
    """One ``--name`` option of a :class:`RunConfig` field: help, choices and length from pipeline.config."""
    flag = "--" + name.replace("_", "-")
    base, nargs = option_type(name)
    help_text = f"{OPTION_HELP.get(name, name.replace('_', ' '))} ({help_suffix or f'default: {default}'})"
    kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": help_text}
    choices = option_choices(name)
    if base is bool:
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        return
    if nargs is not None:
        kwargs["nargs"] = nargs
        kwargs["metavar"] = {"input_size": ("H", "W"), "patch_size": ("H", "W", "D")}.get(name)
    if typing.get_origin(base) is dict:
        kwargs["type"] = json.loads
    else:
        kwargs["type"] = base
    if choices is not None:
        kwargs["choices"] = choices
    parser.add_argument(flag, **kwargs)


def add_config_options(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """Add one option per :class:`RunConfig` field (default: not given, i.e. the config's value)."""
    parser.add_argument("--config", type=Path, help="JSON file of options (command-line options win)")
    for f in fields(RunConfig):
        if f.name in skip or f.name == "divisible":  # derived from the network's stride
            continue
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        _add_option(parser, f.name, default)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """A :class:`RunConfig` from ``--config`` (if any) updated with the options given on the command line."""
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(read_config_file(args.config))
    names = {f.name for f in fields(RunConfig)}
    values.update({k: v for k, v in vars(args).items() if k in names})
    return RunConfig.from_dict(values)


def _postprocessing_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=SHIPPED_MODEL,
        help="model file (best_model.pt, model.pt; default: the shipped bundle/models/model.pt)",
    )
    parser.add_argument("--device", default="auto", help=OPTION_HELP["device"] + " (default: auto)")
    for name in POSTPROCESSING_KEYS:
        _add_option(parser, name, None, "default: the run's")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in POSTPROCESSING_KEYS if getattr(args, k, None) is not None}


def run_train(args: argparse.Namespace) -> int:
    """Run ``lggseg train``."""
    from pipeline.workflows.training import train

    train(config_from_args(args))
    return 0


def run_cv(args: argparse.Namespace) -> int:
    """Run ``lggseg cv``."""
    from pipeline.workflows.cross_validation import cross_validate

    cross_validate(config_from_args(args), folds=args.folds)
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    """Run ``lggseg evaluate``: print the pooled Dice and where the report is."""
    from pipeline.workflows.prediction import evaluate

    result = evaluate(
        args.checkpoint,
        output=args.output,
        data=args.data,
        folds=args.folds,
        overrides=_overrides(args),
        save_predictions=args.save_predictions,
        device=args.device,
        overwrite=args.overwrite,
    )
    dice = result["summary"]["overall"]["metrics"]["dice"]
    print(
        f"{len(result['records'])} patients: Dice mean {dice['mean']:.4f} median {dice['median']:.4f} "
        f"std {dice['std']:.4f}; report in {result['paths'].get('json', '')}"
    )
    return 0


def run_infer(args: argparse.Namespace) -> int:
    """Run ``lggseg infer``: print how many predictions were written."""
    from pipeline.ingestion.cases import case_name
    from pipeline.ingestion.scans import make_scan_case
    from pipeline.workflows.prediction import infer

    inputs: list = list(args.input)
    if args.flair is not None:
        name = args.case or case_name(args.flair)
        inputs.append(make_scan_case(name, args.flair, args.t1, args.t1c))
    elif args.t1 or args.t1c or args.case:
        raise ValueError("--t1, --t1c and --case go with --flair FILE (one case named explicitly)")
    if not inputs:
        raise ValueError("nothing to segment: pass --input PATH ... or --flair FILE")
    written = infer(
        args.checkpoint,
        inputs,
        args.output,
        overrides=_overrides(args),
        kaggle_masks=args.kaggle_masks,
        device=args.device,
        overwrite=args.overwrite,
    )
    print(f"{len(written)} predictions written to {args.output}")
    return 0


PREDICTIONS_LEFT = (
    "every <case>_seg.nii.gz already in {where} is complete (one being written is left as "
    "<case>_seg.partial-<pid>-*.nii.gz, removed by the next run)"
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train``, ``evaluate``, ``infer`` and ``cv``."""
    p = add_command(
        subparsers,
        "train",
        run_train,
        interrupted="the epoch checkpoints saved so far are kept; continue with --resume",
        help="train a network on one fold (Ignite SupervisedTrainer)",
        description="Train on every fold but --fold and --val-fold; validate per patient "
        "in 3D on --val-fold; checkpoints, TensorBoard and config in OUTPUT/NAME/fold<k>.",
    )
    add_config_options(p, skip=("members",))

    p = add_command(
        subparsers,
        "cv",
        run_cv,
        interrupted="the finished folds are kept; run the same command again: finished folds are skipped, "
        "the interrupted one continues from its last checkpoint",
        help="train and evaluate every fold, then pool the per-patient report",
        description="Cross-validation: each fold in turn is the test fold; finished "
        "folds are skipped, interrupted ones resumed. Report in OUTPUT/NAME/cv.",
    )
    add_config_options(p, skip=("fold", "resume", "val_fold", "members"))
    p.add_argument("--folds", type=int, nargs="+", help="folds to run (default: all in the datalist)")

    p = add_command(
        subparsers,
        "evaluate",
        run_evaluate,
        interrupted="the report folder is unchanged (report and predictions are written into a staging "
        "folder beside it and moved in when complete; the next run removes the staging folder); run again",
        help="per-patient 3D evaluation of a checkpoint (CSV, JSON, plots)",
        description="Evaluate whole volumes per patient: Dice, IoU, HD95, ASSD, "
        "sensitivity, precision, volume differences, lesion counts, slice-level figures.",
    )
    _postprocessing_options(p)
    p.add_argument("--data", type=Path, help="prepared data folder or datalist (default: the run's)")
    p.add_argument("--folds", type=int, nargs="+", help="folds to evaluate (default: the run's test fold)")
    p.add_argument(
        "--output",
        type=Path,
        help="report folder (default: <run>/evaluation for a model in a run's checkpoints folder; "
        "required for any other model file, e.g. the shipped one)",
    )
    p.add_argument("--save-predictions", action="store_true", help="also write predicted NIfTI volumes")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the report of an earlier evaluation in --output (files lggseg did not write are kept)",
    )

    p = add_command(
        subparsers,
        "infer",
        run_infer,
        interrupted=PREDICTIONS_LEFT.format(where="{output}")
        + "; run again with --overwrite, or on the cases still missing",
        help="predict tumour masks as NIfTI (and Kaggle-layout TIFF masks)",
        description="Inputs: a user's scans (case folders of FLAIR [+ T1, T1c] NIfTI files or DICOM "
        "series, or --flair FILE), prepared folders or datalists, NIfTI images, raw Kaggle patient folders "
        "or folders of them. Writes OUTPUT/<case>/<case>_seg.nii.gz on the input's own grid, <case>_qc.png, "
        "<case>_seg.dcm (DICOM input) and OUTPUT/summary.csv.",
    )
    _postprocessing_options(p)
    p.add_argument(
        "--input",
        nargs="+",
        default=[],
        help="what to segment: scan case folders (FLAIR [+ T1, T1c] as NIfTI files or DICOM series) or "
        "folders of them, FLAIR NIfTI files, prepared folders, datalists, Kaggle patient folders",
    )
    p.add_argument(
        "--flair", type=Path, help="one case named explicitly: its FLAIR (NIfTI file or DICOM folder)"
    )
    p.add_argument("--t1", type=Path, help="with --flair: its pre-contrast T1 (default: the FLAIR stands in)")
    p.add_argument(
        "--t1c", type=Path, help="with --flair: its post-contrast T1 (default: the FLAIR stands in)"
    )
    p.add_argument("--case", help="with --flair: the case name (default: the FLAIR's name)")
    p.add_argument("--output", type=Path, required=True, help="output folder")
    p.add_argument("--kaggle-masks", action="store_true", help="also write <patient>_<k>_mask.tif per slice")
    p.add_argument("--overwrite", action="store_true", help="replace existing predictions of these cases")
