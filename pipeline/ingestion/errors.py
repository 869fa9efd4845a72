"""The ingestion errors: a problem with the input data, naming the patient and the file(s) concerned
(:class:`LGGDataError`), and a path that names no case (:class:`CaseError`); both are
:class:`pipeline.errors.LGGSegError` (and ``ValueError``)."""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.errors import ErrorKind, LGGSegError


class LGGDataError(LGGSegError, ValueError):
    """A problem with the input data, naming the patient and the file(s) concerned: bad input
    (:attr:`ErrorKind.BAD_INPUT`), or with ``failures`` the cases of a run that failed
    (:attr:`ErrorKind.CASES_FAILED`).

    Args:
        problems: one human-readable message per problem, each naming the file or folder.
        patient: the patient folder name, when the problems belong to one patient.
        failures: for a run where some patients failed, ``{patient: problems}`` (the CLI exits with 1);
            otherwise empty (bad usage or input as a whole: the CLI exits with 2).
    """

    def __init__(
        self,
        problems: str | Sequence[str],
        patient: str | None = None,
        failures: dict[str, str] | None = None,
    ) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.patient = patient
        self.failures = dict(failures or {})
        prefix = f"patient {patient}: " if patient else ""
        if len(self.problems) == 1:
            message = prefix + self.problems[0]
        else:
            message = prefix + f"{len(self.problems)} problems:\n  - " + "\n  - ".join(self.problems)
        super().__init__(message)

    @property
    def kind(self) -> ErrorKind:  # type: ignore[override]
        """:attr:`ErrorKind.CASES_FAILED` with ``failures``, else :attr:`ErrorKind.BAD_INPUT`."""
        return ErrorKind.CASES_FAILED if self.failures else ErrorKind.BAD_INPUT


class CaseError(LGGSegError, ValueError):
    """A path that names no case, or two cases with the same name (one line, naming the paths)."""

    kind = ErrorKind.BAD_INPUT
