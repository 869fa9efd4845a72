"""Cross-validation: train and evaluate every fold, then one pooled per-patient report."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from pipeline.config import RunConfig, validate_config
from pipeline.evaluation.handler import quality_agreement
from pipeline.ingestion.datalist import load_datalist
from pipeline.safety import OutputTransaction
from pipeline.training.checkpoints import BEST_NAME, find_last_checkpoint
from pipeline.workflows.builders import datalist_path
from pipeline.workflows.prediction import REPORT_FILES, evaluate
from pipeline.workflows.training import DONE_NAME, resumed_config, train

logger = logging.getLogger(__name__)


def cross_validate(
    cfg: RunConfig | Mapping[str, Any],
    folds: Sequence[int] | None = None,
    given: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train and evaluate every fold, then write the pooled per-patient report to ``output/name/cv``.

    A fold whose training finished is not retrained; an interrupted one resumes from its last checkpoint, with
    its own settings (:func:`pipeline.workflows.training.resumed_config`). An option given that differs from
    the settings of a fold already there (finished or not) is refused before any fold trains.

    Args:
        cfg: the configuration of every fold (``fold`` and ``val_fold`` are set per fold).
        folds: the folds to run (default: every fold of the datalist).
        given: the options given explicitly (the command line); default: every option of ``cfg``.

    Returns:
        ``{"records": per-patient dicts of every fold, "paths": files of the pooled report}``.

    Raises:
        ValueError: before any work, when an option given differs from a fold's own settings.
    """
    base = cfg if isinstance(cfg, RunConfig) else RunConfig.from_dict(cfg)
    validate_config(base)
    if folds is None:
        folds = sorted({e["fold"] for e in load_datalist(datalist_path(base.data))})
    given = {f.name: getattr(base, f.name) for f in fields(base)} if given is None else dict(given)
    per_fold = {k: v for k, v in given.items() if k not in ("val_fold", "resume", "overwrite")}
    plans: dict[int, RunConfig] = {}
    for fold in folds:  # every fold checked before any trains
        fold_cfg = RunConfig.from_dict({**asdict(base), "fold": fold, "val_fold": None})
        run_dir = fold_cfg.run_dir()
        started = (run_dir / DONE_NAME).is_file() or find_last_checkpoint(run_dir / "checkpoints")
        plans[fold] = resumed_config({**per_fold, "fold": fold}) if started else fold_cfg
    checkpoints: dict[int, Path] = {}
    for fold, fold_cfg in plans.items():
        run_dir = fold_cfg.run_dir()
        if not (run_dir / DONE_NAME).is_file():
            train(fold_cfg)
        checkpoints[fold] = run_dir / "checkpoints" / BEST_NAME
    overrides = {"num_workers": base.num_workers, "progress": base.progress}
    return evaluate_folds(checkpoints, Path(base.output) / base.name / "cv", overrides)


def evaluate_folds(
    checkpoints: Mapping[int, str | Path],
    output: str | Path,
    overrides: Mapping[str, Any] | None = None,
    fold_report: str = "evaluation",
    extra: Mapping[str, Any] | None = None,
    fold_overrides: Mapping[int, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Evaluate each fold's model on its own test fold, then pool the patients into one report.

    Args:
        checkpoints: ``{fold: model file}`` (the model of fold k never saw fold k's patients).
        output: folder of the pooled report (per-patient CSV, JSON, plots, best/median/worst overlays).
        overrides: post-processing / TTA / loader options for every fold (see :func:`evaluate`).
        fold_report: name of each fold's own report folder beside its ``checkpoints`` folder.
        extra: stored under ``"run"`` in the pooled ``metrics.json``.
        fold_overrides: options of single folds on top of ``overrides`` (a nested post-processing choice:
            each fold evaluated with what the other folds chose, see
            :func:`pipeline.workflows.model_selection.choose_postprocessing`).

    Returns:
        ``{"records": per-patient dicts of every fold, "paths": files of the pooled report}``.

    Raises:
        ValueError: before any fold is evaluated, when ``output`` holds a file lggseg did not write under a
            name of the report (an earlier pooled report of lggseg is replaced).
    """
    from pipeline.evaluation.metrics import SliceMetricsAccumulator
    from pipeline.evaluation.report import write_report

    pooled_report = OutputTransaction(
        output, "cv", overwrite=True, inputs=list(checkpoints.values()), results="a pooled report"
    )
    pooled_report.check(REPORT_FILES)  # before hours of evaluation

    records: list[dict[str, Any]] = []
    pooled = SliceMetricsAccumulator()
    volumes: dict[str, Callable[[str], Any]] = {}
    for fold, checkpoint in checkpoints.items():
        checkpoint = Path(checkpoint)
        result = evaluate(
            checkpoint,
            output=checkpoint.resolve().parent.parent / fold_report,
            folds=[fold],
            overrides={**dict(overrides or {}), **dict((fold_overrides or {}).get(fold, {}))},
            extra_slices=[pooled],
            overwrite=True,  # the fold's own report, replaced when cv runs again (never the user's files)
        )
        records += result["records"]
        fold_dice = [float(r["dice"]) for r in result["records"]]
        logger.info(
            "fold %s: %d patients, Dice mean %.4f; report in %s",
            fold,
            len(fold_dice),
            sum(fold_dice) / max(1, len(fold_dice)),
            result.get("paths", {}).get("json", ""),
        )
        volumes.update({str(r["patient_id"]): result["cases"] for r in result["records"]})
    pooled_report.check(REPORT_FILES)  # a file that appeared meanwhile is kept
    pooled_report.claim(REPORT_FILES)
    pooled_extra = {"folds": list(checkpoints), **dict(overrides or {}), **dict(extra or {})}
    if records and all("qc_score" in r for r in records):  # the quality score against Dice, all folds
        pooled_extra["quality_agreement"] = quality_agreement(records)
    paths = write_report(
        records,
        pooled.compute(),
        output,
        cases=lambda pid: volumes[pid](pid),
        extra=pooled_extra,
    )
    return {"records": records, "paths": paths}
