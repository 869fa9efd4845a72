"""``lggseg evaluate``: per-patient 3D evaluation of a model file
(:func:`pipeline.workflows.prediction.evaluate`; options: :mod:`pipeline.cli.run_options`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.cli.parsing import add_command
from pipeline.cli.run_options import postprocessing_options, postprocessing_overrides


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
        overrides=postprocessing_overrides(args),
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


def _evaluate_options(parser: argparse.ArgumentParser) -> None:
    postprocessing_options(parser)
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


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``evaluate`` (its options are described when it is used)."""
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
