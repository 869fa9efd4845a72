"""Ignite handlers of a training run: progress bar, epoch line, TensorBoard scalars and overlays.

Every handler here is an ``attach(engine)`` object that goes into an engine's handler list (the CLI's
workflows and the bundle's ``train.json`` alike). Validation, schedules, statistics and early stopping
use MONAI's handlers directly; :class:`AtomicCheckpointSaver` is MONAI's ``CheckpointSaver`` writing each
file under a temporary name first.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar
from monai.engines.utils import IterationEvents
from monai.handlers import CheckpointSaver, TensorBoardStatsHandler, ValidationHandler
from torch.utils.tensorboard import SummaryWriter

from pipeline.evaluation.overlays import FLAIR_CHANNEL, overlay_rgb

logger = logging.getLogger("lggseg.train")


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
    ``TensorBoardStatsHandler``) and overlays of a few validation slices (FLAIR, truth in green, prediction
    in red; the slice with the most tumour of each of the first ``num_images`` patients).
    ``attach(trainer)`` wires the trainer and the evaluator; the writer is closed when training completes.

    Args:
        log_dir: folder of the event files.
        evaluator: the validation engine.
        num_images: validation patients shown as overlays (0: none).
    """

    def __init__(self, log_dir: str | Path, evaluator: Engine, num_images: int = 3) -> None:
        self.writer = SummaryWriter(log_dir=str(log_dir))
        self.evaluator, self.num_images = evaluator, num_images
        self.trainer: Engine | None = None
        self._images: list[np.ndarray] = []

    def attach(self, trainer: Engine) -> None:
        self.trainer = trainer
        TensorBoardStatsHandler(
            summary_writer=self.writer,
            iteration_log=True,
            epoch_log=False,
            output_transform=lambda out: out["loss"].detach().item(),
            tag_name="train/loss",
        ).attach(trainer)
        TensorBoardStatsHandler(
            summary_writer=self.writer,
            iteration_log=False,
            epoch_log=True,
            output_transform=lambda _: None,
            global_epoch_transform=lambda _: trainer.state.epoch,
        ).attach(self.evaluator)
        if self.num_images:
            self.evaluator.add_event_handler(Events.EPOCH_STARTED, lambda _: self._images.clear())
            self.evaluator.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
            self.evaluator.add_event_handler(Events.EPOCH_COMPLETED, self._write)
        trainer.add_event_handler(Events.COMPLETED, lambda _: self.close())

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
        self.writer.add_images("val/overlay", batch, self.trainer.state.epoch if self.trainer else 0)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


class GradientClipHandler:
    """Clip the gradient norm after every backward pass (unscaling AMP gradients first).

    Args:
        max_norm: the largest gradient norm allowed (<= 0: do nothing).
    """

    def __init__(self, max_norm: float) -> None:
        self.max_norm = max_norm

    def attach(self, engine: Engine) -> None:
        if self.max_norm > 0:
            engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if getattr(engine, "amp", False) and getattr(engine, "scaler", None) is not None:
            engine.scaler.unscale_(engine.optimizer)
        torch.nn.utils.clip_grad_norm_(engine.network.parameters(), self.max_norm)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` whose files are written to a temporary name and renamed into place, so
    an interrupted run never leaves a half-written model file. ``state_dict`` / ``load_state_dict`` carry
    the best score seen, so a resumed run does not replace the best model with a worse one.

    Args:
        same as ``monai.handlers.CheckpointSaver``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                checkpoint.save_handler._atomic = True  # ignite's DiskSaver: temporary file, then rename

    def _checkpoints(self) -> dict[str, Any]:
        found = {"key_metric": self._key_metric_checkpoint, "interval": self._interval_checkpoint}
        return {name: c for name, c in found.items() if c is not None}

    def state_dict(self) -> dict[str, Any]:
        return {name: c.state_dict() for name, c in self._checkpoints().items()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for name, checkpoint in self._checkpoints().items():
            if name in state_dict:
                checkpoint.load_state_dict(state_dict[name])


class IntervalValidationHandler(ValidationHandler):
    """MONAI's ``ValidationHandler`` that runs every ``interval`` epochs and after the last epoch.

    Args:
        validator: the evaluator to run.
        interval: validate every N epochs.
    """

    def __init__(self, validator: Any, interval: int = 1) -> None:
        super().__init__(interval=interval, validator=validator, epoch_level=True)

    def attach(self, engine: Engine) -> None:
        def due(trainer: Engine, epoch: int) -> bool:
            return epoch % self.interval == 0 or epoch == trainer.state.max_epochs

        engine.add_event_handler(Events.EPOCH_COMPLETED(event_filter=due), self)
