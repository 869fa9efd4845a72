"""``lggseg train``, ``evaluate``, ``infer`` and ``cv``: parse the options into a configuration and call
:mod:`pipeline.workflows`. The training options are generated from :class:`pipeline.config.RunConfig`
(``--lr 3e-4``, ``--input-size 256 256``, ``--deep-supervision`` / ``--no-deep-supervision``, ...), so
the CLI, a ``--config`` JSON file and the bundle share one list of options.

Options left out are not set: only the options a user gave (:func:`given_options`) reach a resumed run,
which keeps its own settings otherwise (:func:`pipeline.workflows.training.resumed_config`). PyTorch and
MONAI are imported when a command runs or its options are described, never when the module is imported.
"""

from __future__ import annotations

import argparse
import json
import logging
import typing
from dataclasses import MISSING, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.cli.parsing import add_command

if TYPE_CHECKING:
    from pipeline.config import RunConfig

logger = logging.getLogger("lggseg")


def _add_option(parser: argparse.ArgumentParser, name: str, default: Any, help_suffix: str = "") -> None:
    """One ``--name`` option of a :class:`RunConfig` field: help, choices and length from pipeline.config."""
    from pipeline.config import OPTION_HELP, option_choices, option_type

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
    from pipeline.config import RunConfig

    parser.add_argument("--config", type=Path, help="JSON file of options (command-line options win)")
    for f in fields(RunConfig):
        if f.name in skip or f.name == "divisible":  # derived from the network's stride
            continue
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        _add_option(parser, f.name, default)


def given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options a user gave: those of ``--config`` (if any), updated with the command line's.

    Args:
        args: the parsed command line (options not given are absent: their default is ``SUPPRESS``).

    Returns:
        ``{option: value}``, each checked (:func:`pipeline.config.checked_options`); no defaults.
    """
    from pipeline.config import RunConfig, checked_options, read_config_file

    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(read_config_file(args.config))
    names = {f.name for f in fields(RunConfig)}
    values.update({k: v for k, v in vars(args).items() if k in names})
    return checked_options(values)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """A :class:`RunConfig` from ``--config`` (if any) updated with the options given on the command line."""
    from pipeline.config import RunConfig

    return RunConfig.from_dict(given_options(args))


def _postprocessing_options(parser: argparse.ArgumentParser) -> None:
    from pipeline.config import OPTION_HELP, POSTPROCESSING_KEYS
    from pipeline.model_files import SHIPPED_MODEL

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
    from pipeline.config import POSTPROCESSING_KEYS

    return {k: getattr(args, k) for k in POSTPROCESSING_KEYS if getattr(args, k, None) is not None}


def run_train(args: argparse.Namespace) -> int:
    """Run ``lggseg train``; with ``--resume``, the run's own settings (a finished run trains nothing).

    Raises:
        ValueError: with ``--resume``, an option given that differs from the run's (exit code 2).
        FileNotFoundError: with ``--resume``, nothing to resume in the run folder (exit code 2).
    """
    from pipeline.config import RunConfig
    from pipeline.workflows.training import resumed_config, train

    given = given_options(args)
    train(resumed_config(given) if given.get("resume") else RunConfig.from_dict(given))
    return 0


def run_cv(args: argparse.Namespace) -> int:
    """Run ``lggseg cv``: finished folds are kept, interrupted ones resumed with their own settings."""
    from pipeline.config import RunConfig
    from pipeline.workflows.cross_validation import cross_validate

    given = given_options(args)
    result = cross_validate(RunConfig.from_dict(given), folds=args.folds, given=given)
    dice = [float(r["dice"]) for r in result["records"]]
    print(
        f"{len(dice)} patients, each segmented by the fold model that never saw it: Dice mean "
        f"{sum(dice) / max(1, len(dice)):.4f}; report in {result['paths'].get('json', '')}"
    )
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    """Run ``lggseg evaluate``: print the pooled Dice and where the report is; say (and record in
    ``metrics.json``) how many of the patients the model was trained on."""
    from pipeline.cli.seen_in_training import note_seen_in_training
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
    note_seen_in_training(args.checkpoint, result)
    dice = result["summary"]["overall"]["metrics"]["dice"]
    print(
        f"{len(result['records'])} patients: Dice mean {dice['mean']:.4f} median {dice['median']:.4f} "
        f"std {dice['std']:.4f}; report in {result['paths'].get('json', '')}"
    )
    return 0


def run_infer(args: argparse.Namespace) -> int:
    """Run ``lggseg infer``: print how many predictions were written.

    Raises:
        FileNotFoundError: a file of ``--flair``, ``--t1`` or ``--t1c`` does not exist: said in one line
            before anything is read or written (exit code 2; a missing ``--input`` is found by
            :func:`pipeline.ingestion.cases.find_cases`, also before any case runs).
    """
    for flag in ("flair", "t1", "t1c"):
        path = getattr(args, flag)
        if path is not None and not Path(path).exists():
            raise FileNotFoundError(f"{path}: not found (--{flag}); give an existing file or folder")
    from pipeline.workflows.prediction import infer

    inputs: list = list(args.input)
    if args.flair is not None:
        from pipeline.ingestion.cases import case_name
        from pipeline.ingestion.scan_cases import make_scan_case

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


def _train_options(parser: argparse.ArgumentParser) -> None:
    add_config_options(parser, skip=("members",))


def _cv_options(parser: argparse.ArgumentParser) -> None:
    add_config_options(parser, skip=("fold", "resume", "val_fold", "members"))
    parser.add_argument("--folds", type=int, nargs="+", help="folds to run (default: all in the datalist)")


def _evaluate_options(parser: argparse.ArgumentParser) -> None:
    _postprocessing_options(parser)
    parser.add_argument("--data", type=Path, help="prepared data folder or datalist (default: the run's)")
    parser.add_argument(
        "--folds", type=int, nargs="+", help="folds to evaluate (default: the run's test fold)"
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="report folder (default: <run>/evaluation for a model in a run's checkpoints folder; "
        "required for any other model file, e.g. the shipped one)",
    )
    parser.add_argument("--save-predictions", action="store_true", help="also write predicted NIfTI volumes")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the report of an earlier evaluation in --output (files lggseg did not write are kept)",
    )


def _infer_options(parser: argparse.ArgumentParser) -> None:
    _postprocessing_options(parser)
    parser.add_argument(
        "--input",
        nargs="+",
        default=[],
        help="what to segment: scan case folders (FLAIR [+ T1, T1c] as NIfTI files or DICOM series) or "
        "folders of them, FLAIR NIfTI files, prepared folders, datalists, Kaggle patient folders",
    )
    parser.add_argument(
        "--flair", type=Path, help="one case named explicitly: its FLAIR (NIfTI file or DICOM folder)"
    )
    parser.add_argument(
        "--t1", type=Path, help="with --flair: its pre-contrast T1 (default: the FLAIR stands in)"
    )
    parser.add_argument(
        "--t1c", type=Path, help="with --flair: its post-contrast T1 (default: the FLAIR stands in)"
    )
    parser.add_argument("--case", help="with --flair: the case name (default: the FLAIR's name)")
    parser.add_argument("--output", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--kaggle-masks", action="store_true", help="also write <patient>_<k>_mask.tif per slice"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace existing predictions of these cases"
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train``, ``evaluate``, ``infer`` and ``cv`` (their options are described when one is used)."""
    add_command(
        subparsers,
        "train",
        run_train,
        interrupted="the epoch checkpoints saved so far are kept; continue with --resume",
        options=_train_options,
        help="train a network on one fold (Ignite SupervisedTrainer)",
        description="Train on every fold but --fold and --val-fold; validate per patient "
        "in 3D on --val-fold; checkpoints, TensorBoard and config in OUTPUT/NAME/fold<k>. --resume continues "
        "the run with its own settings (OUTPUT/NAME/fold<k>/config.json): an option given that differs is "
        "refused (exit code 2), except --device, --num-workers and --progress; a finished run is said to be "
        "finished in one line and trains nothing (exit code 0, its files unchanged).",
    )
    add_command(
        subparsers,
        "cv",
        run_cv,
        interrupted="the finished folds are kept; run the same command again: finished folds are skipped, "
        "the interrupted one continues from its last checkpoint",
        options=_cv_options,
        help="train and evaluate every fold, then pool the per-patient report",
        description="Cross-validation: each fold in turn is the test fold; finished "
        "folds are skipped, interrupted ones resumed with their own settings (an option given that differs "
        "from a fold's is refused). Report in OUTPUT/NAME/cv.",
    )
    add_command(
        subparsers,
        "evaluate",
        run_evaluate,
        interrupted="the report folder is unchanged (report and predictions are written into a staging "
        "folder beside it and moved in when complete; the next run removes the staging folder); run again",
        options=_evaluate_options,
        help="per-patient 3D evaluation of a checkpoint (CSV, JSON, plots)",
        description="Evaluate whole volumes per patient: Dice, IoU, HD95, ASSD, "
        "sensitivity, precision, volume differences, lesion counts, slice-level figures. Patients the model "
        "was trained on are counted in one log line and in metrics.json (seen_in_training).",
    )
    add_command(
        subparsers,
        "infer",
        run_infer,
        interrupted=PREDICTIONS_LEFT.format(where="{output}")
        + "; run again with --overwrite, or on the cases still missing",
        options=_infer_options,
        help="predict tumour masks as NIfTI (and Kaggle-layout TIFF masks)",
        description="Inputs: a user's scans (case folders of FLAIR [+ T1, T1c] NIfTI files or DICOM "
        "series, or --flair FILE), prepared folders or datalists, NIfTI images, raw Kaggle patient folders "
        "or folders of them. Writes OUTPUT/<case>/<case>_seg.nii.gz on the input's own grid, <case>_qc.png, "
        "<case>_seg.dcm (DICOM input) and OUTPUT/summary.csv.",
    )
