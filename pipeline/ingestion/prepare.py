"""``lggseg prepare``: a Kaggle ``kaggle_3m`` folder -> per-patient NIfTI volumes, datalist and folds, written
safely (checked, staged, claimed, moved; see :mod:`pipeline.safety`), one process per patient.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.ingestion.datalist import (
    CLINICAL_TABLE_FILENAME,
    DATALIST_FILENAME,
    PATIENTS_TABLE_FILENAME,
    make_folds,
    read_clinical_table,
    write_datalist,
    write_patients_table,
)
from pipeline.ingestion.errors import LGGDataError
from pipeline.ingestion.kaggle import (
    case_id_of,
    check_spacing,
    discover_patients,
    read_patient_folder,
)
from pipeline.ingestion.nifti import IMAGE_FILENAME, LABEL_FILENAME, write_patient_nifti
from pipeline.ingestion.sequences import CHANNEL_NAMES, FLAIR_CHANNEL, OTHER_CHANNELS
from pipeline.ingestion.volume_checks import check_regular_file
from pipeline.safety import (
    NoSpaceLeftError,
    OutputTransaction,
    atomic_write_json,
    no_space_left,
    process_alive,
)

logger = logging.getLogger(__name__)


@dataclass
class PrepareResult:
    """What :func:`prepare_dataset` wrote.

    Args:
        output_dir: the output folder.
        patients: per-patient summary rows (also in ``patients.csv``).
        problems: the patients skipped with ``skip_invalid`` and why.
    """

    output_dir: Path
    patients: list[dict[str, object]]
    problems: dict[str, str]


def _missing_sequences(image: np.ndarray) -> str:
    """Channels that duplicate FLAIR (the data set's stand-in for a missing sequence)."""
    missing = [CHANNEL_NAMES[c] for c in OTHER_CHANNELS if np.array_equal(image[c], image[FLAIR_CHANNEL])]
    return ";".join(missing)


def _prepare_one(folder: Path, staging: Path, spacing: tuple[float, float, float]) -> dict[str, object]:
    volume = read_patient_folder(folder, spacing)
    write_patient_nifti(volume, staging / volume.patient_id)
    height, width, depth = volume.label.shape[1:]
    return {
        "patient": volume.patient_id,
        "institution": volume.institution,
        "num_slices": depth,
        "height": height,
        "width": width,
        "tumour_slices": int(volume.label[0].any(axis=(0, 1)).sum()),
        "tumour_voxels": int(volume.label.sum()),
        "tumour_volume_mm3": float(volume.label.sum() * np.prod(spacing)),
        "missing_sequences": _missing_sequences(volume.image),
    }


PROBLEMS_FILENAME = "problems.json"


def _check_options(
    num_folds: int, spacing: Sequence[float], workers: int | None
) -> tuple[float, float, float]:
    """Validate ``prepare``'s options before any work; returns the spacing as floats."""
    values = check_spacing(spacing)
    if isinstance(num_folds, bool) or not isinstance(num_folds, int) or num_folds < 2:
        raise LGGDataError(f"--folds {num_folds}: at least 2 folds are needed; e.g. --folds 5")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise LGGDataError(f"--workers {workers}: expected a positive number of processes; e.g. --workers 2")
    return values  # type: ignore[return-value]


def _planned_files(folders: Sequence[Path]) -> list[str]:
    """Every file ``prepare`` may write into the output, relative (posix), volumes first, datalist last."""
    names = [f"{f.name}/{name}" for f in folders for name in (IMAGE_FILENAME, LABEL_FILENAME)]
    return [*names, PATIENTS_TABLE_FILENAME, PROBLEMS_FILENAME, DATALIST_FILENAME]


def prepare_dataset(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    num_folds: int = 5,
    seed: int = 0,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    overwrite: bool = False,
    skip_invalid: bool = False,
    workers: int | None = None,
    progress: Callable[[Iterable, int], Iterable] | None = None,
) -> PrepareResult:
    """Convert a Kaggle ``kaggle_3m`` folder into per-patient NIfTI volumes, a datalist and folds.

    Options, paths and the output folder are checked before any conversion. Everything is written into a
    staging folder beside ``output_dir`` (see :func:`pipeline.safety.staging_folder`) and moved into place
    only when every patient succeeded, so a failed or interrupted run leaves ``output_dir`` as it was.
    The files written are listed in ``output_dir/.lggseg-manifest.json``; no file that is not listed there
    is ever replaced or removed (see :mod:`pipeline.safety`).

    Args:
        input_dir: the ``kaggle_3m`` folder (patient sub-folders, optional ``data.csv``).
        output_dir: where to write; outside ``input_dir``; empty or new unless ``overwrite``.
        num_folds: number of patient-level folds, stratified by institution (2 to the number of patients).
        seed: seed of the fold assignment.
        spacing: voxel size in mm (row, column, slice).
        overwrite: replace the results of an earlier run in ``output_dir`` and write into a folder that
            holds other files; files lggseg did not write are kept, and a name clash with one is refused.
        skip_invalid: write the valid patients and list the invalid ones in ``problems`` instead of failing.
        workers: parallel processes (default: the number of CPUs); they die with this process.
        progress: optional ``(iterable, total) -> iterable`` wrapper that shows progress (e.g. ``tqdm``).

    Returns:
        the :class:`PrepareResult`.

    Raises:
        LGGDataError: bad options, the input is missing or empty, a bad ``data.csv``, the output holds
            results (or foreign files) and ``overwrite`` is off, or (without ``skip_invalid``) a patient is
            invalid: then ``failures`` lists every problem of every patient.
        UnsafeOutputError: the output equals, contains or is inside the input, is a file, or is not writable.
        OSError: writing failed (disk full, ...); nothing is left half-written.
    """
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    spacing = _check_options(num_folds, spacing, workers)
    folders = discover_patients(input_dir, include_empty=True)
    clinical_path = input_dir / CLINICAL_TABLE_FILENAME
    planned = _planned_files(folders)
    transaction = OutputTransaction(
        output_dir, "prepare", overwrite, inputs=[input_dir, *folders, clinical_path], error=LGGDataError
    )
    transaction.check(planned)
    if num_folds > len(folders):
        raise LGGDataError(
            f"--folds {num_folds}: more folds than the {len(folders)} patients in {input_dir}; "
            f"choose --folds {min(5, len(folders))} or fewer"
            if len(folders) >= 2
            else f"{input_dir}: {len(folders)} patient is too few for folds; at least 2 are needed"
        )
    if clinical_path.exists():
        clinical = read_clinical_table(check_regular_file(clinical_path, "clinical table"))
    else:
        clinical = {}

    with transaction.staging() as staging:
        rows, problems = _prepare_patients(folders, staging, spacing, workers, progress)
        full = [m for m in problems.values() if m.startswith(_NO_SPACE)]
        if full:  # one line for the run, no patient blamed; the staging folder goes with the error
            raise NoSpaceLeftError(full[0][len(_NO_SPACE) :] or staging)
        if problems and not skip_invalid:
            raise LGGDataError(
                [f"patient {p}: {m}" for p, m in sorted(problems.items())],
                failures=problems,
            )
        if len(rows) < num_folds:
            raise LGGDataError(
                f"{input_dir}: {len(rows)} valid patients are too few for {num_folds} folds; "
                "fix the invalid patients or pass a smaller --folds",
                failures=problems,
            )
        folds = make_folds([r["patient"] for r in rows], num_folds, seed)
        for row in rows:
            row["fold"] = folds[row["patient"]]
            row.update({f"clinical_{k}": v for k, v in clinical.get(case_id_of(row["patient"]), {}).items()})
        rows.sort(key=lambda r: r["patient"])
        write_datalist(staging / DATALIST_FILENAME, rows, num_folds, seed, spacing)
        write_patients_table(staging / PATIENTS_TABLE_FILENAME, rows)
        if problems:
            atomic_write_json(staging / PROBLEMS_FILENAME, problems)
        written = [rel for rel in planned if (staging / rel).is_file()]
        transaction.commit(staging, written)
    return PrepareResult(output_dir=output_dir, patients=rows, problems=problems)


def _prepare_patients(
    folders: Sequence[Path],
    staging: Path,
    spacing: tuple[float, float, float],
    workers: int | None,
    progress: Callable[[Iterable, int], Iterable] | None,
) -> tuple[list[dict[str, object]], dict[str, str]]:
    rows: list[dict[str, object]] = []
    problems: dict[str, str] = {}
    workers = max(1, min(workers or os.cpu_count() or 1, len(folders)))
    wrap = progress or (lambda iterable, total: iterable)
    if workers == 1:
        outcomes = ((folder, _call(_prepare_one, folder, staging, spacing)) for folder in folders)
        for folder, (row, error) in wrap(outcomes, len(folders)):
            _collect(folder, row, error, rows, problems)
        return rows, problems
    pool = ProcessPoolExecutor(max_workers=workers, initializer=_worker_init, initargs=(os.getpid(),))
    try:
        futures = {pool.submit(_call, _prepare_one, folder, staging, spacing): folder for folder in folders}
        for future in wrap(as_completed(futures), len(folders)):
            row, error = future.result()
            _collect(futures[future], row, error, rows, problems)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return rows, problems


def _worker_init(parent_pid: int) -> None:
    """Make a worker process die with its parent, even when the parent is killed with ``kill -9``.

    On Linux the kernel sends the worker ``SIGKILL`` when its parent dies (``prctl(PR_SET_PDEATHSIG)``);
    everywhere, a daemon thread also checks every half second that the parent is still there. ``Ctrl-C``
    is left to the parent, which cancels the pending patients and removes the staging folder.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux") and os.getppid() == parent_pid:
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent_pid and not process_alive(parent_pid):  # the parent died before prctl
        os._exit(1)

    def watch() -> None:
        while process_alive(parent_pid):
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="lggseg-parent-watch", daemon=True).start()


_NO_SPACE = "no space left: "  # a worker's answer for a full disk (its exception may not pickle)


def _call(function: Callable, *args: object) -> tuple[object, str | None]:
    """Run ``function`` and return ``(result, None)`` or ``(None, message)`` for data errors."""
    try:
        return function(*args), None
    except LGGDataError as error:
        return None, "\n  ".join(error.problems) if len(error.problems) > 1 else error.problems[0]
    except OSError as error:
        if no_space_left(error, error.filename or ".") is not None:  # the disk's fault, not the patient's
            return None, f"{_NO_SPACE}{error.filename or ''}"
        return None, f"cannot write output: {error}"


def _collect(folder: Path, row, error, rows: list, problems: dict) -> None:
    if error is None:
        rows.append(row)
    else:
        problems[folder.name] = error
        logger.error("patient %s: %s", folder.name, error)
