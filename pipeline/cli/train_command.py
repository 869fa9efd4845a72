"""``lggseg train``: train a network on one fold (:func:`pipeline.workflows.training.train`); with
``--resume``, the run's own settings (options: :mod:`pipeline.cli.run_options`)."""

from __future__ import annotations

import argparse

from pipeline.cli.parsing import add_command
from pipeline.cli.run_options import add_config_options, given_options


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


def _train_options(parser: argparse.ArgumentParser) -> None:
    add_config_options(parser, skip=("members",))


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train`` (its options are described when it is used)."""
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
