"""Evaluate a model per patient, and segment cases with it (floor 4)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.data import Dataset

from pipeline.engines import (
    CasesFailed,
    build_evaluator,
    build_val_loader,
    run_per_case,
    write_failures,
)
from pipeline.evaluation.handler import PatientReportHandler
from pipeline.inference.case_report import write_case_outputs, write_summary_csv
from pipeline.inference.writer import SUMMARY_NAME, check_prediction_targets, prediction_writer
from pipeline.ingestion.cases import check_unique, find_cases
from pipeline.ingestion.scans import SCAN_KIND
from pipeline.model_files import load_model
from pipeline.transforms import build_transforms
from pipeline.workflows.builders import datalist_entries, make_inferer, make_postprocessing

logger = logging.getLogger(__name__)


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
) -> dict[str, Any]:
    """Per-patient volumetric evaluation of a model; writes the report (CSV, JSON, plots).

    Every patient is evaluated on its own: one that cannot be read is reported (``failures.json``) and the
    others are still evaluated; :class:`CasesFailed` is raised at the end when any failed.

    Args:
        checkpoint: the model to evaluate (usually ``best_model.pt``).
        output: report folder (default: ``<run>/evaluation`` beside the checkpoint folder).
        data: prepared data folder or datalist (default: the training run's).
        folds: folds to evaluate (default: the run's held-out test fold); ``[]`` with ``entries``.
        overrides: post-processing / TTA / batch options (``threshold``, ``keep_largest``, ``min_size``,
            ``tta``, ``sw_batch_size``, ``num_workers``).
        save_predictions: also write ``predictions/<patient>/<patient>_seg.nii.gz``.
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:i]"``.
        entries: datalist entries to evaluate instead of ``data``/``folds``.
        write: write the report files (``False``: only return the figures).
        extra_slices: more ``SliceMetricsAccumulator`` to update (``cv`` pools the folds' slices).

    Returns:
        ``{"records": per-patient dicts (metrics + timings), "slices": slice-level figures, "summary",
        "paths", "failures", "cases"}`` (``cases(patient_id)``: image, truth and prediction for overlays).
    """
    network, cfg, dev = load_model(checkpoint, overrides, device)
    if entries is None:
        entries = datalist_entries(data or cfg.data, [cfg.fold] if folds is None else folds)
    if not entries:
        raise ValueError("nothing to evaluate: the selected folds hold no patients")
    out = Path(output) if output else Path(checkpoint).resolve().parent.parent / "evaluation"
    entries = list(entries)
    dataset = Dataset(entries, build_transforms("val", cfg))
    post = make_postprocessing(cfg)
    if save_predictions:
        post = type(post)([*post.transforms, prediction_writer(out / "predictions")])
    report = PatientReportHandler(
        out,
        extra={
            "checkpoint": str(checkpoint),
            "postprocessing": {k: getattr(cfg, k) for k in ("threshold", "keep_largest", "min_size", "tta")},
            "device": str(dev),
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
    names = [str(e.get("patient") or e["image"]) for e in entries]

    def progress(index: int, entry: Mapping[str, Any]) -> None:
        if cfg.progress:
            logger.info("evaluate %d/%d: %s", index + 1, len(entries), names[index])

    with torch.no_grad():
        failures = run_per_case(evaluator, dataset, names, cfg.num_workers, on_case=progress)
    paths = report.write(failures) if write else {}
    if failures:
        raise CasesFailed(failures, len(entries), write_failures(failures, out) if write else None)
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
    ``<case>_<k>_mask.tif`` in ``output/<case>/kaggle_masks``.

    Cases are named after their input (:func:`pipeline.ingestion.cases.find_cases`); two inputs with one name
    are refused before anything runs, and so are existing predictions unless ``overwrite``. A case that cannot
    be read is reported and the others are still written (:class:`CasesFailed` at the end).

    Returns:
        the written prediction files.
    """
    from pipeline.ingestion.export import export_kaggle

    network, cfg, dev = load_model(checkpoint, overrides, device)
    given = [dict(i) for i in inputs if isinstance(i, Mapping)]  # cases made by the caller (--flair ...)
    paths = [i for i in inputs if not isinstance(i, Mapping)]
    cases = [*given, *(find_cases(paths) if paths else [])]
    check_unique(cases)
    out = Path(output)
    sources = [*paths, *(c[s] for c in given for s in ("flair", "t1", "t1c") if c.get(s))]
    check_prediction_targets(cases, out, sources, overwrite)
    for case in cases:
        if case.get("kind") == SCAN_KIND:
            taken = ", ".join(f"{k.upper()} = {v}" for k, v in case["sequences"].items())
            logger.info("%s: %s%s", case["case"], taken, _stand_ins(case))
    preprocessing = build_transforms("infer", cfg)
    dataset = Dataset(cases, preprocessing)
    post = make_postprocessing(cfg, preprocessing=preprocessing)  # back onto each case's own grid
    evaluator = build_evaluator(
        device=dev,
        val_data_loader=build_val_loader(dataset, cfg.num_workers, distributed=False),
        network=network,
        inferer=make_inferer(cfg),
        postprocessing=type(post)([*post.transforms, prediction_writer(out)]),
        amp=cfg.amp,
    )
    written: list[Path] = []
    rows: list[dict[str, Any]] = []
    current: dict[str, Any] = {}

    def publish(engine: Engine) -> None:
        case = current["case"]
        item = engine.state.output[0]
        path = Path(item["pred"].meta["saved_to"])
        if kaggle_masks:
            export_kaggle(path, out / case["case"] / "kaggle_masks", patient_id=case["case"], overwrite=True)
        written.append(path)
        row = write_case_outputs(case, item["pred"], out, image=item.get("image"))
        rows.append({**row, "seg_nifti": str(path)})
        logger.info(
            "%s: %d tumour voxels, %.2f mL -> %s",
            case["case"],
            row["tumour_voxels"],
            row["tumour_volume_ml"],
            path,
        )

    evaluator.add_event_handler(Events.ITERATION_COMPLETED, publish)
    with torch.no_grad():
        failures = run_per_case(
            evaluator,
            dataset,
            [c["case"] for c in cases],
            cfg.num_workers,
            on_case=lambda i, c: current.update(case=c),
        )
    if rows:
        write_summary_csv(rows, out / SUMMARY_NAME)
    if failures:
        raise CasesFailed(failures, len(cases), write_failures(failures, out))
    return written


def _stand_ins(case: Mapping[str, Any]) -> str:
    missing = [s.upper() for s in ("t1", "t1c") if not case.get(s)]
    return f"; no {' or '.join(missing)}: the FLAIR stands in (as in the data set)" if missing else ""
