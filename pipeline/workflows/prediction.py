"""Evaluate a model per patient, and segment cases with it."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.data import Dataset

from pipeline.engines import (
    FAILURES_FILENAME,
    CasesFailed,
    build_evaluator,
    build_val_loader,
    run_per_case,
    write_failures,
)
from pipeline.evaluation.handler import PatientReportHandler
from pipeline.inference.case_outputs_handler import CaseOutputsHandler
from pipeline.inference.writer import check_prediction_targets, prediction_path, prediction_writer
from pipeline.ingestion.cases import CaseError, case_name, check_unique, find_cases
from pipeline.ingestion.scan_cases import SCAN_KIND
from pipeline.ingestion.sequences import CASE_SEQUENCES, OTHER_SEQUENCES
from pipeline.model_files import load_model, model_version
from pipeline.safety import STAGING_MARKER, OutputTransaction, no_space_left
from pipeline.transforms import build_transforms
from pipeline.workflows.builders import datalist_entries, make_inferer, make_postprocessing, network_precision

logger = logging.getLogger(__name__)

# the files of an evaluation report (pipeline.evaluation.report.write_report) and of its failed cases
REPORT_FILES = (
    "metrics.json",
    "metrics_per_patient.csv",
    "metrics_summary.csv",
    "dice_per_institution.png",
    "volume_pred_vs_true.png",
    "overlay_best.png",
    "overlay_median.png",
    "overlay_worst.png",
    FAILURES_FILENAME,
)
PREDICTIONS_FOLDER = "predictions"  # evaluate --save-predictions


def default_report_folder(checkpoint: str | Path) -> Path:
    """``<run>/evaluation`` for a model in a training run's ``checkpoints`` folder.

    Raises:
        ValueError: for any other model file (the shipped ``bundle/models/model.pt``, a copied model): its
            report would land inside the repository or beside the user's files; ``--output`` is needed.
    """
    path = Path(checkpoint).resolve()
    if path.parent.name != "checkpoints":
        raise ValueError(
            f"{checkpoint}: is not in a training run's checkpoints folder, so there is no default report "
            "folder; pass --output FOLDER"
        )
    return path.parent.parent / "evaluation"


class _StopWhenDiskFull:
    """Stop a per-case run at the first case that fails because the disk is full (every later case would
    fail the same way): the error is kept from the engine's ``EXCEPTION_RAISED`` and raised before the next
    case and at the end."""

    def __init__(self, engine: Engine, folder: Path) -> None:
        self.folder, self.error = folder, None
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._seen)

    def _seen(self, engine: Engine, error: BaseException) -> None:
        self.error = self.error or no_space_left(error, self.folder)
        raise error

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def before_case(self, action: Callable[[int, Any], None]) -> Callable[[int, Any], None]:
        def run(index: int, entry: Any) -> None:
            self.check()
            action(index, entry)

        return run


def evaluate(
    checkpoint: str | Path,
    output: str | Path | None = None,
    data: str | Path | None = None,
    folds: Sequence[int] | None = None,
    overrides: Mapping[str, Any] | None = None,
    save_predictions: bool = False,
    device: str = "auto",
    entries: Sequence[dict] | None = None,
    write: bool = True,
    extra_slices: Sequence[Any] = (),
    overwrite: bool = False,
) -> dict[str, Any]:
    """Per-patient volumetric evaluation of a model; writes the report (CSV, JSON, plots).

    Every patient is evaluated on its own: one that cannot be read is reported (``failures.json``) and the
    others are still evaluated; :class:`CasesFailed` is raised at the end when any failed. The report
    folder is written through :class:`pipeline.safety.OutputTransaction`: checked before any work (not
    the data, not holding earlier results or the user's files without ``overwrite``, writable), written
    into a staging folder and moved into place complete; files lggseg did not write are never replaced.

    Args:
        checkpoint: the model to evaluate (usually ``best_model.pt``).
        output: report folder (default: ``<run>/evaluation`` beside the checkpoint folder; required for a
            model outside a run's ``checkpoints`` folder, see :func:`default_report_folder`).
        data: prepared data folder or datalist (default: the training run's).
        folds: folds to evaluate (default: the run's held-out test fold); ``[]`` with ``entries``.
        overrides: post-processing / TTA / batch options (``threshold``, ``keep_largest``, ``min_size``,
            ``tta``, ``sw_batch_size``, ``num_workers``).
        save_predictions: also write ``predictions/<patient>/<patient>_seg.nii.gz``.
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:i]"``.
        entries: datalist entries to evaluate instead of ``data``/``folds``.
        write: write the report files (``False``: only return the figures).
        extra_slices: more ``SliceMetricsAccumulator`` to update (``cv`` pools the folds' slices).
        overwrite: replace the results of an earlier evaluation in ``output`` (only files lggseg wrote).

    Returns:
        ``{"records": per-patient dicts (metrics + timings), "slices": slice-level figures, "summary",
        "paths", "failures", "cases"}`` (``cases(patient_id)``: image, truth and prediction for overlays).
    """
    network, cfg, dev = load_model(checkpoint, overrides, device)  # a missing or foreign file is said first
    out = Path(output) if output else default_report_folder(checkpoint) if write else Path()
    if entries is None:
        entries = datalist_entries(data or cfg.data, [cfg.fold] if folds is None else folds)
    if not entries:
        raise ValueError("nothing to evaluate: the selected folds hold no patients")
    entries = list(entries)
    names = [str(e.get("patient") or e["image"]) for e in entries]
    transaction = None
    if write:
        read = [checkpoint, *([data] if data else [])]
        read += [e[k] for e in entries for k in ("image", "label") if e.get(k)]
        transaction = OutputTransaction(out, "evaluate", overwrite, read, results="an evaluation report")
        planned = list(REPORT_FILES)
        if save_predictions:
            cases = [str(e.get("patient") or case_name(e["image"])) for e in entries]
            planned += [Path(prediction_path(PREDICTIONS_FOLDER, c)).as_posix() for c in cases]
        transaction.check(planned)  # before any work
    with transaction.staging() if transaction else contextlib.nullcontext(out) as target:
        result = _evaluate_into(
            target, network, cfg, dev, entries, names, checkpoint, save_predictions, write, extra_slices
        )
        if transaction is not None:
            files = sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file())
            last = [f for f in files if f == "metrics.json"]  # the report's index, moved in last
            written = [f for f in files if f not in (STAGING_MARKER, *last)] + last
            transaction.commit(target, written)
            result["paths"] = {k: out / Path(p).relative_to(target) for k, p in result["paths"].items()}
    if result["failures"]:
        raise CasesFailed(result["failures"], len(entries), out / FAILURES_FILENAME if write else None)
    return result


def _evaluate_into(
    target: Path,
    network: Any,
    cfg: Any,
    dev: Any,
    entries: list[dict],
    names: list[str],
    checkpoint: str | Path,
    save_predictions: bool,
    write: bool,
    extra_slices: Sequence[Any],
) -> dict[str, Any]:
    """The evaluation of :func:`evaluate`, its report (and predictions) written into ``target``."""
    dataset = Dataset(entries, build_transforms("val", cfg))
    post = make_postprocessing(cfg)
    if save_predictions:
        post = type(post)([*post.transforms, prediction_writer(target / PREDICTIONS_FOLDER)])
    report = PatientReportHandler(
        target,
        extra={
            "checkpoint": str(checkpoint),
            "postprocessing": {k: getattr(cfg, k) for k in ("threshold", "keep_largest", "min_size", "tta")},
            "device": str(dev),
            "precision": network_precision(cfg, dev),
        },
        extra_slices=extra_slices,
    )
    evaluator = build_evaluator(
        device=dev,
        val_data_loader=build_val_loader(dataset, cfg.num_workers, distributed=False),
        network=network,
        inferer=make_inferer(cfg),
        postprocessing=post,
        val_handlers=[report],
        amp=cfg.amp,
    )
    disk = _StopWhenDiskFull(evaluator, target)

    def progress(index: int, entry: Mapping[str, Any]) -> None:
        if cfg.progress:
            logger.info("evaluate %d/%d: %s", index + 1, len(entries), names[index])

    with torch.no_grad():
        failures = run_per_case(
            evaluator, dataset, names, cfg.num_workers, on_case=disk.before_case(progress)
        )
    disk.check()
    paths = report.write(failures) if write else {}
    if failures and write:
        write_failures(failures, target)
    return {
        "records": report.records,
        "slices": report.slices.compute(),
        "summary": report.summary(),
        "paths": paths,
        "failures": failures,
        "cases": report.case_volumes,
    }


def infer(
    checkpoint: str | Path,
    inputs: Sequence[str | Path | Mapping[str, Any]],
    output: str | Path,
    overrides: Mapping[str, Any] | None = None,
    kaggle_masks: bool = False,
    device: str = "auto",
    overwrite: bool = False,
) -> list[Path]:
    """Predict the tumour of every input case with MONAI's ``SaveImaged``: ``output/<case>/<case>_seg.nii.gz``
    (uint8 0/1, the input's shape and affine) and, with ``kaggle_masks``, per-slice
    ``<case>_<k>_mask.tif`` in ``output/<case>/kaggle_masks``. Per case also the QC picture, the DICOM SEG
    of a DICOM FLAIR, and ``output/summary.csv``, written as the bundle's ``inference.json`` writes them, by
    :class:`~pipeline.inference.case_outputs_handler.CaseOutputsHandler`.

    Cases are named after their input (:func:`pipeline.ingestion.cases.find_cases`); two inputs with one name
    are refused before anything runs, and so are existing predictions unless ``overwrite``. A case that cannot
    be read is reported and the others are still written (:class:`CasesFailed` at the end).

    Returns:
        the written prediction files.
    """
    network, cfg, dev = load_model(checkpoint, overrides, device)
    given = [dict(i) for i in inputs if isinstance(i, Mapping)]  # cases made by the caller (--flair ...)
    paths = [i for i in inputs if not isinstance(i, Mapping)]
    problems: list[tuple[Path, str]] = []  # case folders that cannot be listed: failed, the others run
    cases = [*given, *(find_cases(paths, problems) if paths else [])]
    check_unique(cases)
    listing_failures = [
        {"case": case_name(path), "image": str(path), "error": problem} for path, problem in problems
    ]
    if not cases and problems:  # nothing to segment: bad input, said before any work
        raise CaseError(
            problems[0][1] + (f" (and {len(problems) - 1} other folders)" if len(problems) > 1 else "")
        )
    for failure in listing_failures:
        logger.error("%s", failure["error"])
    out = Path(output)
    sources = [*paths, *(c[s] for c in given for s in CASE_SEQUENCES if c.get(s))]
    check_prediction_targets(cases, out, sources, overwrite)
    for case in cases:
        if case.get("kind") == SCAN_KIND:
            taken = ", ".join(f"{k.upper()} = {v}" for k, v in case["sequences"].items())
            logger.info("%s: %s%s", case["case"], taken, _stand_ins(case))
    count = f"{len(cases)} case{'s' * (len(cases) != 1)}"
    logger.info("%s on %s, networks in %s", count, dev, network_precision(cfg, dev))
    preprocessing = build_transforms("infer", cfg)
    dataset = Dataset(cases, preprocessing)
    post = make_postprocessing(cfg, preprocessing=preprocessing)  # back onto each case's own grid
    # each case's files, then its mask; summary.csv; the DICOM SEG names the model's version
    outputs = CaseOutputsHandler(out, cases, kaggle_masks, algorithm_version=model_version(checkpoint))
    evaluator = build_evaluator(
        device=dev,
        val_data_loader=build_val_loader(dataset, cfg.num_workers, distributed=False),
        network=network,
        inferer=make_inferer(cfg),
        postprocessing=type(post)([*post.transforms, prediction_writer(out, publish=False)]),
        val_handlers=[outputs],
        amp=cfg.amp,
    )
    disk = _StopWhenDiskFull(evaluator, out)
    with torch.no_grad():
        failures = run_per_case(
            evaluator,
            dataset,
            [c["case"] for c in cases],
            cfg.num_workers,
            on_case=disk.before_case(lambda index, entry: None),
        )
    disk.check()
    failures = [*listing_failures, *failures]
    if failures:
        raise CasesFailed(failures, len(cases) + len(listing_failures), write_failures(failures, out))
    return outputs.written


def _stand_ins(case: Mapping[str, Any]) -> str:
    missing = [s.upper() for s in OTHER_SEQUENCES if not case.get(s)]
    return f"; no {' or '.join(missing)}: the FLAIR stands in (as in the data set)" if missing else ""
