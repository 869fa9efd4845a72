"""The project's errors: one base class, :class:`LGGSegError`, and the kind of each error (the lowest layer:
imports nothing of the project).

Every exception the project raises on purpose derives from :class:`LGGSegError` and says what kind of
problem it is (:class:`ErrorKind`, as MONAI Label's ``MONAILabelException`` carries a ``MONAILabelError``
code); the kind decides the exit code of ``lggseg`` (:func:`exit_code`, applied by
:mod:`pipeline.cli.errors`) and of the bundle's checks (:func:`exit_on_bad_input`). Classes that code or
tests catch as a builtin keep that builtin as a second base (``ValueError``, ``RuntimeError``,
``OSError``, ``PermissionError``).

=====================================  ===============  ================================================
class                                  kind             exit code
=====================================  ===============  ================================================
``LGGDataError`` (no ``failures``)     BAD_INPUT        2
``LGGDataError`` (with ``failures``)   CASES_FAILED     1
``CaseError``                          BAD_INPUT        2
``DicomSegSkipped``                    BAD_INPUT        2 (a warning: the case is kept without its SEG)
``UnsafeOutputError``                  UNSAFE_OUTPUT    2
``ModelFileError``                     MODEL_UNUSABLE   2
``CasesFailed``                        CASES_FAILED     1
``NoSpaceLeftError``                   DISK_FULL        1
``OutsideStudiesError`` (the app)      FORBIDDEN        2 (the app answers 403)
=====================================  ===============  ================================================

Besides the project's own errors, the builtins of bad usage or input (:data:`BAD_INPUT_BUILTINS`: a
``ValueError`` of an option check, a missing file) are bad input too (exit code 2); anything else is
unexpected (exit code 1, one line naming the exception type).
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = [
    "BAD_INPUT_BUILTINS",
    "EXIT_BAD_INPUT",
    "EXIT_FAILED",
    "ErrorKind",
    "LGGSegError",
    "error_message",
    "exit_code",
    "exit_on_bad_input",
    "one_line",
    "say",
]

EXIT_FAILED, EXIT_BAD_INPUT = 1, 2

T = TypeVar("T")


class ErrorKind(enum.Enum):
    """What kind of problem an :class:`LGGSegError` is, and the exit code it gives.

    Attributes:
        description: the kind in words.
        exit_code: ``lggseg``'s exit code for it (2: bad usage or input, nothing done; 1: the work failed in
            part or at the end).
    """

    BAD_INPUT = ("bad usage or input, found before any work", EXIT_BAD_INPUT)
    UNSAFE_OUTPUT = ("an output location or operation that could lose data", EXIT_BAD_INPUT)
    MODEL_UNUSABLE = ("a model file that cannot be used", EXIT_BAD_INPUT)
    FORBIDDEN = ("a file that leads outside the folder it must stay in", EXIT_BAD_INPUT)
    CASES_FAILED = ("some cases failed while the others were processed", EXIT_FAILED)
    DISK_FULL = ("the disk is full", EXIT_FAILED)

    def __init__(self, description: str, code: int) -> None:
        self.description = description
        self.exit_code = code


class LGGSegError(Exception):
    """The base class of the project's errors; the message is one line naming the file or option concerned
    (several problems: one per line).

    Subclasses set :attr:`kind` (default :attr:`ErrorKind.BAD_INPUT`); an instance may decide it from its
    content (``LGGDataError`` with ``failures`` is :attr:`ErrorKind.CASES_FAILED`).
    """

    kind: ErrorKind = ErrorKind.BAD_INPUT

    @property
    def exit_code(self) -> int:
        """The exit code of :attr:`kind`."""
        return self.kind.exit_code


BAD_INPUT_BUILTINS: tuple[type[Exception], ...] = (
    ValueError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
)
"""The builtin exceptions that mean bad usage or bad input (exit code 2): an option check's
``ValueError``, a ``--config`` that is not JSON, a path given that is missing or of the wrong kind."""


def exit_code(error: BaseException) -> int | None:
    """The exit code an error gives: its kind's for the project's errors, 2 for the builtins of bad input
    (:data:`BAD_INPUT_BUILTINS`), ``None`` for anything else (unexpected).

    Args:
        error: the exception.

    Returns:
        1, 2 or ``None``.
    """
    if isinstance(error, LGGSegError):
        return error.exit_code
    if isinstance(error, BAD_INPUT_BUILTINS):
        return EXIT_BAD_INPUT
    return None


def one_line(message: str) -> str:
    """``message`` on one line: its non-empty lines, stripped, joined with ``"; "``."""
    return "; ".join(part.strip() for part in str(message).splitlines() if part.strip())


def error_message(error: BaseException) -> str:
    """An error's message on one line; a data error's problems joined (each names its file or folder)."""
    problems = getattr(error, "problems", None)
    if isinstance(error, LGGSegError) and isinstance(problems, list):
        patient = getattr(error, "patient", None)
        return (f"patient {patient}: " if patient else "") + "; ".join(map(str, problems))
    return one_line(str(error))


def say(message: str) -> None:
    """Print ``lggseg: error: <message>`` on stderr, on one line (see :func:`one_line`)."""
    print(f"lggseg: error: {one_line(message)}", file=sys.stderr)


def exit_on_bad_input(check: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``check(*args, **kwargs)``; on bad input (exit code 2, :func:`exit_code`) say its one line and
    exit with 2.

    For callers without a parsed command: ``python -m monai.bundle run`` prints the traceback of any
    ``Exception`` raised in a config expression, but lets ``SystemExit`` end the process quietly.

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
    except Exception as error:
        if exit_code(error) != EXIT_BAD_INPUT:
            raise
        say(error_message(error))
        raise SystemExit(EXIT_BAD_INPUT) from None
