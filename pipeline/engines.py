"""Training, validation and per-patient volumetric evaluation on MONAI's Ignite engines (floor 3).

- :class:`RunConfig`: every option of a run (the CLI parses into it, the bundle can fill it).
- :func:`build_trainer` / :func:`build_evaluator`: ``SupervisedTrainer`` (``DiceCELoss`` by default,
  deep supervision, AMP on CUDA, gradient clipping) and ``SupervisedEvaluator`` (whole volumes through
  :class:`pipeline.inference.VolumeInferer`, post-processing, per-patient mean Dice).
- :func:`train`: a full run for one fold: data, handlers (progress bar, epoch line, TensorBoard scalars
  and overlays, best and last checkpoints, early stopping, validation every N epochs), ``resume``.
- :func:`evaluate`, :func:`infer`, :func:`cross_validate`: the other commands.

Folds: ``fold`` is held out for testing (``evaluate``); ``val_fold`` (default ``fold + 1``) selects the
best checkpoint and drives early stopping; training uses every other fold.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver, EarlyStopping
from monai.data import CacheDataset, DataLoader, Dataset, PersistentDataset
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.handlers import LrScheduleHandler, MeanDice, ValidationHandler, from_engine
from monai.inferers import SimpleInferer
from monai.utils import set_determinism
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torch.utils.data import RandomSampler

from pipeline.checkpoint import BEST_NAME, ConfigState, RNGState, find_last_checkpoint, load_checkpoint
from pipeline.data import load_datalist
from pipeline.handlers import EpochSummaryHandler, TensorBoardHandlers
from pipeline.inference import VolumeInferer, VolumePrepareBatch, build_postprocessing
from pipeline.losses import build_loss
from pipeline.networks import build_network
from pipeline.networks import network_stride as registry_stride
from pipeline.optim import build_optimizer, build_scheduler
from pipeline.transforms import LoadVolumed, TransformSettings, build_transforms

logger = logging.getLogger(__name__)

KEY_METRIC = "val_mean_dice"
NUM_IMAGE_CHANNELS = 3
# options that define the network: a resumed run or a loaded checkpoint must agree on them
MODEL_KEYS = ("arch", "spatial_dims", "context", "num_classes", "deep_supervision", "network_kwargs")


@dataclass
class RunConfig(TransformSettings):
    """Every option of a training / evaluation run (inherits the transform options of
    :class:`pipeline.transforms.TransformSettings`). Names follow the UNeXt training script's config keys.

    Args:
        name: run name; outputs go to ``output/name/fold<k>``.
        output: root folder of runs.
        data: prepared data folder (with ``datalist.json``) or a datalist file.
        fold: test fold held out from training and validation.
        val_fold: validation fold (``None``: ``(fold + 1) % num_folds``).
        seed: seed of everything random.
        epochs, batch_size (slices or patches per step), arch, deep_supervision, input_channels
            (checked against the data: ``3 * (2 * context + 1)`` in 2D, 3 in 3D), num_classes (1: sigmoid,
            2: softmax), loss, optimizer, lr, momentum, weight_decay, nesterov, scheduler, min_lr, factor,
            patience, milestones, gamma, warmup_epochs, early_stopping (patience in validations; <= 0 off),
            num_workers: as in the UNeXt training script.
        batch_dice: Dice term of the loss over the whole batch rather than per slice.
        volume_repeats: visits of each training volume per epoch (each visit draws ``num_samples`` slices;
            with the defaults an epoch sees about as many slices as the training volumes hold).
        network_kwargs: extra keyword arguments of the network constructor.
        cache: ``"memory"`` (``CacheDataset``), ``"disk"`` (``PersistentDataset`` in ``cache_dir``) or
            ``"none"``.
        cache_dir: folder of the disk cache (default ``output/name/cache``).
        val_interval: validate every N epochs (and after the last one).
        amp: mixed precision when on CUDA.
        grad_clip: clip the gradient norm to this (0: off).
        device: ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda[:i]"``.
        resume: continue from the last ``checkpoint_epoch=N.pt`` of the run folder.
        threshold, keep_largest, min_size: post-processing (see :func:`build_postprocessing`).
        tta: test-time augmentation of validation/evaluation (see :class:`VolumeInferer`).
        sw_batch_size: slices (or patches) per inference forward pass.
        overlay_images: validation slices written to TensorBoard as overlays.
        progress: show a progress bar per iteration.
    """

    name: str = "lggseg"
    output: str = "runs"
    data: str = ""
    fold: int = 0
    val_fold: int | None = None
    seed: int = 0
    epochs: int = 100
    batch_size: int = 16
    arch: str = "unext"
    deep_supervision: bool = False
    input_channels: int | None = None
    num_classes: int = 1
    loss: str = "dice_ce"
    batch_dice: bool = False
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    scheduler: str = "cosine"
    min_lr: float = 1e-5
    factor: float = 0.1
    patience: int = 2
    milestones: tuple[int, ...] = (1, 2)
    gamma: float = 2 / 3
    warmup_epochs: int = 0
    early_stopping: int = -1
    num_workers: int = 0
    volume_repeats: int = 4
    network_kwargs: dict[str, Any] = field(default_factory=dict)
    cache: str = "memory"
    cache_dir: str | None = None
    val_interval: int = 1
    amp: bool = True
    grad_clip: float = 0.0
    device: str = "auto"
    resume: bool = False
    threshold: float = 0.5
    keep_largest: int = 0
    min_size: int = 0
    tta: str = "none"
    sw_batch_size: int = 32
    overlay_images: int = 3
    progress: bool = True

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> RunConfig:
        """Build from a mapping; unknown keys are an error (a typo must not pass silently)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(config) - names)
        if unknown:
            raise ValueError(f"unknown configuration keys: {', '.join(unknown)}")
        values = dict(config)
        for key in ("input_size", "patch_size", "milestones"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        return cls(**values)

    @property
    def in_channels(self) -> int:
        """Input channels of the network implied by the data and ``context``."""
        return NUM_IMAGE_CHANNELS * (2 * self.context + 1) if self.spatial_dims == 2 else NUM_IMAGE_CHANNELS

    def run_dir(self) -> Path:
        """Folder of this run and fold."""
        return Path(self.output) / self.name / f"fold{self.fold}"


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"``: CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def validate_config(cfg: RunConfig) -> None:
    """Check the options against each other; raise ``ValueError`` with the offending option."""
    if cfg.input_channels is not None and cfg.input_channels != cfg.in_channels:
        raise ValueError(
            f"input_channels={cfg.input_channels}, but the data gives {cfg.in_channels} channels "
            f"({NUM_IMAGE_CHANNELS} sequences x {2 * cfg.context + 1} slices with context={cfg.context}, "
            f"spatial_dims={cfg.spatial_dims})"
        )
    if cfg.spatial_dims == 3 and cfg.context:
        raise ValueError("context (2.5D) applies to 2D networks only; use spatial_dims=2 or context=0")
    for key in ("epochs", "batch_size", "val_interval", "num_samples", "volume_repeats"):
        if getattr(cfg, key) < 1:
            raise ValueError(f"{key} must be >= 1, got {getattr(cfg, key)}")
    if cfg.spatial_dims == 3:
        stride = registry_stride(cfg.arch, 3, **cfg.network_kwargs)
        if any(p % s for p, s in zip(cfg.patch_size, stride, strict=True)):
            raise ValueError(
                f"patch_size {tuple(cfg.patch_size)} must be a multiple of {cfg.arch}'s stride {stride}"
            )
    if cfg.cache not in ("memory", "disk", "none"):
        raise ValueError(f"cache must be 'memory', 'disk' or 'none', got {cfg.cache!r}")


def create_network(cfg: RunConfig | Mapping[str, Any]) -> torch.nn.Module:
    """The network of a configuration, from the registry :func:`pipeline.networks.build_network`."""
    c = cfg if isinstance(cfg, RunConfig) else RunConfig.from_dict(dict(cfg))
    return build_network(
        c.arch,
        c.spatial_dims,
        c.in_channels,
        c.num_classes,
        deep_supervision=c.deep_supervision,
        **c.network_kwargs,
    )


def network_stride(cfg: RunConfig) -> int:
    """Total in-plane stride of the configured network (inputs are padded to a multiple of it)."""
    return max(registry_stride(cfg.arch, cfg.spatial_dims, **cfg.network_kwargs)[:2])


def make_inferer(cfg: RunConfig, sw_device: torch.device | None = None) -> VolumeInferer:
    """The whole-volume inferer of a configuration (validation, evaluation, inference)."""
    return VolumeInferer(
        spatial_dims=cfg.spatial_dims,
        num_classes=cfg.num_classes,
        context=cfg.context,
        divisible=network_stride(cfg),
        input_size=cfg.input_size,
        patch_size=cfg.patch_size,
        sw_batch_size=cfg.sw_batch_size,
        tta=cfg.tta,
        sw_device=sw_device,
    )


def _dataset(cfg: RunConfig, files: Sequence[dict], transform: Any, tag: str) -> Dataset:
    if cfg.cache == "memory":
        return CacheDataset(
            files,
            transform,
            cache_rate=1.0,
            num_workers=max(1, cfg.num_workers),
            copy_cache=False,
            progress=cfg.progress,
        )
    if cfg.cache == "disk":
        # PersistentDataset keys its files by the data item only: one folder per transform setting
        settings = json.dumps(asdict(TransformSettings.from_dict(asdict(cfg))), sort_keys=True, default=str)
        digest = hashlib.sha1(settings.encode()).hexdigest()[:12]
        cache_dir = Path(cfg.cache_dir or Path(cfg.output) / cfg.name / "cache") / f"{tag}-{digest}"
        cache_dir.mkdir(parents=True, exist_ok=True)
        return PersistentDataset(files, transform, cache_dir=cache_dir)
    return Dataset(files, transform)


def make_train_loader(cfg: RunConfig, files: Sequence[dict], device: torch.device) -> DataLoader:
    """The training loader: cached normalised volumes, ``num_samples`` slices (or patches) per visit,
    ``volume_repeats`` visits per volume per epoch in random order; ``batch_size`` slices per batch
    (rounded up to whole volumes). ``loader.dataset.transform`` is the training chain."""
    settings = TransformSettings.from_dict({**asdict(cfg), "divisible": network_stride(cfg)})
    dataset = _dataset(cfg, files, build_transforms("train", settings), "train")
    # each epoch visits every volume volume_repeats times, in fresh random orders (torch's generator)
    sampler = RandomSampler(dataset, num_samples=len(dataset) * cfg.volume_repeats)
    return DataLoader(
        dataset,
        batch_size=max(1, math.ceil(cfg.batch_size / cfg.num_samples)),
        sampler=sampler,
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
    )


def split_datalist(cfg: RunConfig) -> tuple[list[dict], list[dict], list[dict]]:
    """Train, validation and test entries of the configured fold (patient-level, from the datalist).

    Raises:
        LGGDataError: missing datalist or an entry naming a missing file.
        ValueError: a fold with no patients.
    """
    path = Path(cfg.data)
    datalist = path / "datalist.json" if path.is_dir() else path
    entries = load_datalist(datalist)
    folds = sorted({e["fold"] for e in entries})
    num_folds = len(folds)
    val_fold = (
        cfg.val_fold
        if cfg.val_fold is not None
        else folds[(folds.index(cfg.fold) + 1) % num_folds]
        if cfg.fold in folds
        else None
    )
    test = [e for e in entries if e["fold"] == cfg.fold]
    val = [e for e in entries if e["fold"] == val_fold]
    train = [e for e in entries if e["fold"] not in (cfg.fold, val_fold)]
    for name, part in (("test (fold)", test), ("validation (val_fold)", val), ("training", train)):
        if not part:
            raise ValueError(
                f"{datalist}: the {name} split of fold={cfg.fold}, val_fold={val_fold} is empty "
                f"(folds present: {folds})"
            )
    return train, val, test


def build_trainer(
    cfg: RunConfig,
    network: torch.nn.Module,
    train_loader: DataLoader,
    device: torch.device,
) -> SupervisedTrainer:
    """``SupervisedTrainer`` with the configured loss, optimiser, AMP and gradient clipping.

    The scheduler is created too and kept as ``trainer.lr_scheduler`` (stepped per epoch by
    :func:`attach_training_handlers`).
    """
    optimizer = build_optimizer(
        cfg.optimizer, network.parameters(), cfg.lr, cfg.momentum, cfg.weight_decay, cfg.nesterov
    )
    amp = cfg.amp and device.type == "cuda"
    trainer = SupervisedTrainer(
        device=device,
        max_epochs=cfg.epochs,
        train_data_loader=train_loader,
        network=network,
        optimizer=optimizer,
        loss_function=build_loss(cfg.loss, cfg.num_classes, cfg.deep_supervision, cfg.batch_dice),
        inferer=SimpleInferer(),
        amp=amp,
        decollate=False,
        optim_set_to_none=True,
    )
    trainer.logger.setLevel(logging.WARNING)  # the epoch line of EpochSummaryHandler says it all
    trainer.lr_scheduler = build_scheduler(
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
    if cfg.grad_clip > 0:

        def clip(engine: SupervisedTrainer) -> None:
            if engine.amp and engine.scaler is not None:
                engine.scaler.unscale_(engine.optimizer)
            torch.nn.utils.clip_grad_norm_(engine.network.parameters(), cfg.grad_clip)

        trainer.add_event_handler(IterationEvents.BACKWARD_COMPLETED, clip)
    return trainer


def build_evaluator(
    cfg: RunConfig,
    network: torch.nn.Module,
    loader: DataLoader,
    device: torch.device,
    with_label: bool = True,
) -> SupervisedEvaluator:
    """``SupervisedEvaluator`` over whole volumes: inferer, post-processing and per-patient mean Dice.

    The output's ``pred`` is the post-processed binary mask ``(1, H, W, D)`` of each patient; with a label,
    the key metric ``val_mean_dice`` is the mean over patients of the 3D Dice.
    """
    metric = {KEY_METRIC: MeanDice(include_background=True, output_transform=from_engine(["pred", "label"]))}
    evaluator = SupervisedEvaluator(
        device=device,
        val_data_loader=loader,
        network=network,
        prepare_batch=VolumePrepareBatch(),
        inferer=make_inferer(cfg, sw_device=next(network.parameters()).device),
        postprocessing=build_postprocessing(cfg.threshold, cfg.keep_largest, cfg.min_size),
        key_val_metric=metric if with_label else None,
        amp=cfg.amp and device.type == "cuda",
    )
    evaluator.logger.setLevel(logging.WARNING)
    return evaluator


def _log_config(cfg: RunConfig, run_dir: Path) -> None:
    text = json.dumps(asdict(cfg), indent=2, default=str)
    logger.info("resolved configuration:\n%s", text)
    (run_dir / "config.json").write_text(text + "\n")


def prepare_run(cfg: RunConfig) -> dict[str, Any]:
    """Build everything of a training run without running it (the tests reach inside).

    Returns:
        a dict with ``trainer``, ``evaluator``, ``network``, ``run_dir``, ``checkpointer`` (last epoch),
        ``best_checkpointer``, ``to_save`` and the data splits.
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

    train_loader = make_train_loader(cfg, train_files, device)
    train_xf = train_loader.dataset.transform
    val_ds = _dataset(cfg, val_files, build_transforms("val", cfg), "val")
    val_loader = DataLoader(val_ds, batch_size=1, num_workers=cfg.num_workers)

    network = create_network(cfg).to(device)
    trainer = build_trainer(cfg, network, train_loader, device)
    evaluator = build_evaluator(cfg, network, val_loader, device)
    evaluator.state_dict_user_keys.extend(["best_metric", "best_metric_epoch"])

    config_state = ConfigState(asdict(cfg))
    best = Checkpoint(
        {"network": network, "config": config_state},
        DiskSaver(ckpt_dir, atomic=True, require_empty=False),
        filename_pattern=BEST_NAME,
        n_saved=1,
        score_function=lambda e: e.state.metrics[KEY_METRIC],
        score_name=KEY_METRIC,
        global_step_transform=lambda *_: trainer.state.epoch,
    )
    to_save: dict[str, Any] = {
        "network": network,
        "optimizer": trainer.optimizer,
        "lr_scheduler": trainer.lr_scheduler,
        "trainer": trainer,
        "evaluator": evaluator,
        "best_checkpointer": best,
        "rng": RNGState([train_xf]),
        "config": config_state,
    }
    if trainer.scaler is not None:
        to_save["scaler"] = trainer.scaler
    stopper = None
    if cfg.early_stopping > 0:
        stopper = EarlyStopping(cfg.early_stopping, lambda e: e.state.metrics[KEY_METRIC], trainer)
        to_save["early_stopping"] = stopper
    last = Checkpoint(
        to_save,
        DiskSaver(ckpt_dir, atomic=True, require_empty=False),
        filename_pattern="checkpoint_epoch={global_step}.pt",
        n_saved=2,
        global_step_transform=lambda e, _: e.state.epoch,
    )
    return {
        "cfg": cfg,
        "run_dir": run_dir,
        "ckpt_dir": ckpt_dir,
        "device": device,
        "network": network,
        "trainer": trainer,
        "evaluator": evaluator,
        "best_checkpointer": best,
        "checkpointer": last,
        "to_save": to_save,
        "early_stopping": stopper,
        "train_transform": train_xf,
        "splits": {"train": train_files, "val": val_files, "test": test_files},
    }


def attach_training_handlers(run: Mapping[str, Any]) -> None:
    """Wire validation, schedules, logging, TensorBoard, checkpoints and early stopping, in that order
    (the last checkpoint is written after everything else of the epoch, RNG state included)."""
    cfg: RunConfig = run["cfg"]
    trainer: SupervisedTrainer = run["trainer"]
    evaluator: SupervisedEvaluator = run["evaluator"]

    def validate_now(engine: Engine, event: int) -> bool:
        return event % cfg.val_interval == 0 or event == engine.state.max_epochs

    evaluator.add_event_handler(Events.COMPLETED, run["best_checkpointer"])
    if run["early_stopping"] is not None:
        evaluator.add_event_handler(Events.COMPLETED, run["early_stopping"])
    trainer.add_event_handler(
        Events.EPOCH_COMPLETED(event_filter=validate_now),
        ValidationHandler(interval=1, validator=evaluator, epoch_level=True),
    )
    scheduler = trainer.lr_scheduler
    if isinstance(scheduler, ReduceLROnPlateau):
        LrScheduleHandler(scheduler, step_transform=lambda e: e.state.metrics[KEY_METRIC]).attach(evaluator)
    else:
        LrScheduleHandler(scheduler, print_lr=False).attach(trainer)
    tensorboard = TensorBoardHandlers(run["run_dir"] / "tensorboard", trainer, evaluator, cfg.overlay_images)
    tensorboard.attach()
    EpochSummaryHandler(evaluator, KEY_METRIC, tensorboard.writer, progress=cfg.progress).attach(trainer)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, run["checkpointer"])
    trainer.add_event_handler(Events.COMPLETED, lambda _: tensorboard.close())


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
        raise FileNotFoundError(f"--resume: no checkpoint_epoch=N.pt in {run['ckpt_dir']}")
    ckpt = load_checkpoint(path)
    check_model_config(ckpt["config"], asdict(run["cfg"]), path)
    trainer: SupervisedTrainer = run["trainer"]
    max_epochs = trainer.state.max_epochs
    to_load = {k: v for k, v in run["to_save"].items() if k != "config"}
    Checkpoint.load_objects(to_load=to_load, checkpoint=ckpt)
    trainer.state.max_epochs = max(max_epochs, trainer.state.epoch)
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

    Args:
        cfg: the run configuration.
        on_built: called with the prepared run (dict of :func:`prepare_run`) before training starts.
    """
    cfg = cfg if isinstance(cfg, RunConfig) else RunConfig.from_dict(cfg)
    run = prepare_run(cfg)
    _log_config(cfg, run["run_dir"])
    attach_training_handlers(run)
    trainer = run["trainer"]
    if cfg.resume and resume_run(run) >= cfg.epochs:
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
        "epochs": int(run["trainer"].state.iteration // run["trainer"].state.epoch_length),
        "run_dir": str(run["run_dir"]),
    }
    logger.info(
        "training done: best %s %.4f at epoch %d",
        KEY_METRIC,
        result["best_metric"],
        result["best_metric_epoch"],
    )
    _finish_marker(result)
    return result


DONE_NAME = "training_done.json"


def _finish_marker(result: Mapping[str, Any]) -> None:
    (Path(result["run_dir"]) / DONE_NAME).write_text(json.dumps(dict(result), indent=2) + "\n")


def load_model(
    checkpoint: str | Path, overrides: Mapping[str, Any] | None = None, device: str = "auto"
) -> tuple[torch.nn.Module, RunConfig, torch.device]:
    """Network (in eval mode, on the device) and configuration of a checkpoint.

    Args:
        checkpoint: ``best_model.pt`` or ``checkpoint_epoch=N.pt``.
        overrides: configuration values to change (post-processing, TTA, data, ...); network options
            cannot be changed.
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:i]"``.

    Raises:
        FileNotFoundError: missing checkpoint. ValueError: not an lggseg checkpoint, or overrides that
        change the network.
    """
    ckpt = load_checkpoint(checkpoint)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    check_model_config(ckpt["config"], {**ckpt["config"], **overrides}, checkpoint)
    cfg = RunConfig.from_dict({**ckpt["config"], **overrides, "resume": False})
    dev = resolve_device(device)
    network = create_network(cfg)
    network.load_state_dict(ckpt["network"])
    return network.to(dev).eval(), cfg, dev


def _spacing(image: Any) -> tuple[float, float, float]:
    affine = torch.as_tensor(getattr(image, "affine", torch.eye(4))).double()
    return tuple(float(v) for v in torch.linalg.norm(affine[:3, :3], dim=0))


def _case_id(entry: Mapping[str, Any]) -> str:
    if entry.get("patient"):
        return str(entry["patient"])
    path = Path(str(entry["image"]))
    return path.name if path.is_dir() else path.parent.name


def save_prediction(mask: torch.Tensor, image: Any, path: Path) -> Path:
    """Write a binary mask ``(1, H, W, D)`` as a uint8 NIfTI with the image's affine."""
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    affine = torch.as_tensor(getattr(image, "affine", torch.eye(4))).double().numpy()
    array = (torch.as_tensor(mask).detach().cpu().numpy()[0] > 0).astype(np.uint8)
    tmp = path.with_name(path.name + ".tmp.nii.gz")
    nib.save(nib.Nifti1Image(array, affine), tmp)
    tmp.replace(path)
    return path


class _CaseTimer:
    """Per-patient timings from the evaluator's events: loading, inference, post-processing."""

    def __init__(self, engine: Engine) -> None:
        self.t: dict[str, float] = {}
        self.last: dict[str, float] = {}
        for event, name in (
            (Events.GET_BATCH_STARTED, "load0"),
            (Events.GET_BATCH_COMPLETED, "load1"),
            (Events.ITERATION_STARTED, "start"),
            (IterationEvents.FORWARD_COMPLETED, "forward"),
            (IterationEvents.MODEL_COMPLETED, "post"),
        ):
            engine.add_event_handler(event, self._mark, name)

    def _mark(self, _: Engine, name: str) -> None:
        self.t[name] = time.perf_counter()
        if name == "post":
            t = self.t
            self.last = {
                "load_s": t["load1"] - t["load0"],
                "inference_s": t["forward"] - t["start"],
                "postprocess_s": t["post"] - t["forward"],
            }


def _entries_of(data: str | Path, folds: Sequence[int] | None) -> list[dict]:
    path = Path(data)
    datalist = path / "datalist.json" if path.is_dir() else path
    return load_datalist(datalist, folds=folds)


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
    """Per-patient volumetric evaluation of a checkpoint; writes the report (CSV, JSON, plots).

    Args:
        checkpoint: the model to evaluate (usually ``best_model.pt``).
        output: report folder (default: ``<run>/evaluation`` beside the checkpoint folder).
        data: prepared data folder or datalist (default: the training run's).
        folds: folds to evaluate (default: the run's held-out test fold); ``[]`` with ``entries``.
        overrides: post-processing / TTA / batch options (``threshold``, ``keep_largest``, ``min_size``,
            ``tta``, ``sw_batch_size``, ``num_workers``).
        save_predictions: also write ``predictions/<patient>/prediction.nii.gz``.
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:i]"``.
        entries: datalist entries to evaluate instead of ``data``/``folds``.
        write: write the report files (``False``: only return the figures).
        extra_slices: more ``SliceMetricsAccumulator`` to update (``cv`` pools the folds' slices).

    Returns:
        ``{"records": per-patient dicts (metrics + timings), "slices": slice-level figures, "summary",
        "paths", "accumulator"}``.
    """
    from pipeline.metrics import SliceMetricsAccumulator, patient_metrics
    from pipeline.report import summarise, write_report

    network, cfg, dev = load_model(checkpoint, overrides, device)
    if entries is None:
        entries = _entries_of(data or cfg.data, [cfg.fold] if folds is None else folds)
    if not entries:
        raise ValueError("nothing to evaluate: the selected folds hold no patients")
    out = Path(output) if output else Path(checkpoint).resolve().parent.parent / "evaluation"
    entries = list(entries)
    dataset = Dataset(entries, build_transforms("val", cfg))
    loader = DataLoader(dataset, batch_size=1, num_workers=cfg.num_workers)
    evaluator = build_evaluator(cfg, network, loader, dev)
    timer = _CaseTimer(evaluator)
    slices = SliceMetricsAccumulator()
    records: list[dict[str, Any]] = []
    preds: dict[str, Any] = {}

    def collect(engine: Engine) -> None:
        entry = entries[engine.state.iteration - 1]  # batch size 1, no shuffling
        item = engine.state.output[0]
        start = time.perf_counter()
        pid = _case_id(entry)
        pred = (torch.as_tensor(item["pred"]).detach().cpu()[0] > 0).numpy()
        truth = (torch.as_tensor(item["label"]).detach().cpu()[0] > 0).numpy()
        record = patient_metrics(
            pred, truth, _spacing(item["image"]), institution=entry.get("institution"), patient_id=pid
        )
        for accumulator in (slices, *extra_slices):
            accumulator.update(pred, truth)
        record.update(timer.last, metrics_s=time.perf_counter() - start, fold=entry.get("fold"))
        record["eval_s"] = record["inference_s"] + record["postprocess_s"] + record["metrics_s"]
        records.append(record)
        preds[pid] = (np.packbits(pred), pred.shape, entry)
        if save_predictions:
            save_prediction(item["pred"], item["image"], out / "predictions" / pid / "prediction.nii.gz")

    evaluator.add_event_handler(Events.ITERATION_COMPLETED, collect)
    if cfg.progress:
        from ignite.handlers import ProgressBar

        ProgressBar(persist=False, desc="evaluate").attach(evaluator)
    with torch.no_grad():
        evaluator.run()

    def case(pid: str) -> tuple[Any, Any, Any]:
        packed, shape, entry = preds[pid]
        loaded = LoadVolumed()(entry)
        pred = np.unpackbits(packed, count=int(np.prod(shape))).reshape(shape)
        return loaded["image"].numpy(), loaded["label"].numpy()[0], pred

    slice_summary = slices.compute()
    paths: dict[str, Path] = {}
    if write:
        timing = {
            k: float(np.mean([r[k] for r in records]))
            for k in ("load_s", "inference_s", "postprocess_s", "metrics_s", "eval_s")
        }
        extra = {
            "checkpoint": str(checkpoint),
            "postprocessing": {k: getattr(cfg, k) for k in ("threshold", "keep_largest", "min_size", "tta")},
            "mean_timing_s": timing,
            "device": str(dev),
        }
        paths = write_report(records, slice_summary, out, cases=case, extra=extra)
        logger.info("report written to %s", out)
    summary = summarise(records)
    dice = summary["overall"]["metrics"]["dice"]
    logger.info(
        "%d patients: Dice mean %.4f, median %.4f, std %.4f",
        len(records),
        dice["mean"],
        dice["median"],
        dice["std"],
    )
    return {"records": records, "slices": slice_summary, "summary": summary, "paths": paths}


def inference_entries(inputs: Sequence[str | Path]) -> list[dict]:
    """Datalist-like entries from what ``infer`` accepts: a prepared folder or datalist (every patient), a
    NIfTI image, a raw Kaggle patient folder, or a folder of such patient folders.

    Raises:
        FileNotFoundError: a path that does not exist. ValueError: a path of none of these kinds.
    """
    from pipeline.data import discover_patients

    entries: list[dict] = []
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise FileNotFoundError(f"input not found: {path}")
        if path.is_file() and path.suffix == ".json" or (path / "datalist.json").is_file():
            entries += [{"image": e["image"], "patient": e["patient"]} for e in _entries_of(path, None)]
        elif path.is_file() and path.name.endswith((".nii", ".nii.gz")):
            entries.append({"image": str(path), "patient": path.parent.name})
        elif path.is_dir() and any(path.glob("*.tif")):
            entries.append({"image": str(path), "patient": path.name})
        elif path.is_dir():
            entries += [{"image": str(p), "patient": p.name} for p in discover_patients(path)]
        else:
            raise ValueError(f"{path}: not a prepared folder, datalist, NIfTI image or Kaggle patient folder")
    return entries


def infer(
    checkpoint: str | Path,
    inputs: Sequence[str | Path],
    output: str | Path,
    overrides: Mapping[str, Any] | None = None,
    kaggle_masks: bool = False,
    device: str = "auto",
) -> list[Path]:
    """Predict the tumour of every input volume; writes ``output/<patient>/prediction.nii.gz`` (uint8 0/1,
    the input's geometry) and, with ``kaggle_masks``, per-slice ``<patient>_<k>_mask.tif`` beside it.

    Returns:
        the written prediction files.
    """
    from pipeline.data import export_kaggle

    network, cfg, dev = load_model(checkpoint, overrides, device)
    entries = inference_entries(inputs)
    if not entries:
        raise ValueError(f"no patients found in {', '.join(map(str, inputs))}")
    loader = DataLoader(
        Dataset(entries, build_transforms("infer", cfg)), batch_size=1, num_workers=cfg.num_workers
    )
    evaluator = build_evaluator(cfg, network, loader, dev, with_label=False)
    out, written = Path(output), []

    def write(engine: Engine) -> None:
        for item, batch in zip(engine.state.output, engine.state.batch, strict=True):
            pid = _case_id(batch)
            path = save_prediction(item["pred"], item["image"], out / pid / "prediction.nii.gz")
            if kaggle_masks:
                export_kaggle(path, out / pid / "kaggle_masks", patient_id=pid, overwrite=True)
            written.append(path)
            logger.info("%s: %d tumour voxels -> %s", pid, int(torch.as_tensor(item["pred"]).sum()), path)

    evaluator.add_event_handler(Events.ITERATION_COMPLETED, write)
    with torch.no_grad():
        evaluator.run()
    return written


def cross_validate(cfg: RunConfig | Mapping[str, Any], folds: Sequence[int] | None = None) -> dict[str, Any]:
    """Train and evaluate every fold, then write the pooled per-patient report to ``output/name/cv``.

    A fold whose training finished is not retrained; an interrupted one resumes from its last checkpoint.
    """
    from pipeline.metrics import SliceMetricsAccumulator
    from pipeline.report import write_report

    base = cfg if isinstance(cfg, RunConfig) else RunConfig.from_dict(cfg)
    if folds is None:
        path = Path(base.data)
        folds = sorted({e["fold"] for e in load_datalist(path / "datalist.json" if path.is_dir() else path)})
    records: list[dict[str, Any]] = []
    pooled = SliceMetricsAccumulator()
    for fold in folds:
        fold_cfg = RunConfig.from_dict({**asdict(base), "fold": fold})
        run_dir = fold_cfg.run_dir()
        if not (run_dir / DONE_NAME).is_file():
            fold_cfg.resume = find_last_checkpoint(run_dir / "checkpoints") is not None
            train(fold_cfg)
        result = evaluate(
            run_dir / "checkpoints" / BEST_NAME,
            output=run_dir / "evaluation",
            overrides={"num_workers": base.num_workers, "progress": base.progress},
            extra_slices=[pooled],
        )
        records += result["records"]
    out = Path(base.output) / base.name / "cv"
    paths = write_report(records, pooled.compute(), out, extra={"folds": list(folds)})
    return {"records": records, "paths": paths}
