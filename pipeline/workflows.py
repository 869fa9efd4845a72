"""The CLI's jobs: train, evaluate, infer and cross-validate (floor 4).

This is the one place that turns a :class:`pipeline.config.RunConfig` into the keyword arguments of the
builders (:mod:`pipeline.engines`, :func:`pipeline.networks.build_network`,
:func:`pipeline.transforms.build_transforms`, :func:`pipeline.losses.build_loss`,
:mod:`pipeline.optim`, :class:`pipeline.inference.VolumeInferer`), the same functions the bundle's
JSON configs call.

Folds: ``fold`` is held out for testing (``evaluate``); ``val_fold`` (default ``fold + 1``) selects the
best checkpoint and drives early stopping; training uses every other fold.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from monai.data import Dataset
from monai.engines import SupervisedTrainer
from monai.handlers import EarlyStopHandler, LrScheduleHandler
from monai.utils import set_determinism
from torch.optim.lr_scheduler import ReduceLROnPlateau

from pipeline.cases import find_cases
from pipeline.checkpoint import (
    BEST_NAME,
    MODEL_KEY,
    ConfigState,
    RNGState,
    epoch_checkpoints,
    find_last_checkpoint,
    load_checkpoint,
)
from pipeline.config import KEY_METRIC, MODEL_KEYS, RunConfig, resolve_device, validate_config
from pipeline.data import DATALIST_FILENAME, load_datalist, split_folds
from pipeline.engines import (
    CasesFailed,
    build_dataset,
    build_evaluator,
    build_train_loader,
    build_trainer,
    build_val_loader,
    mean_dice_metric,
    run_per_case,
)
from pipeline.evaluation import PatientReportHandler
from pipeline.handlers import (
    AtomicCheckpointSaver,
    EpochSummaryHandler,
    GradientClipHandler,
    IntervalValidationHandler,
    TensorBoardHandlers,
)
from pipeline.inference import (
    VolumeInferer,
    build_postprocessing,
    check_prediction_targets,
    prediction_writer,
)
from pipeline.losses import build_loss
from pipeline.networks import build_network
from pipeline.optim import build_optimizer, build_scheduler
from pipeline.safety import atomic_write_text, check_output_location
from pipeline.transforms import TransformSettings, build_transforms

logger = logging.getLogger(__name__)

DONE_NAME = "training_done.json"
CONFIG_NAME = "config.json"
LAST_PATTERN = "checkpoint_epoch=*.pt"


def transform_settings(cfg: RunConfig) -> TransformSettings:
    """The transform options of a configuration (training samples padded to the network's stride)."""
    return TransformSettings.from_dict({**asdict(cfg), "divisible": cfg.stride()})


def create_network(cfg: RunConfig | Mapping[str, Any]) -> torch.nn.Module:
    """The network of a configuration, from the registry :func:`pipeline.networks.build_network`."""
    c = cfg if isinstance(cfg, RunConfig) else RunConfig.from_dict(dict(cfg))
    return build_network(
        c.arch,
        c.spatial_dims,
        c.in_channels,
        c.num_classes,
        deep_supervision=c.deep_supervision,
        members=c.members,
        **c.network_kwargs,
    )


def make_inferer(cfg: RunConfig) -> VolumeInferer:
    """The whole-volume inferer of a configuration (validation, evaluation, inference)."""
    return VolumeInferer(
        spatial_dims=cfg.spatial_dims,
        num_classes=cfg.num_classes,
        context=cfg.context,
        divisible=cfg.stride(),
        input_size=cfg.input_size,
        patch_size=cfg.patch_size,
        sw_batch_size=cfg.sw_batch_size,
        tta=cfg.tta,
    )


def make_postprocessing(cfg: RunConfig) -> Any:
    """Threshold and connected-component filters of a configuration."""
    return build_postprocessing(cfg.threshold, cfg.keep_largest, cfg.min_size)


def datalist_path(data: str | Path) -> Path:
    path = Path(data)
    return path / DATALIST_FILENAME if path.is_dir() else path


def split_datalist(cfg: RunConfig) -> tuple[list[dict], list[dict], list[dict]]:
    """Train, validation and test entries of the configured fold (patient-level, from the datalist).

    Raises:
        LGGDataError: missing datalist or an entry naming a missing file.
        ValueError: a fold with no patients, or validation fold = test fold.
    """
    datalist = datalist_path(cfg.data)
    entries = load_datalist(datalist)
    try:
        parts = split_folds(entries, cfg.fold, cfg.val_fold)
    except ValueError as err:
        raise ValueError(f"{datalist}: {err}") from err
    train, val, test = parts["train"], parts["val"], parts["test"]
    return train, val, test


def _cache_dir(cfg: RunConfig, tag: str) -> Path:
    # one folder per transform setting; inside, PersistentDataset keys each file by the data's content
    settings = json.dumps(asdict(transform_settings(cfg)), sort_keys=True, default=str)
    digest = hashlib.sha1(settings.encode()).hexdigest()[:12]
    return Path(cfg.cache_dir or Path(cfg.output) / cfg.name / "cache") / f"{tag}-{digest}"


def _dataset(cfg: RunConfig, files: Sequence[dict], transform: Any, tag: str) -> Dataset:
    cache_dir = _cache_dir(cfg, tag) if cfg.cache == "disk" else None
    return build_dataset(files, transform, cfg.cache, cache_dir, cfg.num_workers, cfg.progress)


def run_files(run_dir: Path) -> list[Path]:
    """The files a training run writes in its folder (what ``--overwrite`` may remove, nothing else)."""
    ckpt = run_dir / "checkpoints"
    found = [run_dir / CONFIG_NAME, run_dir / DONE_NAME, ckpt / BEST_NAME, *ckpt.glob(LAST_PATTERN)]
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
    train_ds = _dataset(cfg, train_files, build_transforms("train", settings), "train")
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
    val_ds = _dataset(cfg, val_files, build_transforms("val", settings), "val")
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
    val_handlers: list[Any] = [best_saver]
    stopper = None
    if cfg.early_stopping > 0:
        stopper = EarlyStopHandler(
            cfg.early_stopping, lambda e: e.state.metrics[KEY_METRIC], epoch_level=True
        )
        val_handlers.append(stopper)
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
        train_handlers=train_handlers,
    )
    trainer.lr_scheduler = scheduler
    to_save["trainer"] = trainer  # the epoch checkpoint reads its objects when it saves
    if trainer.scaler is not None:
        to_save["scaler"] = trainer.scaler
    if stopper is not None:
        stopper.set_trainer(trainer)
        to_save["early_stopping"] = stopper._handler
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


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


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


def check_model_config(saved: Mapping[str, Any], current: Mapping[str, Any], path: Any) -> None:
    """Raise ``ValueError`` when a checkpoint's network options differ from the current ones."""
    diff = {
        k: (saved.get(k), current.get(k))
        for k in MODEL_KEYS
        if k in current and _plain(saved.get(k)) != _plain(current.get(k))
    }
    if diff:
        detail = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"{path} was trained with other network options ({detail})")


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def train(
    cfg: RunConfig | Mapping[str, Any], on_built: Callable[[dict[str, Any]], None] | None = None
) -> dict:
    """Train one fold; returns ``{"best_metric", "best_metric_epoch", "run_dir", "epochs"}``.

    A folder that holds a run is refused unless ``resume`` (continue it) or ``overwrite`` (remove that
    run's files, nothing else, and start again).

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
    run = prepare_run(cfg)
    text = json.dumps(asdict(cfg), indent=2, default=str)
    logger.info("resolved configuration:\n%s", text)
    trainer = run["trainer"]
    resumed_after = resume_run(run) if cfg.resume else 0
    _write_json(run["run_dir"] / CONFIG_NAME, asdict(cfg))
    if resumed_after >= cfg.epochs:
        logger.info("nothing to resume: the run already finished its %d epochs", cfg.epochs)
    else:
        if on_built is not None:
            on_built(run)
        trainer.run()
    evaluator = run["evaluator"]
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
    _write_json(Path(result["run_dir"]) / DONE_NAME, result)
    return result


def load_model(
    checkpoint: str | Path, overrides: Mapping[str, Any] | None = None, device: str = "auto"
) -> tuple[torch.nn.Module, RunConfig, torch.device]:
    """Network (in eval mode, on the device, weights loaded strictly) and configuration of a model file.

    Args:
        checkpoint: ``best_model.pt``, ``checkpoint_epoch=N.pt`` or a bundle's ``model.pt``.
        overrides: configuration values to change (post-processing, TTA, data, ...); network options
            cannot be changed.
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:i]"``.

    Raises:
        FileNotFoundError: missing file. ValueError: not an lggseg model file, or overrides that change the
        network.
    """
    ckpt = load_checkpoint(checkpoint)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    check_model_config(ckpt["config"], {**ckpt["config"], **overrides}, checkpoint)
    cfg = RunConfig.from_dict({**_known(ckpt["config"]), **overrides, "resume": False})
    validate_config(cfg)
    dev = resolve_device(device)
    network = create_network(cfg)
    network.load_state_dict(ckpt[MODEL_KEY])
    return network.to(dev).eval(), cfg, dev


def _known(config: Mapping[str, Any]) -> dict[str, Any]:
    names = set(asdict(RunConfig()))
    return {k: v for k, v in config.items() if k in names}


def _entries_of(data: str | Path, folds: Sequence[int] | None) -> list[dict]:
    return load_datalist(datalist_path(data), folds=folds)


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
        entries = _entries_of(data or cfg.data, [cfg.fold] if folds is None else folds)
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
        raise CasesFailed(failures, len(entries), _write_failures(failures, out) if write else None)
    return {
        "records": report.records,
        "slices": report.slices.compute(),
        "summary": report.summary(),
        "paths": paths,
        "failures": failures,
        "cases": report.case_volumes,
    }


def _write_failures(failures: Sequence[Mapping[str, Any]], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "failures.json"
    _write_json(path, list(failures))
    return path


def infer(
    checkpoint: str | Path,
    inputs: Sequence[str | Path],
    output: str | Path,
    overrides: Mapping[str, Any] | None = None,
    kaggle_masks: bool = False,
    device: str = "auto",
    overwrite: bool = False,
) -> list[Path]:
    """Predict the tumour of every input case with MONAI's ``SaveImaged``: ``output/<case>/<case>_seg.nii.gz``
    (uint8 0/1, the input's shape and affine) and, with ``kaggle_masks``, per-slice
    ``<case>_<k>_mask.tif`` in ``output/<case>/kaggle_masks``.

    Cases are named after their input (:func:`pipeline.cases.find_cases`); two inputs with one name are
    refused before anything runs, and so are existing predictions unless ``overwrite``. A case that cannot
    be read is reported and the others are still written (:class:`CasesFailed` at the end).

    Returns:
        the written prediction files.
    """
    from pipeline.data import export_kaggle

    network, cfg, dev = load_model(checkpoint, overrides, device)
    cases = find_cases(inputs)
    out = Path(output)
    check_prediction_targets(cases, out, inputs, overwrite)
    dataset = Dataset(cases, build_transforms("infer", cfg))
    post = make_postprocessing(cfg)
    evaluator = build_evaluator(
        device=dev,
        val_data_loader=build_val_loader(dataset, cfg.num_workers, distributed=False),
        network=network,
        inferer=make_inferer(cfg),
        postprocessing=type(post)([*post.transforms, prediction_writer(out)]),
        amp=cfg.amp,
    )
    written: list[Path] = []
    current: dict[str, Any] = {}

    def publish(engine: Engine) -> None:
        case = current["case"]
        item = engine.state.output[0]
        path = Path(item["pred"].meta["saved_to"])
        if kaggle_masks:
            export_kaggle(path, out / case["case"] / "kaggle_masks", patient_id=case["case"], overwrite=True)
        written.append(path)
        logger.info(
            "%s: %d tumour voxels -> %s", case["case"], int(torch.as_tensor(item["pred"]).sum()), path
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
    if failures:
        raise CasesFailed(failures, len(cases), _write_failures(failures, out))
    return written


def cross_validate(cfg: RunConfig | Mapping[str, Any], folds: Sequence[int] | None = None) -> dict[str, Any]:
    """Train and evaluate every fold, then write the pooled per-patient report to ``output/name/cv``.

    A fold whose training finished is not retrained; an interrupted one resumes from its last checkpoint.
    """
    base = cfg if isinstance(cfg, RunConfig) else RunConfig.from_dict(cfg)
    validate_config(base)
    if folds is None:
        folds = sorted({e["fold"] for e in load_datalist(datalist_path(base.data))})
    checkpoints: dict[int, Path] = {}
    for fold in folds:
        fold_cfg = RunConfig.from_dict({**asdict(base), "fold": fold, "val_fold": None})
        run_dir = fold_cfg.run_dir()
        if not (run_dir / DONE_NAME).is_file():
            fold_cfg.resume = find_last_checkpoint(run_dir / "checkpoints") is not None
            fold_cfg.overwrite = fold_cfg.overwrite and not fold_cfg.resume
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
) -> dict[str, Any]:
    """Evaluate each fold's model on its own test fold, then pool the patients into one report.

    Args:
        checkpoints: ``{fold: model file}`` (the model of fold k never saw fold k's patients).
        output: folder of the pooled report (per-patient CSV, JSON, plots, best/median/worst overlays).
        overrides: post-processing / TTA / loader options for every fold (see :func:`evaluate`).
        fold_report: name of each fold's own report folder beside its ``checkpoints`` folder.
        extra: stored under ``"run"`` in the pooled ``metrics.json``.

    Returns:
        ``{"records": per-patient dicts of every fold, "paths": files of the pooled report}``.
    """
    from pipeline.metrics import SliceMetricsAccumulator
    from pipeline.report import write_report

    records: list[dict[str, Any]] = []
    pooled = SliceMetricsAccumulator()
    volumes: dict[str, Callable[[str], Any]] = {}
    for fold, checkpoint in checkpoints.items():
        checkpoint = Path(checkpoint)
        result = evaluate(
            checkpoint,
            output=checkpoint.resolve().parent.parent / fold_report,
            folds=[fold],
            overrides=overrides,
            extra_slices=[pooled],
        )
        records += result["records"]
        volumes.update({str(r["patient_id"]): result["cases"] for r in result["records"]})
    paths = write_report(
        records,
        pooled.compute(),
        output,
        cases=lambda pid: volumes[pid](pid),
        extra={"folds": list(checkpoints), **dict(overrides or {}), **dict(extra or {})},
    )
    return {"records": records, "paths": paths}
