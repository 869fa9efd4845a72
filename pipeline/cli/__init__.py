"""The ``lggseg`` command line: one sub-command per job, each with ``--help``.

Every command module in :data:`COMMAND_MODULES` exposes ``register(subparsers)``, which adds its
sub-commands with :func:`pipeline.cli.parsing.add_command` (the job, and what Ctrl-C leaves behind);
:func:`main` runs the chosen one under the error rule of :mod:`pipeline.cli.errors`, with the libraries'
noise silenced (:mod:`pipeline.cli.quiet`).

A command pays only for its own imports: the command modules import PyTorch, MONAI, matplotlib and the
readers inside the functions that run a command, and options described by heavy modules are added only to
the sub-command being parsed (:class:`pipeline.cli.parsing.CommandParser`), so ``lggseg --help`` starts
no deep-learning library.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from pipeline.cli.errors import run_command
from pipeline.cli.parsing import CommandParser, common_options
from pipeline.cli.quiet import silence_library_noise

COMMAND_MODULES = (
    "pipeline.cli.data_commands",
    "pipeline.cli.demo_command",
    "pipeline.cli.train_command",
    "pipeline.cli.cv_command",
    "pipeline.cli.evaluate_command",
    "pipeline.cli.infer_command",
    "pipeline.cli.model_commands",
    "pipeline.cli.network_commands",
    "pipeline.cli.studies_command",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every registered sub-command.

    Returns:
        the ``argparse`` parser of ``lggseg``.
    """
    parser = argparse.ArgumentParser(
        prog="lggseg",
        description="Volumetric LGG brain-tumour segmentation on MONAI.",
        parents=[common_options()],
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=CommandParser
    )
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lggseg``.

    Args:
        argv: arguments without the program name; ``sys.argv[1:]`` when ``None``.

    Returns:
        the process exit code: 0 on success, 2 for bad usage or input, 1 when cases failed or on an
        unexpected error, 130 on Ctrl-C (see :mod:`pipeline.cli.errors`).
    """
    silence_library_noise()
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return run_command(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
