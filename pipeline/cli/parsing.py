"""The parser pieces every ``lggseg`` command shares: ``--debug`` (defined once), the registration of a
sub-command with its Ctrl-C message (:func:`add_command`), and options that several commands take alike.

A sub-command's options that need heavy modules to be described (the training options come from
:class:`pipeline.config.RunConfig`, which imports PyTorch and MONAI) are added when that sub-command is
parsed or its help is shown (:class:`CommandParser`), so ``lggseg --help`` and the light commands never pay
for them.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from pipeline.cli.errors import FailureLine

DEBUG_HELP = "show the full traceback of errors instead of a one-line message"


class CommandParser(argparse.ArgumentParser):
    """A sub-command's parser that adds some of its options only when it is first used: parsed, or its usage
    or help formatted (``add_options_later``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._later: list[Callable[[argparse.ArgumentParser], None]] = []

    def add_options_later(self, add: Callable[[argparse.ArgumentParser], None]) -> None:
        """Call ``add(self)`` before this parser is first used.

        Args:
            add: adds options to the parser it is given.
        """
        self._later.append(add)

    def _complete(self) -> None:
        while self._later:
            self._later.pop(0)(self)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        """``argparse``'s, with every option added first."""
        self._complete()
        return super().parse_known_args(args, namespace)

    def format_usage(self) -> str:
        """``argparse``'s, with every option added first."""
        self._complete()
        return super().format_usage()

    def format_help(self) -> str:
        """``argparse``'s, with every option added first."""
        self._complete()
        return super().format_help()


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
    options: Callable[[argparse.ArgumentParser], None] | None = None,
    **kwargs: Any,
) -> argparse.ArgumentParser:
    """Add the sub-command ``name``, with ``--debug``, run by :func:`pipeline.cli.errors.run_command`.

    Args:
        subparsers: ``lggseg``'s sub-parsers.
        name: the command name.
        run: ``run(args)``, returning the exit code (``None``: 0) or raising (see :mod:`pipeline.cli.errors`).
        interrupted: what Ctrl-C leaves behind and how to go on, formatted with the options (``{output}``).
        failure_line: ``(args, case, problem) -> line`` for a failed case (default ``<case>: <problem>``).
        options: ``options(parser)`` adds the options whose description needs heavy imports; it is called
            only when this command is parsed or its help shown (``subparsers`` of :class:`CommandParser`).
        kwargs: ``help``, ``description`` and other arguments of ``add_parser``.

    Returns:
        the sub-command's parser, for its own options.
    """
    parser = subparsers.add_parser(name, parents=[common_options()], **kwargs)
    parser.set_defaults(func=run, interrupted=interrupted, failure_line=failure_line)
    if options is not None:
        if isinstance(parser, CommandParser):
            parser.add_options_later(options)
        else:  # sub-parsers of another class: the options now
            options(parser)
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
