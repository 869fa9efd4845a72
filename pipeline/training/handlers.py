"""Ignite handlers of a training run: progress bar, epoch line, TensorBoard scalars and overlays.

Every handler here is an ``attach(engine)`` object that goes into an engine's handler list (the CLI's
workflows and the bundle's ``train.json`` alike). Validation, schedules and statistics use MONAI's handlers
directly, early stopping Ignite's ``EarlyStopping``; :class:`AtomicCheckpointSaver` saves as MONAI's
``CheckpointSaver`` does, on Ignite's ``Checkpoint`` writing each file under a temporary name first.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver, ProgressBar
from monai.engines.utils import IterationEvents
from monai.handlers import TensorBoardStatsHandler, ValidationHandler
from monai.utils import is_scalar
from torch.utils.tensorboard import SummaryWriter

from pipeline.ingestion.sequences import FLAIR_CHANNEL
from pipeline.safety import NoSpaceLeftError, atomic_path, no_space_left, remove_stale_temporaries
from pipeline.visualize.overlays import overlay_rgb

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


class _AtomicDiskSaver(DiskSaver):
    """Ignite's ``DiskSaver`` writing each file as the rest of lggseg does
    (:func:`pipeline.safety.atomic_path`): under a hidden temporary name that carries this process's id,
    fsynced, renamed into place. Ignite's own atomic mode names its temporary ``tmpXXXXXXXX``, which a run
    killed with ``kill -9`` leaves behind (18 MB each) and which no one can tell from a user's file; these
    are removed by the next run in the folder once their process is gone
    (:func:`pipeline.safety.remove_stale_temporaries`). A full disk is
    :class:`pipeline.safety.NoSpaceLeftError` naming the file (torch says ``[enforce fail at
    inline_container.cc]``)."""

    def __init__(self, dirname: str | Path) -> None:
        super().__init__(dirname, atomic=True, require_empty=False)
        remove_stale_temporaries(self.dirname)

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if idist.get_rank() != self.save_on_rank:
            return
        path = self.dirname / filename
        try:
            with atomic_path(path) as temporary:
                torch.save(checkpoint, temporary)
        except (OSError, RuntimeError) as error:
            full = no_space_left(error, path)
            if full is None:
                raise
            raise NoSpaceLeftError(full.path) from None


class _FixedNameDiskSaver(_AtomicDiskSaver):
    """The atomic saver for the one file of a fixed name. ``Checkpoint`` removes the file it is about to write
    again (or, resuming a run saved before, the same file under Ignite's own name), which would leave no best
    model until the new one is written: the atomic write replaces it in one step instead, so nothing is
    removed."""

    def remove(self, filename: str) -> None:
        pass


class AtomicCheckpointSaver:
    """Save checkpoints as MONAI's ``CheckpointSaver`` does (the best model by the key metric, and/or every N
    epochs keeping the last ``n_saved``), on Ignite's public ``Checkpoint`` with an atomic ``DiskSaver``: each
    file is written under a temporary name and renamed into place, so an interrupted run never leaves a
    half-written model file. ``state_dict`` / ``load_state_dict`` carry what was saved (Ignite's
    ``Checkpoint.state_dict`` format, ``{"key_metric": {"_saved": [...]}, "interval": {"_saved": [...]}}``),
    so a resumed run keeps the best score and removes the old epoch files in turn.

    Args:
        save_dir: folder of the files (created when missing).
        save_dict: the objects saved, ``{"name": object with state_dict()}``.
        name: name of the logger (default: the engine's logger).
        file_prefix: prefix of the file names.
        save_key_metric: save when the key metric is the best so far.
        key_metric_name: the metric in ``engine.state.metrics`` (default: ``engine.state.key_metric_name``,
            which MONAI's workflows set).
        key_metric_n_saved: best files kept.
        key_metric_filename: fixed name of the best file (then ``key_metric_n_saved`` must be 1).
        key_metric_greater_or_equal: an equal score replaces the saved best.
        key_metric_negative_sign: smaller is better (the score is negated).
        epoch_level: ``save_interval`` counts epochs (``True``) or iterations.
        save_interval: save every N epochs (or iterations); 0: no interval checkpoints.
        n_saved: interval files kept (``None``: all).
        save_final: save once when the engine's run completes (what ``train_on_all`` keeps, as nnU-Net
            keeps its final checkpoint). Unlike MONAI's ``save_final``, nothing is saved when the run
            stops on an exception: an interrupted training leaves no file that looks finished.
        final_filename: the name of that file.

    Raises:
        ValueError: ``key_metric_filename`` with ``key_metric_n_saved`` > 1, or nothing to save.
    """

    def __init__(
        self,
        save_dir: str | Path,
        save_dict: dict[str, Any],
        name: str | None = None,
        file_prefix: str = "",
        save_key_metric: bool = False,
        key_metric_name: str | None = None,
        key_metric_n_saved: int = 1,
        key_metric_filename: str | None = None,
        key_metric_greater_or_equal: bool = False,
        key_metric_negative_sign: bool = False,
        epoch_level: bool = True,
        save_interval: int = 0,
        n_saved: int | None = None,
        save_final: bool = False,
        final_filename: str = "model.pt",
    ) -> None:
        if not save_dict:
            raise ValueError("AtomicCheckpointSaver needs objects to save (save_dict)")
        if key_metric_filename is not None and key_metric_n_saved > 1:
            raise ValueError("a fixed key_metric_filename holds one model: key_metric_n_saved must be 1")
        self.save_dir, self.save_dict, self.name = Path(save_dir), save_dict, name
        self.key_metric_name, self.sign = key_metric_name, -1.0 if key_metric_negative_sign else 1.0
        self.epoch_level, self.save_interval = epoch_level, save_interval
        self.logger = logging.getLogger(name)
        self.checkpoints: dict[str, Checkpoint] = {}
        if save_key_metric:
            fixed = key_metric_filename is not None
            self.checkpoints["key_metric"] = Checkpoint(
                to_save=save_dict,
                save_handler=(
                    _FixedNameDiskSaver(self.save_dir) if fixed else _AtomicDiskSaver(self.save_dir)
                ),
                filename_prefix=file_prefix,
                score_function=self._key_metric_score,
                score_name="key_metric",
                n_saved=key_metric_n_saved,
                # a fixed name is a pattern without fields (braces in it escaped)
                filename_pattern=key_metric_filename.replace("{", "{{").replace("}", "}}") if fixed else None,
                greater_or_equal=key_metric_greater_or_equal,
            )
        if save_interval > 0:
            self.checkpoints["interval"] = Checkpoint(
                to_save=save_dict,
                save_handler=_AtomicDiskSaver(self.save_dir),
                filename_prefix=file_prefix,
                score_function=self._step,
                score_name="epoch" if epoch_level else "iteration",
                n_saved=n_saved,
            )
        if save_final:
            self.checkpoints["final"] = Checkpoint(
                to_save=save_dict,
                save_handler=_FixedNameDiskSaver(self.save_dir),
                filename_pattern=final_filename.replace("{", "{{").replace("}", "}}"),
            )

    def _key_metric_score(self, engine: Engine) -> float:
        name = self.key_metric_name or getattr(engine.state, "key_metric_name", None)
        if name is None:
            raise ValueError("save_key_metric=True needs key_metric_name or an engine with a key metric")
        metric = engine.state.metrics[name]
        if not is_scalar(metric):
            warnings.warn(f"key metric {name}={metric} is not a scalar: no model saved", stacklevel=2)
            return -1.0
        return self.sign * float(metric)

    def _step(self, engine: Engine) -> int:
        return engine.state.epoch if self.epoch_level else engine.state.iteration

    def attach(self, engine: Engine) -> None:
        """Save the best model after every epoch of ``engine``, the interval checkpoints every N epochs and
        the final model when the run completes."""
        if self.name is None:
            self.logger = engine.logger
        if "key_metric" in self.checkpoints:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.checkpoints["key_metric"])
        if "interval" in self.checkpoints:
            event = Events.EPOCH_COMPLETED if self.epoch_level else Events.ITERATION_COMPLETED
            engine.add_event_handler(event(every=self.save_interval), self._save_interval)
        if "final" in self.checkpoints:
            engine.add_event_handler(Events.COMPLETED, self.save_final)

    def save_final(self, engine: Engine) -> Path:
        """Save the final model of ``engine`` now (also called directly, e.g. by a resumed run that had
        already finished its epochs).

        Returns:
            the path written.
        """
        self.checkpoints["final"](engine)
        path = Path(self.checkpoints["final"].last_checkpoint)
        self.logger.info("saved the final model of epoch %d as %s", engine.state.epoch, path)
        return path

    def _save_interval(self, engine: Engine) -> None:
        self.checkpoints["interval"](engine)
        self.logger.info(
            "saved checkpoint at %s %d", "epoch" if self.epoch_level else "iteration", self._step(engine)
        )

    def state_dict(self) -> dict[str, Any]:
        """What was saved, per checkpoint kind: ``{"key_metric": {"_saved": [(score, file), ...]}, ...}``."""
        return {kind: checkpoint.state_dict() for kind, checkpoint in self.checkpoints.items()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore what was saved (the kinds this saver has; others are ignored)."""
        for kind, checkpoint in self.checkpoints.items():
            if kind in state_dict:
                checkpoint.load_state_dict(state_dict[kind])


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
