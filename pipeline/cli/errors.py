"""The one error rule of every ``lggseg`` command, applied by :func:`run_command` around each command.

Errors are one line on stderr, ``lggseg: error: <file or folder>: <problem>; <what to do>``; the exit code
is the error's kind (:class:`pipeline.errors.ErrorKind`, every project error is a
:class:`pipeline.errors.LGGSegError`):

- exit code 2, bad usage or bad input, found before the work (nothing written): the kinds ``BAD_INPUT``
  (:class:`~pipeline.ingestion.errors.LGGDataError` without ``failures``,
  :class:`~pipeline.ingestion.cases.CaseError`), ``UNSAFE_OUTPUT``
  (:class:`~pipeline.safety.UnsafeOutputError`) and ``MODEL_UNUSABLE``
  (:class:`~pipeline.model_files.ModelFileError`); and the builtins of bad input
  (:data:`BAD_INPUT`: the option checks of :class:`~pipeline.config.RunConfig` and a ``--config`` that is
  not JSON raise ``ValueError``; a path given that is missing or of the wrong kind, e.g. a missing checkpoint
  or nothing to ``--resume`` from, ``FileNotFoundError``, ``FileExistsError``, ``NotADirectoryError``,
  ``IsADirectoryError``).
- exit code 1, some cases failed and the others were processed (``CASES_FAILED``):
  :class:`~pipeline.engines.CasesFailed` (one line naming them and ``failures.json``) and ``LGGDataError``
  with ``failures`` (one line per failed case, worded by the command's ``failure_line``); a command returns
  1 the same way through :func:`report_failures` when it skipped cases on purpose.
- exit code 1, a full disk (``DISK_FULL``, :class:`~pipeline.safety.NoSpaceLeftError`): its one line, naming
  the file system.
- exit code 1, anything else (a bug, out of memory): one line naming the exception type.
- ``--debug``: none of the above; the exception propagates with its full traceback.
- Ctrl-C (``KeyboardInterrupt``): exit code 130 and one line ``lggseg: <command> interrupted; <what is
  left>``, the command's own words given when it registered (:func:`pipeline.cli.parsing.add_command`).

``argparse``'s own usage errors (unknown option, bad choice) keep argparse's message and exit code 2.

Callers without a parsed command (the bundle's configs, see :mod:`pipeline.workflows.bundle_checks`)
apply the bad-input part of the rule with :func:`exit_on_bad_input`: one line, then ``SystemExit(2)``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

# the builtins of bad input (exit code 2) besides the project's errors, under this module's old name
from pipeline.errors import BAD_INPUT_BUILTINS as BAD_INPUT
from pipeline.errors import EXIT_BAD_INPUT, EXIT_FAILED, ErrorKind, LGGSegError
from pipeline.errors import error_message as _message
from pipeline.errors import exit_on_bad_input as exit_on_bad_input  # for callers without a parsed command
from pipeline.errors import one_line as one_line
from pipeline.errors import say as say

EXIT_INTERRUPTED = 130

FailureLine = Callable[[argparse.Namespace, str, str], str]
"""``(args, case, problem) -> line``: how a command words one failed case."""


def report_failures(
    failures: Mapping[str, str], line: Callable[[str, str], str], extra: Sequence[str] = ()
) -> int:
    """Say one line per failed case (sorted by name), then the ``extra`` problems of the run as a whole.

    Args:
        failures: ``{case: problem}``.
        line: ``(case, problem) -> message`` for one case.
        extra: problems that belong to no single case (e.g. too few valid patients left).

    Returns:
        the exit code: 1 when anything failed, else 0.
    """
    for case, problem in sorted(failures.items()):
        say(line(case, problem))
    for problem in extra:
        say(problem)
    return EXIT_FAILED if failures or extra else 0


def default_failure_line(args: argparse.Namespace, case: str, problem: str) -> str:
    """The line of a failed case when the command gives none: ``<case>: <problem>``."""
    return f"{case}: {problem}"


def _report_data_failures(args: argparse.Namespace, error: Any) -> int:
    line: FailureLine = getattr(args, "failure_line", None) or default_failure_line
    extra = [p for p in error.problems if not any(p.startswith(f"patient {c}:") for c in error.failures)]
    return report_failures(error.failures, lambda case, problem: line(args, case, problem), extra)


def _interrupted(args: argparse.Namespace) -> str:
    what = getattr(args, "interrupted", None) or "run it again"
    try:
        return what.format_map(vars(args))
    except (KeyError, IndexError, ValueError):  # a brace that names no option: the words as given
        return what


def run_command(args: argparse.Namespace) -> int:
    """Run the parsed command ``args.func(args)`` under the rule of this module.

    Args:
        args: the parsed arguments; besides the command's options it holds ``func``, ``command``,
            ``interrupted`` (the Ctrl-C message, formatted with the options, e.g. ``{output}``),
            ``failure_line`` (optional) and ``debug`` (when ``--debug`` was given).

    Returns:
        the exit code: the command's own (``None`` counts as 0), or 2, 1 or 130 as above.

    Raises:
        Exception: any error or ``KeyboardInterrupt`` when ``--debug`` was given.
    """
    debug = bool(getattr(args, "debug", False))
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"lggseg: {args.command} interrupted; {_interrupted(args)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        if debug:
            raise
        if isinstance(error, LGGSegError):  # the project's own: its kind says the exit code
            failures = getattr(error, "failures", None)
            if error.kind is ErrorKind.CASES_FAILED and isinstance(failures, Mapping):  # one line a case
                return _report_data_failures(args, error)
            say(_message(error))  # the message says it all
            return error.exit_code
        if isinstance(error, BAD_INPUT):
            say(_message(error))
            return EXIT_BAD_INPUT
        say(f"{type(error).__name__}: {_message(error)}; run again with --debug for the traceback")
        return EXIT_FAILED
