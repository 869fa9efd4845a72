"""The parser pieces every ``lggseg`` command shares: ``--debug`` (defined once), the registration of a
sub-command with its Ctrl-C message (:func:`add_command`), and options that several commands take alike.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from pipeline.cli.errors import FailureLine

DEBUG_HELP = "show the full traceback of errors instead of a one-line message"


def common_options() -> argparse.ArgumentParser:
    """The options of ``lggseg`` itself and of every sub-command (``--debug``), as an argparse parent.

    ``--debug`` is valid before and after the command (``lggseg --debug CMD``, ``lggseg CMD --debug``); its
    default is ``argparse.SUPPRESS``, so a sub-command never resets what the top level set.

    Returns:
        a parser without ``--help``, for ``parents=[...]``.
    """
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    return parser


def add_command(
    subparsers: argparse._SubParsersAction,
    name: str,
    run: Callable[[argparse.Namespace], int | None],
    *,
    interrupted: str,
    failure_line: FailureLine | None = None,
    **kwargs: Any,
) -> argparse.ArgumentParser:
    """Add the sub-command ``name``, with ``--debug``, run by :func:`pipeline.cli.errors.run_command`.

    Args:
        subparsers: ``lggseg``'s sub-parsers.
        name: the command name.
        run: ``run(args)``, returning the exit code (``None``: 0) or raising (see :mod:`pipeline.cli.errors`).
        interrupted: what Ctrl-C leaves behind and how to go on, formatted with the options (``{output}``).
        failure_line: ``(args, case, problem) -> line`` for a failed case (default ``<case>: <problem>``).
        kwargs: ``help``, ``description`` and other arguments of ``add_parser``.

    Returns:
        the sub-command's parser, for its own options.
    """
    parser = subparsers.add_parser(name, parents=[common_options()], **kwargs)
    parser.set_defaults(func=run, interrupted=interrupted, failure_line=failure_line)
    return parser


def add_spacing_option(parser: argparse.ArgumentParser, what: str = "voxel size in mm") -> None:
    """``--spacing ROW COL SLICE`` (default 1 1 1): the Kaggle TIFFs do not store the voxel size."""
    parser.add_argument(
        "--spacing",
        type=float,
        nargs=3,
        default=(1.0, 1.0, 1.0),
        metavar=("ROW", "COL", "SLICE"),
        help=f"{what} (default 1 1 1; the TIFFs do not store it)",
    )
