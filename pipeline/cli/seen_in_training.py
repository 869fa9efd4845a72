"""Which evaluated patients a model was trained on, said by ``lggseg evaluate`` in one log line and recorded
in the report's ``metrics.json`` (``seen_in_training``).

A Dice on a model's own training patients is optimistic: the shipped model is an ensemble of five fold
models, each trained on four folds, so every patient of the data set trained four of its five members, and
its Dice on them (0.875) is well above its cross-validated one (0.821). The model file records what it was
trained on: its configuration (``data``, ``fold``, ``val_fold``, ``train_on_all``) and, for an ensemble, each
member's test fold; the folds of the patients come from that training datalist.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger("lggseg")

REPO_ROOT = Path(__file__).resolve().parents[2]
DATALIST_FILENAME = "datalist.json"


def training_datalist(data: str | None) -> Path | None:
    """The training datalist a model's configuration names, if it is on this machine.

    Args:
        data: the configuration's ``data`` (a prepared folder or a datalist file; relative paths are tried
            from the working folder, then from the project's folder, where the shipped model was trained).

    Returns:
        the datalist file, or ``None``.
    """
    if not data:
        return None
    candidates = [Path(data)] + ([REPO_ROOT / data] if not Path(data).is_absolute() else [])
    for path in candidates:
        file = path / DATALIST_FILENAME if path.is_dir() else path
        if file.is_file():
            return file
    return None


def read_training_entries(datalist: Path) -> list[dict[str, Any]]:
    """The ``patient`` and ``fold`` of every training entry of a datalist (no image is opened).

    Args:
        datalist: a decathlon datalist written by ``lggseg prepare``.

    Returns:
        ``[{"patient": str, "fold": int}, ...]``; empty when the file cannot be read.
    """
    try:
        entries = json.loads(datalist.read_text(encoding="utf-8")).get("training", [])
        return [
            {"patient": str(e.get("patient") or Path(e["image"]).parent.name), "fold": int(e["fold"])}
            for e in entries
        ]
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError):
        return []


def training_patients(
    config: Mapping[str, Any], member_folds: Sequence[int] | None, entries: Sequence[Mapping[str, Any]]
) -> dict[str, int]:
    """How many of a model's networks trained on each patient.

    Args:
        config: the model's configuration (``fold``, ``val_fold``, ``train_on_all``).
        member_folds: the test fold of each member of an ensemble; ``None`` for one network (``config``'s).
        entries: the training datalist's entries (``patient``, ``fold``).

    Returns:
        ``{patient: number of networks whose training folds held the patient}`` (patients of no network's
        training folds are left out).
    """
    from pipeline.ingestion.datalist import split_folds

    folds = list(member_folds) if member_folds else [int(config.get("fold", 0))]
    counts: dict[str, int] = {}
    for fold in folds:
        val_fold = config.get("val_fold") if not member_folds else None  # cv folds: the next fold
        try:
            parts = split_folds(entries, fold, val_fold, bool(config.get("train_on_all", False)))
        except ValueError:  # the datalist no longer has the folds the model was trained on
            continue
        for entry in parts["train"]:
            counts[entry["patient"]] = counts.get(entry["patient"], 0) + 1
    return counts


def cross_validated_figure(checkpoint: str | Path) -> str:
    """Where the model's honest figure is: the cross-validated Dice of a bundle's ``metadata.json`` or of a
    run's pooled ``cv`` report, else how to get one.

    Args:
        checkpoint: the model file.

    Returns:
        one sentence.
    """
    path = Path(checkpoint).resolve()
    metadata = path.parent.parent / "configs" / "metadata.json"  # a bundle: models/model.pt
    pooled = path.parent.parent.parent / "cv" / "metrics.json"  # a run: NAME/fold<k>/checkpoints/*.pt
    try:
        if metadata.is_file():
            metrics = json.loads(metadata.read_text(encoding="utf-8"))["eval_metrics"]
            return (
                f"its cross-validated Dice, each patient segmented by models that never saw it, is "
                f"{float(metrics['cv_patient_mean_dice']):.3f} (eval_metrics in {metadata})"
            )
        if pooled.is_file():
            summary = json.loads(pooled.read_text(encoding="utf-8"))["summary"]["overall"]["metrics"]
            return f"its cross-validated Dice is {float(summary['dice']['mean']):.3f} ({pooled})"
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError):
        pass
    return "for an unbiased figure evaluate each fold's model on its own test fold (lggseg cv)"


def seen_in_training(checkpoint: str | Path, patients: Sequence[str]) -> dict[str, Any]:
    """Which of ``patients`` the model in ``checkpoint`` was trained on.

    Args:
        checkpoint: the model file.
        patients: the evaluated patients.

    Returns:
        ``{"seen_in_training": "N of M patients" (or "unknown ..."), "seen_in_training_detail": {...},
        "message": the log line}``.
    """
    from pipeline.model_files import CONFIG_KEY, load_checkpoint

    saved = load_checkpoint(checkpoint)
    config = saved[CONFIG_KEY]
    members = saved.get("members")
    member_folds = (
        [int(m["fold"]) for m in members]
        if isinstance(members, list) and members and all(isinstance(m, dict) and "fold" in m for m in members)
        else None
    )
    datalist = training_datalist(config.get("data"))
    entries = read_training_entries(datalist) if datalist is not None else []
    networks = len(member_folds) if member_folds else 1
    if not entries:
        return {
            "seen_in_training": "unknown",
            "seen_in_training_detail": {"training_data": config.get("data")},
            "message": f"cannot tell which of the {len(patients)} patients {checkpoint} was trained on: its "
            f"training datalist ({config.get('data')}) is not on this machine",
        }
    counts = training_patients(config, member_folds, entries)
    seen = [p for p in patients if counts.get(p)]
    text = f"{len(seen)} of {len(patients)} patients"
    detail = {
        "patients": seen,
        "networks": networks,
        "networks_trained_on_each": {p: counts[p] for p in seen},
        "training_datalist": str(datalist),
        "cross_validated": cross_validated_figure(checkpoint),
    }
    if not seen:
        message = f"none of the {len(patients)} patients evaluated was a training patient of {checkpoint}"
    else:
        used = sorted({counts[p] for p in seen})
        each = "-".join(str(n) for n in (used[0], used[-1]) if n) if len(used) > 1 else str(used[0])
        how = f" (each trained {each} of its {networks} networks)" if networks > 1 else ""
        message = (
            f"{text} evaluated were training patients of {checkpoint}{how}: the Dice on them is optimistic; "
            f"{detail['cross_validated']}"
        )
    return {"seen_in_training": text, "seen_in_training_detail": detail, "message": message}


def note_seen_in_training(checkpoint: str | Path, result: Mapping[str, Any]) -> dict[str, Any]:
    """Say in one log line how many evaluated patients the model was trained on, and record it in the
    report's ``metrics.json`` (``seen_in_training``, ``seen_in_training_detail``), rewritten atomically.

    Args:
        checkpoint: the evaluated model file.
        result: what :func:`pipeline.workflows.prediction.evaluate` returned (``records``, ``paths``).

    Returns:
        the record (see :func:`seen_in_training`).
    """
    from pipeline.safety import atomic_write_json

    patients = [str(r["patient_id"]) for r in result["records"]]
    record = seen_in_training(checkpoint, patients)
    seen = record["seen_in_training"]
    (logger.warning if seen != "unknown" and not seen.startswith("0 of") else logger.info)(record["message"])
    report = result.get("paths", {}).get("json")
    if report and Path(report).is_file():
        metrics = json.loads(Path(report).read_text(encoding="utf-8"))
        metrics["seen_in_training"] = seen
        metrics["seen_in_training_detail"] = record["seen_in_training_detail"]
        atomic_write_json(report, metrics)
    return record
