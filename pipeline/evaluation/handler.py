"""Per-patient volumetric evaluation as an evaluator handler.

:class:`PatientReportHandler` is attached to a ``SupervisedEvaluator`` whose output holds the post-processed
``pred`` and the ``label`` of whole volumes. It computes every 3D metric of
:func:`pipeline.evaluation.metrics.patient_metrics` per patient as the evaluator goes and writes the report of
:func:`pipeline.evaluation.report.write_report` when asked. ``lggseg evaluate`` and the bundle's
``evaluate.json`` both use it; under ``torchrun`` every rank evaluates its share and rank 0 writes one merged
report.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents

from pipeline.evaluation.metrics import SliceMetricsAccumulator, patient_metrics
from pipeline.evaluation.report import summarise, write_report
from pipeline.inference.quality import CaseQuality
from pipeline.transforms import LoadVolumed

logger = logging.getLogger(__name__)


def spacing_of(image: Any) -> tuple[float, float, float]:
    """Voxel size (mm) from a ``MetaTensor``'s affine (1 mm when it has none)."""
    affine = torch.as_tensor(getattr(image, "affine", torch.eye(4))).double()
    return tuple(float(v) for v in torch.linalg.norm(affine[:3, :3], dim=0))


def patient_of(item: Mapping[str, Any]) -> str:
    """Patient id of an evaluated item: its ``patient`` entry, else the folder of its image file."""
    if item.get("patient"):
        return str(item["patient"])
    image = item.get("image")
    source = getattr(image, "meta", {}).get("filename_or_obj", "") if image is not None else ""
    return Path(str(source)).parent.name or "case"


class PatientReportHandler:
    """Collect per-patient 3D metrics (and timings) from an evaluator; :meth:`write` writes the report.

    Args:
        output_dir: the report folder (``metrics_per_patient.csv``, ``metrics.json``, plots).
        extra: stored under ``"run"`` in ``metrics.json`` (checkpoint, post-processing, ...).
        extra_slices: more ``SliceMetricsAccumulator`` to update (cross-validation pools the folds).
        keep_predictions: keep the binary predictions (packed) for the overlays of the best, median and
            worst patients.
    """

    def __init__(
        self,
        output_dir: str | Path,
        extra: Mapping[str, Any] | None = None,
        extra_slices: Sequence[SliceMetricsAccumulator] = (),
        keep_predictions: bool = True,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.extra = dict(extra or {})
        self.slices = SliceMetricsAccumulator()
        self.extra_slices = list(extra_slices)
        self.keep_predictions = keep_predictions
        self.records: list[dict[str, Any]] = []
        self.predictions: dict[str, Any] = {}
        self._t: dict[str, float] = {}

    def attach(self, engine: Engine) -> None:
        for event, name in (
            (Events.GET_BATCH_STARTED, "load0"),
            (Events.GET_BATCH_COMPLETED, "load1"),
            (Events.ITERATION_STARTED, "start"),
            (IterationEvents.FORWARD_COMPLETED, "forward"),
            (IterationEvents.MODEL_COMPLETED, "post"),
        ):
            engine.add_event_handler(event, self._mark, name)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)

    def _mark(self, _: Engine, name: str) -> None:
        self._t[name] = time.perf_counter()

    def _collect(self, engine: Engine) -> None:
        batch = engine.state.batch
        for index, item in enumerate(engine.state.output):
            start = time.perf_counter()
            entry = _entry_of(batch, index)
            pid = str(entry.get("patient") or patient_of(item))
            pred = (torch.as_tensor(item["pred"]).detach().cpu()[0] > 0).numpy()
            truth = (torch.as_tensor(item["label"]).detach().cpu()[0] > 0).numpy()
            record = patient_metrics(
                pred, truth, spacing_of(item["image"]), institution=entry.get("institution"), patient_id=pid
            )
            for accumulator in (self.slices, *self.extra_slices):
                accumulator.update(pred, truth)
            t = self._t
            record.update(
                load_s=t.get("load1", 0.0) - t.get("load0", 0.0),
                inference_s=t.get("forward", 0.0) - t.get("start", 0.0),
                postprocess_s=t.get("post", 0.0) - t.get("forward", 0.0),
                metrics_s=time.perf_counter() - start,
                fold=_plain(entry.get("fold")),
            )
            record["eval_s"] = record["inference_s"] + record["postprocess_s"] + record["metrics_s"]
            quality = item.get("qc") if isinstance(item, Mapping) else None
            if quality:  # the post-processing's quality estimate (pipeline.inference.quality)
                estimate = CaseQuality.from_dict(quality)
                record.update(qc_score=estimate.score, review="yes" if estimate.review else "no")
                record["qc_flags"] = ";".join(estimate.flags)
            self.records.append(record)
            if self.keep_predictions:
                sources = [getattr(item[k], "meta", {}).get("filename_or_obj") for k in ("image", "label")]
                self.predictions[pid] = (np.packbits(pred), pred.shape, *sources)

    def _gather(self) -> list[dict[str, Any]]:
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self.records
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, self.records)
        return [r for part in gathered for r in part]

    def summary(self) -> dict[str, Any]:
        """Summary of the records so far (overall and per institution)."""
        return summarise(self.records) if self.records else {}

    def write(self, failures: Sequence[Mapping[str, Any]] = ()) -> dict[str, Path]:
        """Write the report (on rank 0 only under ``torchrun``, with every rank's patients).

        Args:
            failures: cases that could not be evaluated (listed in ``metrics.json``).

        Returns:
            ``{name: path}`` of the files written (empty on other ranks or without patients).
        """
        records = self._gather()
        if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
            return {}
        if not records:
            logger.warning("no patient was evaluated: no report written")
            return {}
        timing = {
            k: float(np.mean([r[k] for r in records]))
            for k in ("load_s", "inference_s", "postprocess_s", "metrics_s", "eval_s")
        }
        extra = {**self.extra, "mean_timing_s": timing, "failed_cases": [f["case"] for f in failures]}
        if all("qc_score" in r for r in records):
            extra["quality_agreement"] = quality_agreement(records)
        distributed = len(records) != len(self.records)
        paths = write_report(
            records,
            None if distributed else self.slices.compute(),
            self.output_dir,
            cases=None if distributed else self.case_volumes,
            extra=extra,
        )
        dice = summarise(records)["overall"]["metrics"]["dice"]
        logger.info(
            "%d patients: Dice mean %.4f, median %.4f, std %.4f; report in %s",
            len(records),
            dice["mean"],
            dice["median"],
            dice["std"],
            self.output_dir,
        )
        return paths

    def case_volumes(self, pid: str) -> tuple[Any, Any, Any]:
        """Image ``(C, H, W, D)``, truth and binary prediction ``(H, W, D)`` of an evaluated patient (for
        overlays); the image and truth are read again from their files."""
        packed, shape, source, label = self.predictions[pid]
        loaded = LoadVolumed()({"image": source, "label": label} if label else {"image": source})
        pred = np.unpackbits(packed, count=int(np.prod(shape))).reshape(shape)
        truth = loaded["label"].numpy()[0] if "label" in loaded else None
        return loaded["image"].numpy(), truth, pred


def _entry_of(batch: Any, index: int) -> dict[str, Any]:
    """The ``patient``, ``institution`` and ``fold`` of item ``index`` of ``engine.state.batch``: a collated
    mapping, or the list of per-item mappings MONAI's workflows leave there once they decollate."""
    keys = ("patient", "institution", "fold")
    if isinstance(batch, (list, tuple)):
        item = batch[index] if index < len(batch) else {}
        return {k: item[k] for k in keys if isinstance(item, Mapping) and k in item}
    return {k: _item(batch[k], index) for k in keys if k in batch}


def _item(value: Any, index: int) -> Any:
    if isinstance(value, (list, tuple)):
        return value[index]
    if isinstance(value, torch.Tensor) and value.ndim >= 1:
        return value[index]
    return value


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, torch.Tensor) and value.numel() == 1 else value


def quality_agreement(
    records: Sequence[Mapping[str, Any]], low: float = 0.7, bad: float = 0.5
) -> dict[str, Any]:
    """How well the quality score agreed with the Dice: Spearman correlation, AUROC of the score for
    "Dice < ``low``", and the review's catch rate of patients under ``bad`` and its rate on the others.

    Args:
        records: per-patient records with ``dice``, ``qc_score`` and ``review``.
        low, bad: the Dice thresholds.

    Returns:
        the figures (``None`` where undefined: fewer than 2 patients, no patient on one side).
    """
    from scipy import stats

    dice = np.array([float(r["dice"]) for r in records])
    score = np.array([float(r["qc_score"]) for r in records])
    review = np.array([r.get("review") == "yes" for r in records])
    positive = dice < low
    auroc = None
    if positive.any() and (~positive).any():
        pos, neg = score[positive], score[~positive]
        wins = (pos[:, None] < neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
        auroc = float(wins / (len(pos) * len(neg)))
    spearman = (
        float(stats.spearmanr(score, dice).correlation) if len(dice) > 2 and np.ptp(score) > 0 else None
    )
    worst = dice < bad
    return {
        "patients": len(dice),
        "spearman_qc_score_dice": spearman,
        f"auroc_qc_score_dice_under_{low}": auroc,
        "mean_abs_error": float(np.abs(score - dice).mean()),
        "reviewed": int(review.sum()),
        f"review_catches_under_{bad}": float((review & worst).sum() / worst.sum()) if worst.any() else None,
        "review_flags_others": float((review & ~worst).sum() / (~worst).sum()) if (~worst).any() else None,
    }
