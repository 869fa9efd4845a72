"""The ingestion error: a problem with the input data, naming the patient and the file(s) concerned."""

from __future__ import annotations

from collections.abc import Sequence


class LGGDataError(ValueError):
    """A problem with the input data, naming the patient and the file(s) concerned.

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


class CaseError(ValueError):
    """A path that names no case, or two cases with the same name (one line, naming the paths)."""
