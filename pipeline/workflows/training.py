"""Train one fold: build every object of a run, resume it, run it.

Folds: ``fold`` is held out for testing (``evaluate``); ``val_fold`` (default ``fold + 1``) selects the
best checkpoint and drives early stopping; training uses every other fold.

A resumed run keeps its own settings, those of its ``config.json`` (:func:`resumed_config`): an option given
that differs is refused, except the ones that change nothing the run computes (:data:`SAFE_ON_RESUME`, said
in the log). A finished run (its ``training_done.json``) is not trained again and its files stay unchanged.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from ignite.engine import Events
from ignite.handlers import Checkpoint, EarlyStopping
from monai.engines import SupervisedTrainer
from monai.handlers import LrScheduleHandler
from monai.utils import set_determinism
from torch.optim.lr_scheduler import ReduceLROnPlateau

from pipeline.config import RunConfig, read_config_file, resolve_device, validate_config
from pipeline.engines import (
    KEY_METRIC,
    build_evaluator,
    build_train_loader,
    build_trainer,
    build_val_loader,
    mean_dice_metric,
)
from pipeline.model_files import MODEL_KEY, ConfigState, check_model_config, create_network, load_checkpoint
from pipeline.safety import atomic_write_json, check_output_location
from pipeline.training.checkpoints import BEST_NAME, RNGState, epoch_checkpoints, find_last_checkpoint
from pipeline.training.handlers import (
    AtomicCheckpointSaver,
    EpochSummaryHandler,
    GradientClipHandler,
    IntervalValidationHandler,
    TensorBoardHandlers,
)
from pipeline.training.losses import build_loss
from pipeline.training.optim import build_optimizer, build_scheduler
from pipeline.transforms import build_transforms
from pipeline.workflows.builders import (
    cached_dataset,
    make_inferer,
    make_postprocessing,
    split_datalist,
    transform_settings,
)

logger = logging.getLogger(__name__)

DONE_NAME = "training_done.json"
CONFIG_NAME = "config.json"
RUN_LOCATION = ("output", "name", "fold")
"""The options that name a run's folder (``OUTPUT/NAME/fold<k>``): they find the run to resume."""
SAFE_ON_RESUME = ("device", "num_workers", "progress")
"""The options a resumed run may change: where it computes, how its data is loaded, what it shows."""
_NOT_SETTINGS = ("resume", "overwrite")  # what to do with the run folder, not how the run trains
_PATH_OPTIONS = ("data", "output", "cache_dir")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _shown(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return " ".join(_shown(v) for v in value)
    return json.dumps(value) if isinstance(value, (dict, bool)) or value is None else str(value)


def _same(name: str, a: Any, b: Any) -> bool:
    """Whether two checked values of the option ``name`` mean the same (paths resolved, numbers compared)."""
    if name in _PATH_OPTIONS and a is not None and b is not None:
        return Path(a).resolve() == Path(b).resolve()
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(name, x, y) for x, y in zip(a, b, strict=True))
    return a == b


def read_run_config(run_dir: str | Path) -> RunConfig:
    """The configuration a training run saved in ``run_dir/config.json``.

    Args:
        run_dir: the run's folder (``OUTPUT/NAME/fold<k>``).

    Returns:
        the run's :class:`RunConfig`.

    Raises:
        FileNotFoundError: no ``config.json``.
        ValueError: one line naming the file, when it is not a configuration of this version.
    """
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: the run's configuration is missing, so the run cannot be resumed with its own "
            "settings; start it again with --overwrite"
        )
    return RunConfig.from_dict(read_config_file(path), source=path)


def resumed_config(
    given: Mapping[str, Any], safe: Iterable[str] = SAFE_ON_RESUME, log_changes: bool = True
) -> RunConfig:
    """The configuration that continues a run (``--resume``): the run's own ``config.json``.

    The run is found from ``output``, ``name`` and ``fold`` (given, or their defaults). Every other option
    given must equal the run's, except ``safe`` ones, which replace the run's and are said in the log.

    Args:
        given: the options given explicitly (command line, ``--config``), checked
            (:func:`pipeline.config.checked_options`); options left at their defaults are not in it.
        safe: the options that may differ from the run's.
        log_changes: say the safe options that differ in one log line.

    Returns:
        the run's configuration with ``resume`` set and the safe options given.

    Raises:
        FileNotFoundError: the folder holds no run to resume (no epoch checkpoint and no finished run).
        ValueError: one line naming every option given that differs from the run's, and what to do.
    """
    run_dir = RunConfig.from_dict({k: v for k, v in given.items() if k in RUN_LOCATION}).run_dir()
    ckpt_dir = run_dir / "checkpoints"
    if find_last_checkpoint(ckpt_dir) is None and not (run_dir / DONE_NAME).is_file():
        raise FileNotFoundError(f"{ckpt_dir}: no checkpoint_epoch=N.pt to resume from (--resume)")
    saved = read_run_config(run_dir)
    differing, changed = [], []
    for name, value in given.items():
        if name in RUN_LOCATION or name in _NOT_SETTINGS or _same(name, value, getattr(saved, name)):
            continue
        words = f"{_flag(name)} {_shown(value)} (the run's: {_shown(getattr(saved, name))})"
        (changed if name in safe else differing).append(words)
    if differing:
        raise ValueError(
            f"{run_dir}: {', '.join(differing)}: a resumed run keeps its own settings ({CONFIG_NAME}); "
            "resume without these options, or start again with --overwrite or another --name"
        )
    if changed and log_changes:
        logger.info("%s: resuming with %s", run_dir, ", ".join(changed))
    values = {**asdict(saved), **{k: given[k] for k in safe if k in given}}
    return RunConfig.from_dict({**values, "resume": True, "overwrite": bool(given.get("overwrite", False))})


def check_resumable(cfg: RunConfig, run_dir: Path) -> None:
    """Refuse to resume the run in ``run_dir`` with settings other than its own.

    Args:
        cfg: the configuration to resume with (every option counts as given).
        run_dir: the run's folder, with its ``config.json``.

    Raises:
        ValueError: an option other than :data:`SAFE_ON_RESUME` differs from the run's ``config.json``.
    """
    if (run_dir / CONFIG_NAME).is_file():
        resumed_config({f.name: getattr(cfg, f.name) for f in fields(cfg)}, log_changes=False)


def run_files(run_dir: Path) -> list[Path]:
    """The files a training run writes in its folder (what ``--overwrite`` may remove, nothing else)."""
    ckpt = run_dir / "checkpoints"
    found = [
        run_dir / CONFIG_NAME,
        run_dir / DONE_NAME,
        ckpt / BEST_NAME,
        *(p for _, p in epoch_checkpoints(ckpt)),
    ]
    found += (run_dir / "tensorboard").glob("events.out.tfevents.*")
    return [p for p in found if p.is_file()]


def _guard_run_dir(cfg: RunConfig, run_dir: Path) -> None:
    existing = run_files(run_dir)
    trained = [p for p in existing if p.name != CONFIG_NAME and p.parent.name != "tensorboard"]
    if not trained or cfg.resume:
        return
    if not cfg.overwrite:
        raise ValueError(
            f"{run_dir}: holds a training run; continue it with --resume, start it again with --overwrite "
            "(removes only that run's files) or choose another --name"
        )
    for path in existing:
        path.unlink()
    logger.info("--overwrite: removed %d files of the earlier run in %s", len(existing), run_dir)


def prepare_run(cfg: RunConfig) -> dict[str, Any]:
    """Build every object of a training run without running it (the tests reach inside).

    Returns:
        a dict with ``trainer``, ``evaluator``, ``network``, ``run_dir``, ``ckpt_dir``, ``device``,
        ``to_save`` (what the epoch checkpoint holds), ``train_transform`` and the data ``splits``.
    """
    validate_config(cfg)
    run_dir = cfg.run_dir()
    ckpt_dir = run_dir / "checkpoints"
    device = resolve_device(cfg.device)
    train_files, val_files, test_files = split_datalist(cfg)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    set_determinism(seed=cfg.seed)
    logger.info(
        "fold %d: %d training, %d validation, %d test patients",
        cfg.fold,
        len(train_files),
        len(val_files),
        len(test_files),
    )
    settings = transform_settings(cfg)
    train_ds = cached_dataset(cfg, train_files, build_transforms("train", settings), "train")
    train_loader = build_train_loader(
        train_ds,
        batch_size=cfg.batch_size,
        num_samples=cfg.num_samples,
        volume_repeats=cfg.volume_repeats,
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
        seed=cfg.seed,
    )
    # same order as the bundle's train.json resolves them: MONAI's DataLoader re-seeds torch's generator
    # when it is built, so the network's initial weights and the sampler depend on this order
    network = create_network(cfg).to(device)
    val_ds = cached_dataset(cfg, val_files, build_transforms("val", settings), "val")
    val_loader = build_val_loader(val_ds, num_workers=cfg.num_workers)
    optimizer = build_optimizer(
        cfg.optimizer, network.parameters(), cfg.lr, cfg.momentum, cfg.weight_decay, cfg.nesterov
    )
    loss_function = build_loss(cfg.loss, cfg.num_classes, cfg.deep_supervision, cfg.batch_dice)
    scheduler = build_scheduler(
        cfg.scheduler,
        optimizer,
        cfg.epochs,
        cfg.min_lr,
        cfg.factor,
        cfg.patience,
        cfg.milestones,
        cfg.gamma,
        cfg.warmup_epochs,
    )
    config_state = ConfigState(asdict(cfg))
    best_saver = AtomicCheckpointSaver(
        save_dir=str(ckpt_dir),
        save_dict={MODEL_KEY: network, "config": config_state},
        save_key_metric=True,
        key_metric_filename=BEST_NAME,
    )
    # train_on_all: the watched fold is the test fold, so nothing may be chosen on it (the last model is kept)
    val_handlers: list[Any] = [] if cfg.train_on_all else [best_saver]
    plateau = isinstance(scheduler, ReduceLROnPlateau)
    if plateau:
        val_handlers.append(
            LrScheduleHandler(scheduler, step_transform=lambda e: e.state.metrics[KEY_METRIC])
        )
    evaluator = build_evaluator(
        device=device,
        val_data_loader=val_loader,
        network=network,
        inferer=make_inferer(cfg),
        postprocessing=make_postprocessing(cfg),
        key_val_metric=mean_dice_metric(),
        val_handlers=val_handlers,
        amp=cfg.amp,
    )
    evaluator.state_dict_user_keys.extend(["best_metric", "best_metric_epoch"])

    train_xf = train_ds.transform
    to_save: dict[str, Any] = {
        MODEL_KEY: network,
        "optimizer": optimizer,
        "lr_scheduler": scheduler,
        "evaluator": evaluator,
        "best_checkpointer": best_saver,
        "rng": RNGState([train_xf]),
        "config": config_state,
    }
    tensorboard = TensorBoardHandlers(run_dir / "tensorboard", evaluator, cfg.overlay_images)
    train_handlers: list[Any] = [
        IntervalValidationHandler(evaluator, cfg.val_interval),
        *([] if plateau else [LrScheduleHandler(scheduler, print_lr=False)]),
        tensorboard,
        EpochSummaryHandler(evaluator, KEY_METRIC, tensorboard.writer, progress=cfg.progress),
        GradientClipHandler(cfg.grad_clip),
        # last: the epoch checkpoint is written after everything else of the epoch, RNG state included
        epoch_saver := AtomicCheckpointSaver(
            save_dir=str(ckpt_dir), save_dict=to_save, save_interval=1, n_saved=2
        ),
    ]
    trainer = build_trainer(
        device=device,
        max_epochs=cfg.epochs,
        train_data_loader=train_loader,
        network=network,
        optimizer=optimizer,
        loss_function=loss_function,
        amp=cfg.amp,
        amp_cpu=cfg.amp_cpu,
        train_handlers=train_handlers,
    )
    trainer.lr_scheduler = scheduler
    to_save["trainer"] = trainer  # the epoch checkpoint reads its objects when it saves
    if trainer.scaler is not None:
        to_save["scaler"] = trainer.scaler
    if cfg.early_stopping > 0:
        # Ignite's EarlyStopping on the validation metric (its counter and best score are in the checkpoint)
        stopper = EarlyStopping(cfg.early_stopping, lambda e: e.state.metrics[KEY_METRIC], trainer)
        evaluator.add_event_handler(Events.EPOCH_COMPLETED, stopper)
        to_save["early_stopping"] = stopper
    return {
        "cfg": cfg,
        "run_dir": run_dir,
        "ckpt_dir": ckpt_dir,
        "device": device,
        "network": network,
        "trainer": trainer,
        "evaluator": evaluator,
        "to_save": to_save,
        "epoch_saver": epoch_saver,
        "train_transform": train_xf,
        "splits": {"train": train_files, "val": val_files, "test": test_files},
    }


def resume_run(run: Mapping[str, Any]) -> int:
    """Load the last checkpoint of the run folder into every object of the run.

    Returns:
        the epoch it resumes after.

    Raises:
        FileNotFoundError: no ``checkpoint_epoch=N.pt`` in the run's checkpoint folder.
        ValueError: the checkpoint was made with another network configuration.
    """
    path = find_last_checkpoint(run["ckpt_dir"])
    if path is None:
        raise FileNotFoundError(f"{run['ckpt_dir']}: no checkpoint_epoch=N.pt to resume from (--resume)")
    ckpt = load_checkpoint(path)
    check_model_config(ckpt["config"], asdict(run["cfg"]), path)
    trainer: SupervisedTrainer = run["trainer"]
    max_epochs = trainer.state.max_epochs
    to_load = {k: v for k, v in run["to_save"].items() if k != "config"}
    Checkpoint.load_objects(to_load=to_load, checkpoint=ckpt)
    trainer.state.max_epochs = max(max_epochs, trainer.state.epoch)
    # the epoch checkpoints already there count towards the two kept, so older ones are removed in turn
    kept = [(n, p.name) for n, p in epoch_checkpoints(run["ckpt_dir"]) if n <= trainer.state.epoch]
    run["epoch_saver"].load_state_dict({"interval": {"_saved": kept}})
    logger.info("resumed from %s (epoch %d)", path, trainer.state.epoch)
    return int(trainer.state.epoch)


def save_final_model(run: Mapping[str, Any]) -> Path:
    """Write the network as it is now as the run's model file (``checkpoints/best_model.pt``, atomically):
    what ``train_on_all`` keeps, as nnU-Net keeps its final checkpoint.

    Returns:
        the path written.
    """
    saver = AtomicCheckpointSaver(
        save_dir=str(run["ckpt_dir"]),
        save_dict={MODEL_KEY: run["network"], "config": run["to_save"]["config"]},
        save_final=True,
        final_filename=BEST_NAME,
        name=logger.name,
    )
    return saver.save_final(run["trainer"])


def finished_run(run_dir: Path) -> dict[str, Any] | None:
    """The result of a run that finished (its ``training_done.json``), said in one log line; ``None`` when the
    run has not finished. Nothing is read but that file, nothing is written.

    Args:
        run_dir: the run's folder.

    Returns:
        the saved result with ``"finished": True``, or ``None``.
    """
    done = run_dir / DONE_NAME
    if not done.is_file():
        return None
    try:
        result = json.loads(done.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        result = {}
    result = {**(result if isinstance(result, dict) else {}), "run_dir": str(run_dir), "finished": True}
    logger.info(
        "%s: finished (%s epochs; best %s %s at epoch %s); nothing to resume, its files are unchanged: "
        "evaluate it, or train it again with --overwrite",
        run_dir,
        result.get("epochs", "?"),
        KEY_METRIC,
        f"{result['best_metric']:.4f}" if isinstance(result.get("best_metric"), float) else "?",
        result.get("best_metric_epoch", "?"),
    )
    return result


def train(
    cfg: RunConfig | Mapping[str, Any], on_built: Callable[[dict[str, Any]], None] | None = None
) -> dict:
    """Train one fold; returns ``{"best_metric", "best_metric_epoch", "run_dir", "epochs"}``.

    A folder that holds a run is refused unless ``resume`` (continue it) or ``overwrite`` (remove that
    run's files, nothing else, and start again). A resumed run must be given its own settings (see
    :func:`resumed_config`, which makes them from the options a user gave) and keeps its ``config.json``; a
    finished one is not trained again (its saved result is returned, with ``"finished": True``).

    Args:
        cfg: the run configuration.
        on_built: called with the prepared run (dict of :func:`prepare_run`) before training starts.
    """
    cfg = cfg if isinstance(cfg, RunConfig) else RunConfig.from_dict(cfg)
    validate_config(cfg)
    if cfg.members != 1:
        raise ValueError(
            f"members={cfg.members}: training builds one network; make ensembles of trained "
            "models with `lggseg ensemble`"
        )
    check_output_location(cfg.run_dir(), [cfg.data])
    _guard_run_dir(cfg, cfg.run_dir())
    if cfg.resume:
        check_resumable(cfg, cfg.run_dir())
        finished = finished_run(cfg.run_dir())
        if finished is not None:
            return finished
    run = prepare_run(cfg)
    text = json.dumps(asdict(cfg), indent=2, default=str)
    logger.info("resolved configuration:\n%s", text)
    trainer = run["trainer"]
    resumed_after = resume_run(run) if cfg.resume else 0
    if not (cfg.resume and (run["run_dir"] / CONFIG_NAME).is_file()):  # a resumed run keeps its own
        atomic_write_json(run["run_dir"] / CONFIG_NAME, asdict(cfg))
    if resumed_after >= cfg.epochs:
        logger.info("nothing to resume: the run already finished its %d epochs", cfg.epochs)
    else:
        if on_built is not None:
            on_built(run)
        trainer.run()
    evaluator = run["evaluator"]
    if cfg.train_on_all:
        save_final_model(run)
    result = {
        "best_metric": float(evaluator.state.best_metric),
        "best_metric_epoch": int(evaluator.state.best_metric_epoch),
        # completed epochs (after an early stop Ignite has already counted the next epoch in state.epoch)
        "epochs": int(trainer.state.iteration // trainer.state.epoch_length),
        "run_dir": str(run["run_dir"]),
    }
    logger.info(
        "training done: best %s %.4f at epoch %d",
        KEY_METRIC,
        result["best_metric"],
        result["best_metric_epoch"],
    )
    atomic_write_json(Path(result["run_dir"]) / DONE_NAME, result)
    return result
