"""Ignite handlers of a training run: progress bar, epoch line, TensorBoard scalars and overlays.

Checkpointing, validation, schedules and early stopping use MONAI / Ignite handlers directly
(see :func:`pipeline.engines.attach_training_handlers`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar
from monai.handlers import TensorBoardStatsHandler
from scipy import ndimage
from torch.utils.tensorboard import SummaryWriter

logger = logging.getLogger("lggseg.train")

FLAIR_CHANNEL = 1


def overlay_rgb(image: np.ndarray, truth: np.ndarray | None, pred: np.ndarray) -> np.ndarray:
    """RGB ``(3, H, W)`` float image: a grey slice with the outline of the truth (red) and prediction (green).

    Args:
        image: the grey slice ``(H, W)`` (any range; scaled to its 1st-99th percentile).
        truth: binary truth ``(H, W)`` or ``None``.
        pred: binary prediction ``(H, W)``.
    """
    low, high = np.percentile(image, [1, 99]) if image.size else (0.0, 1.0)
    grey = np.clip((image - low) / (high - low if high > low else 1.0), 0, 1)
    rgb = np.stack([grey, grey, grey])
    for mask, colour in ((truth, (1.0, 0.0, 0.0)), (pred, (0.0, 1.0, 0.0))):
        if mask is None:
            continue
        mask = mask > 0
        outline = mask & ~ndimage.binary_erosion(mask)
        for c in range(3):
            rgb[c][outline] = colour[c]
    return rgb.astype(np.float32)


class EpochSummaryHandler:
    """One log line per epoch (loss, learning rate, validation metric, best so far, time) and a tqdm
    progress bar per iteration; the epoch loss and learning rate also go to TensorBoard.

    Args:
        evaluator: the validation engine (its metrics and best metric are reported).
        key_metric: name of the validation metric.
        writer: TensorBoard writer (``None``: no scalars).
        progress: show the per-iteration progress bar.
    """

    def __init__(
        self, evaluator: Engine, key_metric: str, writer: SummaryWriter | None, progress: bool = True
    ):
        self.evaluator, self.key_metric, self.writer, self.progress = evaluator, key_metric, writer, progress
        self._loss_sum, self._count, self._start = 0.0, 0, 0.0

    def attach(self, engine: Engine) -> None:
        if self.progress:
            ProgressBar(persist=False).attach(
                engine, output_transform=lambda out: {"loss": out["loss"].detach().item()}
            )
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._accumulate)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._summary)

    def _reset(self, engine: Engine) -> None:
        self._loss_sum, self._count, self._start = 0.0, 0, time.perf_counter()

    def _accumulate(self, engine: Engine) -> None:
        self._loss_sum += engine.state.output["loss"].detach().item()
        self._count += 1

    def _summary(self, engine: Engine) -> None:
        loss = self._loss_sum / max(1, self._count)
        lr = engine.optimizer.param_groups[0]["lr"]
        parts = [f"epoch {engine.state.epoch}/{engine.state.max_epochs}", f"loss {loss:.4f}", f"lr {lr:.3g}"]
        metric = self.evaluator.state.metrics.get(self.key_metric)
        if metric is not None and self.evaluator.state.epoch == engine.state.epoch:
            best = self.evaluator.state.best_metric
            parts.append(
                f"{self.key_metric} {metric:.4f} (best {best:.4f} @ epoch "
                f"{self.evaluator.state.best_metric_epoch})"
            )
        parts.append(f"{time.perf_counter() - self._start:.1f} s")
        logger.info(" | ".join(parts))
        if self.writer is not None:
            self.writer.add_scalar("train/epoch_loss", loss, engine.state.epoch)
            self.writer.add_scalar("train/lr", lr, engine.state.epoch)


class TensorBoardHandlers:
    """TensorBoard of a run: training loss per iteration, validation metrics per epoch (MONAI
    ``TensorBoardStatsHandler``) and overlays of a few validation slices (FLAIR, truth in red, prediction
    in green; the slice with the most tumour of each of the first ``num_images`` patients).

    Args:
        log_dir: folder of the event files.
        trainer: the training engine.
        evaluator: the validation engine.
        num_images: validation patients shown as overlays (0: none).
    """

    def __init__(self, log_dir: str | Path, trainer: Engine, evaluator: Engine, num_images: int = 3) -> None:
        self.writer = SummaryWriter(log_dir=str(log_dir))
        self.trainer, self.evaluator, self.num_images = trainer, evaluator, num_images
        self._images: list[np.ndarray] = []

    def attach(self) -> None:
        TensorBoardStatsHandler(
            summary_writer=self.writer,
            iteration_log=True,
            epoch_log=False,
            output_transform=lambda out: out["loss"].detach().item(),
            tag_name="train/loss",
        ).attach(self.trainer)
        TensorBoardStatsHandler(
            summary_writer=self.writer,
            iteration_log=False,
            epoch_log=True,
            output_transform=lambda _: None,
            global_epoch_transform=lambda _: self.trainer.state.epoch,
        ).attach(self.evaluator)
        if self.num_images:
            self.evaluator.add_event_handler(Events.EPOCH_STARTED, lambda _: self._images.clear())
            self.evaluator.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
            self.evaluator.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _collect(self, engine: Engine) -> None:
        for item in engine.state.output:
            if len(self._images) >= self.num_images:
                return
            image = torch.as_tensor(item["image"]).detach().cpu().float().numpy()
            label = item.get("label")
            pred = torch.as_tensor(item["pred"]).detach().cpu().numpy()[0]
            truth = None if label is None else torch.as_tensor(label).detach().cpu().numpy()[0]
            area = (truth if truth is not None else pred).reshape(-1, pred.shape[-1]).sum(0)
            k = int(np.argmax(area))
            channel = FLAIR_CHANNEL if image.shape[0] > FLAIR_CHANNEL else 0
            self._images.append(
                overlay_rgb(image[channel, ..., k], None if truth is None else truth[..., k], pred[..., k])
            )

    def _write(self, engine: Engine) -> None:
        if not self._images:
            return
        h = max(i.shape[1] for i in self._images)
        w = max(i.shape[2] for i in self._images)
        batch = np.zeros((len(self._images), 3, h, w), np.float32)
        for i, img in enumerate(self._images):
            batch[i, :, : img.shape[1], : img.shape[2]] = img
        self.writer.add_images("val/overlay", batch, self.trainer.state.epoch)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()
