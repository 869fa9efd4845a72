"""``lggseg cv``: train and evaluate every fold, then pool the per-patient report
(:func:`pipeline.workflows.cross_validation.cross_validate`; options: :mod:`pipeline.cli.run_options`)."""

from __future__ import annotations

import argparse

from pipeline.cli.parsing import add_command
from pipeline.cli.run_options import add_config_options, given_options, print_pooled_dice


def run_cv(args: argparse.Namespace) -> int:
    """Run ``lggseg cv``: finished folds are kept, interrupted ones resumed with their own settings."""
    from pipeline.config import RunConfig
    from pipeline.workflows.cross_validation import cross_validate

    given = given_options(args)
    result = cross_validate(RunConfig.from_dict(given), folds=args.folds, given=given)
    report = result["paths"].get("json", "")
    return print_pooled_dice(result, report, after=", each segmented by the fold model that never saw it")


def _cv_options(parser: argparse.ArgumentParser) -> None:
    add_config_options(parser, skip=("fold", "resume", "val_fold", "members"))
    parser.add_argument("--folds", type=int, nargs="+", help="folds to run (default: all in the datalist)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``cv`` (its options are described when it is used)."""
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
