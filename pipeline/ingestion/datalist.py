"""The prepared data set's tables: decathlon datalist, patient-level folds, the patients table and the
Kaggle clinical table.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import random
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.ingestion.errors import LGGDataError
from pipeline.ingestion.kaggle import LABEL_NAMES, ORIENTATION, institution_of
from pipeline.ingestion.nifti import IMAGE_FILENAME, LABEL_FILENAME
from pipeline.ingestion.sequences import CHANNEL_NAMES
from pipeline.safety import atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

DATALIST_FILENAME = "datalist.json"
PATIENTS_TABLE_FILENAME = "patients.csv"
CLINICAL_TABLE_FILENAME = "data.csv"


def read_clinical_table(path: str | os.PathLike) -> dict[str, dict[str, str]]:
    """Read the Kaggle ``data.csv`` (one row a patient, keyed by ``Patient`` e.g. ``TCGA_CS_4941``).

    The text may be UTF-8 (with or without a byte-order mark) or, failing that, Latin-1 (a warning is
    logged). Cells beyond the header are ignored; missing cells are empty.

    Args:
        path: the CSV file.

    Returns:
        ``{case id: {column: value}}`` with the values as text (empty when unknown).

    Raises:
        LGGDataError: the file cannot be read or parsed, or has no ``Patient`` column.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise LGGDataError(
            f"{path}: cannot read the clinical table ({error.strerror or error}); fix or move it away"
        ) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
        logger.warning("%s: not UTF-8 text, read as Latin-1", path)
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        rows = list(reader)
        header = [name.strip() for name in reader.fieldnames or []]
    except csv.Error as error:
        raise LGGDataError(
            f"{path}: cannot parse the clinical table ({error}); fix or move it away"
        ) from None
    if "Patient" not in header:
        raise LGGDataError(
            f"{path}: no 'Patient' column in the clinical table (columns: {', '.join(header) or 'none'}); "
            "fix its header or move it away"
        )
    table: dict[str, dict[str, str]] = {}
    for row in rows:
        row = {k.strip(): (v or "").strip() for k, v in row.items() if isinstance(k, str)}
        if row.get("Patient"):
            table[row.pop("Patient")] = row
    return table


def make_folds(patients: Sequence[str], num_folds: int = 5, seed: int = 0) -> dict[str, int]:
    """Patient-level folds stratified by institution, reproducible from a seed.

    Patients of each institution are shuffled with the seed and dealt round-robin; the dealing continues
    across institutions, so fold sizes differ by at most one and every institution is spread over the
    folds in proportion.

    Args:
        patients: patient ids (folder names carrying the institution code).
        num_folds: number of folds K (2 <= K <= number of patients).
        seed: random seed.

    Returns:
        ``{patient: fold}`` with folds in ``0..K-1``.
    """
    if not 2 <= num_folds <= len(patients):
        raise ValueError(
            f"num_folds must be between 2 and the number of patients ({len(patients)}), got {num_folds}"
        )
    rng = random.Random(seed)
    by_institution: dict[str, list[str]] = {}
    for patient in sorted(set(patients)):
        by_institution.setdefault(institution_of(patient), []).append(patient)
    folds: dict[str, int] = {}
    position = 0
    for institution in sorted(by_institution):
        members = by_institution[institution]
        rng.shuffle(members)
        for patient in members:
            folds[patient] = position % num_folds
            position += 1
    return folds


def write_datalist(path: Path, rows: list[dict[str, object]], num_folds: int, seed: int, spacing) -> None:
    entries = [
        {
            "image": f"{row['patient']}/{IMAGE_FILENAME}",
            "label": f"{row['patient']}/{LABEL_FILENAME}",
            "patient": row["patient"],
            "institution": row["institution"],
            "fold": row["fold"],
            "num_slices": row["num_slices"],
        }
        for row in rows
    ]
    atomic_write_json(
        path,
        {
            "name": "LGG FLAIR abnormality (kaggle_3m)",
            "description": "Per-patient volumes stacked from the LGG Segmentation Dataset (Buda et al. 2019)",
            "reference": "doi:10.1016/j.compbiomed.2019.05.002",
            "licence": "CC BY-NC-SA 4.0",
            "tensorImageSize": "4D",
            "modality": {str(i): name for i, name in enumerate(CHANNEL_NAMES)},
            "channel_names": {str(i): name for i, name in enumerate(CHANNEL_NAMES)},
            "labels": LABEL_NAMES,
            "spacing_mm": list(spacing),
            "orientation": "".join(ORIENTATION),
            "num_folds": num_folds,
            "seed": seed,
            "clinical_table": PATIENTS_TABLE_FILENAME,
            "numTraining": len(entries),
            "training": entries,
        },
    )


def write_patients_table(path: Path, rows: list[dict[str, object]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, text.getvalue())


ENTRY_KEYS: dict[str, tuple[type, ...]] = {
    "image": (str,),
    "label": (str,),
    "fold": (int,),
    "patient": (str,),
    "institution": (str, type(None)),
    "num_slices": (int,),
}
"""The keys of a datalist entry (as :func:`write_datalist` writes them) and their JSON types."""
REQUIRED_ENTRY_KEYS = ("image", "label", "fold")
_TYPE_WORDS = {str: "text", int: "an integer", type(None): "null"}


def _shown(value: Any) -> str:
    text = json.dumps(value, default=str)
    return (text if len(text) <= 60 else text[:57] + "...") + (" (text)" if isinstance(value, str) else "")


def check_datalist_entries(datalist_path: str | os.PathLike, datalist: Any) -> None:
    """Check the ``training`` entries of a decathlon datalist read from JSON: every entry an object with
    the :data:`REQUIRED_ENTRY_KEYS`, every key of :data:`ENTRY_KEYS` of its type (``fold``: an integer,
    not ``"0"``, ``true`` or 1.5).

    Args:
        datalist_path: the file, named in the error.
        datalist: its parsed JSON.

    Raises:
        LGGDataError: one line naming the file, the entry, the key and the problem.
    """
    if not isinstance(datalist, dict) or "training" not in datalist:
        found = f"keys {', '.join(map(repr, list(datalist)[:6]))}" if isinstance(datalist, dict) else None
        raise LGGDataError(
            f"{datalist_path}: not a decathlon datalist with a 'training' list "
            f"(found {found or 'a JSON ' + type(datalist).__name__})"
        )
    entries = datalist["training"]
    if not isinstance(entries, list):
        raise LGGDataError(
            f"{datalist_path}: 'training' must be a list of entries, got {_shown(entries)}; "
            "fix the datalist or run `lggseg prepare` again"
        )
    needs = ", ".join(f"'{k}'" for k in REQUIRED_ENTRY_KEYS)
    for number, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict):
            raise LGGDataError(
                f"{datalist_path}: entry {number} must be an object with {needs}, got {_shown(entry)}"
            )
        name = f"entry {number}" + (f" ({entry['patient']})" if isinstance(entry.get("patient"), str) else "")
        missing = [k for k in REQUIRED_ENTRY_KEYS if k not in entry]
        if missing:
            raise LGGDataError(
                f"{datalist_path}: {name}: '{missing[0]}' is missing; every entry needs {needs}"
            )
        for key, types in ENTRY_KEYS.items():
            value = entry.get(key)
            if key in entry and (not isinstance(value, types) or isinstance(value, bool)):
                expected = " or ".join(_TYPE_WORDS[t] for t in types)
                raise LGGDataError(
                    f"{datalist_path}: {name}: '{key}' must be {expected}, got {_shown(value)}"
                )


def load_datalist(
    datalist_path: str | os.PathLike,
    folds: Iterable[int] | None = None,
    exclude_folds: Iterable[int] | None = None,
) -> list[dict]:
    """Load a ``datalist.json`` written by :func:`prepare_dataset`, optionally selecting folds.

    It calls ``monai.data.load_decathlon_datalist`` (image and label paths become absolute) and restores the
    ``patient`` ids: MONAI also turns any other string that names an existing path into an absolute path, and
    each patient id is the name of its folder.

    Args:
        datalist_path: the ``datalist.json`` file.
        folds: keep only entries of these folds (default: all).
        exclude_folds: drop entries of these folds (e.g. the validation fold for training).

    Returns:
        the ``training`` entries, each with absolute ``image``/``label`` paths and ``patient``,
        ``institution``, ``fold``, ``num_slices``.

    Raises:
        LGGDataError: missing or unreadable datalist, an entry without ``image``, ``label`` or ``fold`` or
            with a value of another type (:func:`check_datalist_entries`), or an entry naming a file that
            does not exist.
    """
    from monai.data import load_decathlon_datalist

    datalist_path = Path(datalist_path)
    if not datalist_path.is_file():
        raise LGGDataError(f"datalist {datalist_path} does not exist")
    try:
        check_datalist_entries(datalist_path, json.loads(datalist_path.read_text(encoding="utf-8")))
        entries = load_decathlon_datalist(str(datalist_path), True, "training")
    except LGGDataError:
        raise
    except (ValueError, KeyError, OSError) as error:  # JSONDecodeError is a ValueError
        raise LGGDataError(
            f"{datalist_path}: not a decathlon datalist with a 'training' list ({error})"
        ) from None
    keep = None if folds is None else set(folds)
    drop = set(exclude_folds or ())
    selected = []
    for entry in entries:
        if "patient" in entry:
            entry["patient"] = Path(str(entry["patient"])).name
        fold = entry.get("fold")
        if (keep is not None and fold not in keep) or fold in drop:
            continue
        missing = [str(entry[k]) for k in ("image", "label") if k in entry and not Path(entry[k]).exists()]
        if missing:
            raise LGGDataError(
                f"{datalist_path}: entry {entry.get('patient', '?')} names missing files: {missing}"
            )
        selected.append(entry)
    return selected


def split_folds(
    entries: Sequence[Mapping[str, Any]], fold: int, val_fold: int | None = None, train_on_all: bool = False
) -> dict[str, list[dict]]:
    """Patient-level split of datalist entries: ``fold`` is the test fold, ``val_fold`` (default: the next
    fold present) the validation fold, every other fold trains.

    Args:
        entries: entries with a ``fold`` (from :func:`load_datalist`).
        fold: the test fold.
        val_fold: the validation fold (must differ from ``fold``).
        train_on_all: nnU-Net style: the validation fold trains too, and ``"val"`` is the test fold, only
            watched (never used to choose a model; the last one is kept).

    Returns:
        ``{"train": [...], "val": [...], "test": [...], "val_fold": int}``.

    Raises:
        ValueError: ``val_fold == fold``, or an empty part.
    """
    folds = sorted({int(e["fold"]) for e in entries})
    if val_fold is None and fold in folds:
        val_fold = folds[(folds.index(fold) + 1) % len(folds)]
    if val_fold == fold:
        raise ValueError(
            f"validation fold {val_fold} is the test fold: the checkpoint would be chosen on the test "
            "patients; pick another validation fold"
        )
    parts = {
        "test": [dict(e) for e in entries if e["fold"] == fold],
        "val": [dict(e) for e in entries if e["fold"] == val_fold],
        "train": [dict(e) for e in entries if e["fold"] not in (fold, val_fold)],
    }
    for name, part in parts.items():
        if not part:
            raise ValueError(
                f"the {name} split of fold={fold}, val_fold={val_fold} is empty (folds present: {folds})"
            )
    if train_on_all:
        parts = {"train": parts["train"] + parts["val"], "val": parts["test"], "test": parts["test"]}
    return {**parts, "val_fold": val_fold}
