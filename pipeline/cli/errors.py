"""The one error rule of every ``lggseg`` command, applied by :func:`run_command` around each command.

Errors are one line on stderr, ``lggseg: error: <file or folder>: <problem>; <what to do>``:

- exit code 2, bad usage or bad input, found before the work (nothing written): ``ValueError`` and its
  subclasses (:class:`~pipeline.ingestion.errors.LGGDataError` without ``failures``,
  :class:`~pipeline.safety.UnsafeOutputError`, :class:`~pipeline.ingestion.cases.CaseError`, the
  option checks of :class:`~pipeline.config.RunConfig`, a ``--config`` that is not JSON), and a path given
  that is missing or of the wrong kind (``FileNotFoundError``, e.g. a missing checkpoint or nothing to
  ``--resume`` from; ``FileExistsError``, ``NotADirectoryError``, ``IsADirectoryError``): :data:`BAD_INPUT`.
- exit code 1, some cases failed and the others were processed: :class:`~pipeline.engines.CasesFailed`
  (one line naming them and ``failures.json``) and ``LGGDataError`` with ``failures`` (one line per
  failed case, worded by the command's ``failure_line``); a command returns 1 the same way through
  :func:`report_failures` when it skipped cases on purpose.
- exit code 1, a full disk (:class:`~pipeline.safety.NoSpaceLeftError`): its one line, naming the file system.
- exit code 1, anything else (a bug, out of memory): one line naming the exception type.
- ``--debug``: none of the above; the exception propagates with its full traceback.
- Ctrl-C (``KeyboardInterrupt``): exit code 130 and one line ``lggseg: <command> interrupted; <what is
  left>``, the command's own words given when it registered (:func:`pipeline.cli.parsing.add_command`).

``argparse``'s own usage errors (unknown option, bad choice) keep argparse's message and exit code 2.

Callers without a parsed command (the bundle's ``inference.json``, see :mod:`pipeline.cli.bundle_checks`)
apply the bad-input part of the rule with :func:`exit_on_bad_input`: one line, then ``SystemExit(2)``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from pipeline.safety import NoSpaceLeftError

BAD_INPUT: tuple[type[Exception], ...] = (
    ValueError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
)
"""The exception classes that mean bad usage or bad input (exit code 2)."""

EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 1, 2, 130

FailureLine = Callable[[argparse.Namespace, str, str], str]
"""``(args, case, problem) -> line``: how a command words one failed case."""

T = TypeVar("T")


def one_line(message: str) -> str:
    """``message`` on one line: its non-empty lines, stripped, joined with ``"; "``."""
    return "; ".join(part.strip() for part in str(message).splitlines() if part.strip())


def say(message: str) -> None:
    """Print ``lggseg: error: <message>`` on stderr, on one line (see :func:`one_line`)."""
    print(f"lggseg: error: {one_line(message)}", file=sys.stderr)


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


def _is_error(error: BaseException, module: str, name: str) -> bool:
    """``isinstance(error, module.name)`` without importing ``module`` (PyTorch and MONAI for
    :class:`~pipeline.engines.CasesFailed`): no error can be of a class whose module was never imported."""
    loaded = sys.modules.get(module)
    return loaded is not None and isinstance(error, getattr(loaded, name))


def _is_data_error(error: BaseException) -> bool:
    return _is_error(error, "pipeline.ingestion.errors", "LGGDataError")


def _message(error: BaseException) -> str:
    if _is_data_error(error):  # every problem names its file or folder
        return (f"patient {error.patient}: " if error.patient else "") + "; ".join(error.problems)
    return one_line(str(error))


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


def exit_on_bad_input(check: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``check(*args, **kwargs)``; on bad input (:data:`BAD_INPUT`) say its one line and exit with 2.

    For callers that :func:`run_command` does not wrap: ``python -m monai.bundle run`` prints the traceback
    of any ``Exception`` raised in a config expression, but lets ``SystemExit`` end the process quietly.

    Args:
        check: the check (the one ``lggseg`` runs for the same input).
        args: its positional arguments.
        kwargs: its keyword arguments.

    Returns:
        what ``check`` returns.

    Raises:
        SystemExit: code 2, after the line ``lggseg: error: <message>`` on stderr. Any other error of
            ``check`` propagates as it is.
    """
    try:
        return check(*args, **kwargs)
    except BAD_INPUT as error:
        say(_message(error))
        raise SystemExit(EXIT_BAD_INPUT) from None


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
        if _is_data_error(error) and error.failures:
            return _report_data_failures(args, error)
        cases_failed = _is_error(error, "pipeline.engines", "CasesFailed")
        if cases_failed or isinstance(error, NoSpaceLeftError):  # their messages say it all
            say(_message(error))
            return EXIT_FAILED
        if isinstance(error, BAD_INPUT):
            say(_message(error))
            return EXIT_BAD_INPUT
        say(f"{type(error).__name__}: {_message(error)}; run again with --debug for the traceback")
        return EXIT_FAILED
