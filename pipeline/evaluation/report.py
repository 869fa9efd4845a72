"""The per-patient evaluation report: CSV, JSON, summary statistics and plots.

Plots use matplotlib's object API with the Agg canvas (no ``pyplot``, no global backend switch). Every file
is written atomically (a temporary name in the same folder, then ``os.replace``), so a crashed run never
leaves a half-written report behind.

Usage::

    from pipeline.evaluation.metrics import SliceMetricsAccumulator, patient_metrics
    from pipeline.evaluation.report import select_cases, write_report

    records = [patient_metrics(pred, truth, spacing=spacing, patient_id=pid) for pid, pred, truth in ...]
    slice_summary = accumulator.compute()                      # SliceMetricsAccumulator
    wanted = select_cases(records)                             # {"best": id, "median": id, "worst": id}
    cases = {pid: (image, truth, pred) for pid in set(wanted.values())}  # image (C, H, W, D), FLAIR = 1
    paths = write_report(records, slice_summary, "runs/eval", cases=cases, extra={"checkpoint": "..."})

``cases`` may also be a callable ``patient_id -> (image, truth, pred)`` so that only the three
selected patients are loaded. Files written in ``output_dir``: ``metrics_per_patient.csv``,
``metrics_summary.csv``, ``metrics.json``, ``dice_per_institution.png``, ``volume_pred_vs_true.png``
and ``overlay_best.png`` / ``overlay_median.png`` / ``overlay_worst.png`` when ``cases`` is given.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.evaluation.metrics import (
    LESION_COUNT_KEYS,
    PATIENT_CONVENTIONS,
    PATIENT_METRIC_KEYS,
    SUMMARY_METRIC_KEYS,
)
from pipeline.evaluation.plots import (
    institution_of_record,
    plot_dice_per_institution,
    plot_overlay,
    plot_volumes,
)
from pipeline.safety import atomic_write_text

__all__ = [
    "SUMMARY_CONVENTION",
    "select_cases",
    "summarise",
    "write_report",
]

logger = logging.getLogger(__name__)

#: how the summary statistics are computed, written into ``metrics.json``.
SUMMARY_CONVENTION = (
    "Summaries are over patients (one value per patient), overall and per institution (the TCGA "
    "tissue-source-site code in the patient id). mean, median, std, min and max use only the defined "
    "(non-NaN) values; n is how many values were used and n_undefined how many were NaN and left out. "
    "std is the sample standard deviation (ddof = 1; null with fewer than 2 values). Lesion counts are "
    "summed over patients; pooled lesion sensitivity = total detected / total true lesions. In the JSON "
    "file, NaN is written as null; in the CSV files, as 'nan'."
)

_OVERLAY_NAMES = ("best", "median", "worst")


# --------------------------------------------------------------------------- summaries


def _stats(values: Iterable[Any]) -> dict[str, Any]:
    arr = np.array([math.nan if v is None else float(v) for v in values], dtype=float)
    defined = arr[~np.isnan(arr)]
    n = int(defined.size)
    out: dict[str, Any] = {"n": n, "n_undefined": int(arr.size - n)}
    if n:
        out.update(
            mean=float(defined.mean()),
            median=float(np.median(defined)),
            std=float(defined.std(ddof=1)) if n > 1 else math.nan,
            min=float(defined.min()),
            max=float(defined.max()),
        )
    else:
        out.update(mean=math.nan, median=math.nan, std=math.nan, min=math.nan, max=math.nan)
    return out


def _group_summary(records: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {"n_patients": len(records), "metrics": {}}
    for key in metrics:
        if any(key in r for r in records):
            summary["metrics"][key] = _stats(r.get(key) for r in records)
    lesions = {key: int(sum(int(r.get(key) or 0) for r in records)) for key in LESION_COUNT_KEYS}
    lesions["pooled_lesion_sensitivity"] = (
        lesions["lesions_detected"] / lesions["lesions_true"] if lesions["lesions_true"] else math.nan
    )
    summary["lesions"] = lesions
    return summary


def summarise(
    records: Sequence[Mapping[str, Any]], metrics: Sequence[str] = SUMMARY_METRIC_KEYS
) -> dict[str, Any]:
    """Mean, median, std (and min, max, counts) of each metric, overall and per institution.

    Args:
        records: per-patient dicts from :func:`pipeline.evaluation.metrics.patient_metrics`.
        metrics: the keys to summarise (those absent from every record are skipped).

    Returns:
        ``{"convention": ..., "overall": group, "per_institution": {code: group}}`` where a group is
        ``{"n_patients", "metrics": {key: {"n", "n_undefined", "mean", "median", "std", "min", "max"}},
        "lesions": {summed counts, "pooled_lesion_sensitivity"}}``; NaN where nothing is defined.
    """
    records = list(records)
    by_institution: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        by_institution.setdefault(institution_of_record(record), []).append(record)
    return {
        "convention": SUMMARY_CONVENTION,
        "overall": _group_summary(records, metrics),
        "per_institution": {
            code: _group_summary(group, metrics) for code, group in sorted(by_institution.items())
        },
    }


def select_cases(records: Sequence[Mapping[str, Any]], metric: str = "dice") -> dict[str, str]:
    """Patient ids of the best, median and worst patients by ``metric`` (higher is better).

    Ties are broken by patient id; patients whose value is NaN are left out. The median patient is
    the lower median of the sorted values (index ``(n - 1) // 2`` from the worst).

    Args:
        records: per-patient dicts with ``patient_id`` and ``metric``.
        metric: the key ranked on; ``"dice"`` by default.

    Returns:
        ``{"best": id, "median": id, "worst": id}``; empty when no patient has a defined value.
    """
    ranked = sorted(
        (
            (float(r[metric]), str(r["patient_id"]))
            for r in records
            if r.get(metric) is not None and not math.isnan(float(r[metric]))
        ),
    )
    if not ranked:
        return {}
    return {"best": ranked[-1][1], "median": ranked[(len(ranked) - 1) // 2][1], "worst": ranked[0][1]}


# --------------------------------------------------------------------------- atomic writing


def _atomic_write_text(path: Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, text)


def _jsonable(obj: Any) -> Any:
    """Plain JSON types: NaN/inf -> None, numpy/torch scalars and arrays -> Python, paths -> str."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):  # numpy / torch
        return _jsonable(obj.tolist())
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return str(obj)


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float):
        return "nan" if math.isnan(value) else format(value, ".10g")
    return value


def _columns(records: Sequence[Mapping[str, Any]]) -> list[str]:
    columns = [key for key in PATIENT_METRIC_KEYS if any(key in r for r in records)]
    for record in records:
        columns.extend(key for key in record if key not in columns)
    return columns


def _csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([_csv_cell(v) for v in row])
    return buffer.getvalue()


def _summary_rows(summary: Mapping[str, Any]) -> list[list[Any]]:
    rows = []
    groups = [("overall", summary["overall"])] + [
        (f"institution:{code}", group) for code, group in summary["per_institution"].items()
    ]
    for name, group in groups:
        for key, stats in group["metrics"].items():
            rows.append(
                [name, group["n_patients"], key, stats["n"], stats["n_undefined"]]
                + [stats[s] for s in ("mean", "median", "std", "min", "max")]
            )
    return rows


def _fmt(value: Any) -> str:
    return "nan" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def write_report(
    records: Sequence[Mapping[str, Any]],
    slice_summary: Mapping[str, Any] | None,
    output_dir: str | Path,
    cases: Mapping[str, Sequence[Any]] | Callable[[str], Sequence[Any]] | None = None,
    extra: Mapping[str, Any] | None = None,
    channel: int = 1,
) -> dict[str, Path]:
    """Write the evaluation report of a set of patients into ``output_dir``.

    Args:
        records: per-patient dicts from :func:`pipeline.evaluation.metrics.patient_metrics` (extra keys, e.g.
            timings, become extra CSV columns).
        slice_summary: :meth:`pipeline.evaluation.metrics.SliceMetricsAccumulator.compute` output, or
        ``None``.
        output_dir: the folder (created when missing).
        cases: the volumes for the overlays: a mapping or a callable ``patient_id -> (image, truth,
            pred)`` (image (C, H, W, D), masks (H, W, D)); only the ids from :func:`select_cases` are
            asked for. ``None`` writes no overlays.
        extra: anything else to store under ``"run"`` in ``metrics.json`` (checkpoint, timings, ...).
        channel: the image channel shown in the overlays (1 = FLAIR).

    Returns:
        ``{name: path}`` of the files written (``csv``, ``summary_csv``, ``json``, ``dice_plot``,
        ``volume_plot``, ``overlay_best``, ``overlay_median``, ``overlay_worst``).
    """
    records = [dict(r) for r in records]
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(records)
    selected = select_cases(records)
    paths: dict[str, Path] = {}

    columns = _columns(records)
    paths["csv"] = _atomic_write_text(
        out / "metrics_per_patient.csv", _csv_text(columns, ([r.get(c) for c in columns] for r in records))
    )
    paths["summary_csv"] = _atomic_write_text(
        out / "metrics_summary.csv",
        _csv_text(
            ["group", "n_patients", "metric", "n", "n_undefined", "mean", "median", "std", "min", "max"],
            _summary_rows(summary),
        ),
    )
    paths["dice_plot"] = plot_dice_per_institution(records, out / "dice_per_institution.png")
    paths["volume_plot"] = plot_volumes(records, out / "volume_pred_vs_true.png")

    overlays: dict[str, dict[str, Any]] = {}
    if cases is not None:
        get = cases if callable(cases) else cases.__getitem__
        by_id = {str(r["patient_id"]): r for r in records}
        for name in _OVERLAY_NAMES:
            pid = selected.get(name)
            if pid is None:
                continue
            try:
                image, truth, pred = get(pid)
            except KeyError:
                logger.warning("no volumes given for the %s patient %s: overlay skipped", name, pid)
                continue
            path = out / f"overlay_{name}.png"
            title = f"{name}: {pid} (Dice {_fmt(by_id[pid].get('dice'))})"
            k = plot_overlay(image, truth, pred, path, title=title, channel=channel)
            paths[f"overlay_{name}"] = path
            overlays[name] = {"patient_id": pid, "slice_index": k, "file": path.name}

    document = {
        "conventions": {
            "patient": PATIENT_CONVENTIONS,
            "slice": (slice_summary or {}).get("convention"),
            "summary": SUMMARY_CONVENTION,
        },
        "n_patients": len(records),
        "summary": summary,
        "slice_level": dict(slice_summary) if slice_summary is not None else None,
        "cases": {name: {"patient_id": pid, **overlays.get(name, {})} for name, pid in selected.items()},
        "patients": records,
        "files": {name: p.name for name, p in paths.items()} | {"json": "metrics.json"},
        "run": dict(extra) if extra else {},
    }
    text = json.dumps(_jsonable(document), indent=2, allow_nan=False, ensure_ascii=False) + "\n"
    paths["json"] = _atomic_write_text(out / "metrics.json", text)
    overall = summary["overall"]["metrics"].get("dice", {})
    logger.info(
        "report: %d patients, Dice mean %s median %s -> %s",
        len(records),
        _fmt(overall.get("mean")),
        _fmt(overall.get("median")),
        out,
    )
    return paths
