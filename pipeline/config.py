"""The run configuration: every option of training, evaluation and inference, described once.

:class:`RunConfig` holds the options; :data:`OPTION_HELP` (one line for every option) and
:func:`option_choices` describe them, and the CLI generates its flags from them. :func:`validate_config`
checks them against each other before any work starts.

The defaults are the UNeXt training script's. The bundle's ``train.json`` uses the same names (a few spelt as
the MONAI Model Zoo does, :data:`BUNDLE_NAMES`) and the same defaults, except where the recipe of the shipped
model chose otherwise: ``scripts/install_model.py`` writes that recipe into ``train.json`` from the model
file, so that ``monai.bundle run`` trains what the bundle ships (today, recipe r2: 30 epochs, the test fold
watched every 5, ``train_on_all``, 2.5D context 1, deep supervision, batch Dice, AdamW with weight decay 1e-2,
2 warm-up epochs, and the robustness augmentations: skull-stripped views, sequence dropout, zoom, bias field,
histogram shift, smoothing, noise). A test checks that every difference is the shipped model's recipe.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import numbers
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from pipeline.inference.inferers import TTA_MODES
from pipeline.ingestion.sequences import NUM_CHANNELS
from pipeline.ingestion.sequences import NUM_CHANNELS as NUM_IMAGE_CHANNELS  # noqa: F401 - the old name
from pipeline.networks import network_names, network_stride
from pipeline.training.losses import LOSSES
from pipeline.training.optim import OPTIMIZERS, SCHEDULERS
from pipeline.transforms import TransformSettings

CACHE_MODES = ("memory", "disk", "none")
# RunConfig names that the bundle's configs spell as the MONAI Model Zoo does
BUNDLE_NAMES = {
    "lr": "learning_rate",
    "loss": "loss_name",
    "optimizer": "optimizer_name",
    "scheduler": "scheduler_name",
}
# options of evaluation and inference that may differ from the training run's
POSTPROCESSING_KEYS = (
    "threshold",
    "keep_largest",
    "min_size",
    "edge_components",
    "min_mass_fraction",
    "tta",
    "amp",
    "sw_batch_size",
    "num_workers",
    "grid_pixel_mm",
    "grid_slice_mm",
    "grid_thin_below_mm",
)


def network_in_channels(spatial_dims: int = 2, context: int = 0) -> int:
    """Input channels of a network: the 3 sequences, times ``2 * context + 1`` slices in 2.5D."""
    return NUM_CHANNELS * (2 * context + 1) if spatial_dims == 2 else NUM_CHANNELS


@dataclass
class RunConfig(TransformSettings):
    """Every option of a training / evaluation run (inherits the transform options of
    :class:`pipeline.transforms.TransformSettings`). Names follow the UNeXt training script's config keys;
    :data:`OPTION_HELP` says what each one means.
    """

    name: str = "lggseg"
    output: str = "runs"
    data: str = ""
    fold: int = 0
    val_fold: int | None = None
    train_on_all: bool = False
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
    members: int = 1
    cache: str = "memory"
    cache_dir: str | None = None
    val_interval: int = 1
    amp: bool = True
    amp_cpu: bool = False
    grad_clip: float = 0.0
    device: str = "auto"
    resume: bool = False
    overwrite: bool = False
    threshold: float = 0.5
    keep_largest: int = 0
    min_size: int = 0
    edge_components: int = 0
    min_mass_fraction: float = 0.0
    quality: dict[str, Any] = field(default_factory=dict)
    tta: str = "none"
    sw_batch_size: int = 32
    overlay_images: int = 3
    progress: bool = True

    @classmethod
    def from_dict(cls, config: Mapping[str, Any], source: str | os.PathLike | None = None) -> RunConfig:
        """Build from a mapping; unknown keys and values of another type than the option's are an error (a
        typo must not pass silently, ``"false"`` is not false).

        Args:
            config: ``{option: value}``; lists are taken for tuples and integers for numbers.
            source: where the values come from (a file), named first in the error.

        Raises:
            ValueError: one line, ``[source: ]option: expected ..., got ...``.
        """
        return cls(**checked_options(config, source))

    @property
    def in_channels(self) -> int:
        """Input channels of the network implied by the data and ``context``."""
        return network_in_channels(self.spatial_dims, self.context)

    def run_dir(self) -> Path:
        """Folder of this run and fold."""
        return Path(self.output) / self.name / f"fold{self.fold}"

    def stride(self) -> int:
        """Total in-plane stride of the configured network (inputs are padded to a multiple of it)."""
        return max(network_stride(self.arch, self.spatial_dims, **self.network_kwargs)[:2])


OPTION_HELP: dict[str, str] = {
    "name": "run name; outputs go to OUTPUT/NAME/fold<k>",
    "output": "root folder of the runs",
    "data": "prepared data folder (with datalist.json, from `lggseg prepare`) or a datalist file",
    "fold": "test fold, held out from training and validation",
    "train_on_all": "nnU-Net style: train on every fold but the test fold and keep the last epoch's model; "
    "the test fold is validated only to draw the curves, it never chooses a checkpoint",
    "val_fold": "validation fold (default: the fold after --fold); must differ from --fold",
    "seed": "seed of everything random",
    "epochs": "training epochs",
    "batch_size": "slices (3D: patches) per training step",
    "arch": "network name in the registry (`lggseg networks`)",
    "deep_supervision": "auxiliary heads with a loss each (networks that have them)",
    "input_channels": "check: 3 x (2 x context + 1) in 2D, 3 in 3D",
    "num_classes": "1: one sigmoid channel; 2: softmax over background/tumour",
    "input_size": "in-plane training size H W (the UNeXt script's input_h input_w; default native)",
    "patch_size": "3D training patch H W D",
    "loss": "training loss",
    "batch_dice": "Dice term over the whole batch instead of per slice (MONAI batch=True)",
    "optimizer": "optimiser",
    "lr": "learning rate",
    "scheduler": "learning-rate schedule (per epoch)",
    "warmup_epochs": "linear warm-up epochs before the schedule",
    "early_stopping": "stop after this many validations without improvement (<= 0: off)",
    "num_workers": "data loader worker processes",
    "volume_repeats": "visits of each training volume per epoch",
    "network_kwargs": "JSON object of extra network arguments",
    "members": "networks averaged by the model (N > 1: an ensemble made by `lggseg ensemble`; training: 1)",
    "spatial_dims": "2: slices (2.5D with --context); 3: patches",
    "context": "2.5D: neighbouring slices on each side as extra channels",
    "num_samples": "slices (3D: patches) drawn per volume per visit",
    "pos": "weight of tumour slices in sampling",
    "neg": "weight of tumour-free slices in sampling",
    "cache": "memory (CacheDataset), disk (PersistentDataset) or none",
    "cache_dir": "folder of the disk cache (default OUTPUT/NAME/cache)",
    "val_interval": "validate every N epochs (and after the last)",
    "amp": "mixed precision: on CUDA MONAI's float16 autocast (and gradient scaling in training); "
    "inference on CPUs with AVX512-BF16/AMX: bf16 autocast (float32 on other CPUs); --no-amp: float32; "
    "CPU training: --amp-cpu",
    "amp_cpu": "training on the CPU: bf16 autocast and channels-last (AVX512-BF16/AMX CPUs; float32 "
    "where unsupported, said in one log line); float32 weights, model files as without it; CUDA: --amp",
    "crop_size": "2D training: crop each sampled slice to H W before the augmentations, tumour-centred in "
    "tumour slices (default: whole slices; inference always runs on whole slices)",
    "prob_edge_negative": "2D training: fraction of the tumour-free slice draws taken from the outermost "
    "--edge-slices slices at each end of the volume (vertex, skull base: hard negatives)",
    "edge_slices": "slices at each end of the volume that --prob-edge-negative draws from",
    "grad_clip": "clip the gradient norm (0: off)",
    "device": "auto (CUDA when present), cpu or cuda[:i]",
    "resume": "continue the run in OUTPUT/NAME/fold<k> from its last checkpoint_epoch=N.pt",
    "overwrite": "start the run again in a folder that holds one (removes only that run's files)",
    "threshold": "probability threshold of the tumour",
    "keep_largest": "keep the N largest 3D connected components (Buda et al.: 1; 0: off)",
    "min_size": "drop 3D components under this many voxels (0: off)",
    "edge_components": "drop components confined to the outermost N axial slices, unless nothing else is "
    "left (vertex and skull-base artefacts; 0: off)",
    "min_mass_fraction": "drop components whose summed probability is under this fraction of the largest's "
    "(never a tumour for a larger artefact: both kept when of one order; 0: off)",
    "quality": "JSON object: the quality-score calibration fitted on cross-validation (scripts/fit_qc.py)",
    "tta": "test-time augmentation",
    "sw_batch_size": "slices (3D: patches) per inference forward pass",
    "overlay_images": "validation slices shown as overlays in TensorBoard",
    "progress": "progress bar per iteration",
    "divisible": "pad training samples in-plane to a multiple of this (set from the network's stride)",
    "clip_lower": "normalisation: lower percentile of the brain voxels each channel is clipped to",
    "clip_upper": "normalisation: upper percentile of the brain voxels each channel is clipped to",
    "brain_threshold": "normalisation: a voxel is brain when any channel is above this value",
    "cache_float16": "keep cached normalised volumes as float16 (half the memory)",
    "augment": "training augmentation (the prob_* options)",
    "grid_pixel_mm": "model grid: the in-plane pixel size (mm) of a scan in a scanner's geometry",
    "grid_slice_mm": "model grid: the slice spacing (mm) slices thinner than --grid-thin-below-mm get",
    "grid_thin_below_mm": "model grid: slices thinner than this (mm) are resampled; thicker ones are kept",
    "prob_flip": "probability of a left-right flip",
    "prob_rotate90": "probability of an in-plane 90-degree rotation",
    "prob_rotate": "probability of an in-plane rotation by up to --rotate-degrees",
    "rotate_degrees": "largest in-plane rotation, degrees",
    "prob_elastic": "probability of an elastic deformation",
    "prob_scale_intensity": "probability of an intensity scaling",
    "prob_shift_intensity": "probability of an intensity shift",
    "prob_gamma": "probability of a gamma (contrast) change",
    "prob_skull_strip": "probability of training on the skull-stripped view (derived brain mask)",
    "prob_sequence_dropout": "probability of FLAIR in place of pre- and/or post-contrast T1",
    "prob_zoom": "probability of an in-plane scaling by a factor in --zoom-range",
    "zoom_range": "smallest and largest in-plane scale factor MIN MAX",
    "prob_bias_field": "probability of a smooth multiplicative bias field",
    "prob_histogram_shift": "probability of a random non-linear intensity (histogram) shift",
    "prob_smooth": "probability of a Gaussian blur (lower resolution)",
    "prob_noise": "probability of Gaussian noise",
    "momentum": "SGD momentum (sgd only)",
    "weight_decay": "weight decay of the optimiser",
    "nesterov": "Nesterov momentum (sgd only)",
    "min_lr": "lowest learning rate of the cosine and plateau schedules",
    "factor": "plateau schedule: factor of each reduction",
    "patience": "plateau schedule: validations without improvement before a reduction",
    "milestones": "multistep schedule: epochs at which the learning rate is multiplied by --gamma",
    "gamma": "multistep schedule: factor at each milestone",
}


def option_choices(name: str) -> tuple[Any, ...] | None:
    """The allowed values of an option, or ``None`` when any value of its type is allowed."""
    return {
        "arch": tuple(network_names()),
        "loss": LOSSES,
        "optimizer": OPTIMIZERS,
        "scheduler": SCHEDULERS,
        "tta": TTA_MODES,
        "cache": CACHE_MODES,
        "spatial_dims": (2, 3),
        "num_classes": (1, 2),
    }.get(name)


@functools.cache
def _type_hints() -> dict[str, Any]:
    return typing.get_type_hints(RunConfig)


def option_type(name: str) -> Any:
    """The base type of a :class:`RunConfig` field (element type for tuples, without ``| None``) and, for
    tuples, their length (``"+"`` when free): ``(type, nargs)``."""
    hint = _type_hints()[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and args:
        hint = args[0]
    if typing.get_origin(hint) is tuple:
        inner = typing.get_args(hint)
        return inner[0], "+" if Ellipsis in inner else len(inner)
    return hint, None


_EXPECTED = {bool: "true or false", int: "an integer", float: "a number", str: "text"}
_EXPECTED_PLURAL = {bool: "true or false values", int: "integers", float: "numbers", str: "texts"}


def _shown(value: Any) -> str:
    """``value`` as JSON writes it (``"1"``, ``null``, ``[1, 2]``), shortened."""
    try:
        text = json.dumps(value, default=str)
    except ValueError:  # a circular structure
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_type(value: Any, base: Any) -> bool:
    if base is bool:
        return isinstance(value, bool)
    if base is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if base is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if base is str:
        return isinstance(value, (str, os.PathLike))
    if typing.get_origin(base) is dict:
        return isinstance(value, Mapping) and all(isinstance(k, str) for k in value)
    return True


def _as_type(value: Any, base: Any) -> Any:
    if base is float:
        return float(value)
    if base is int:
        return int(value)
    if base is str:
        return os.fspath(value)
    if typing.get_origin(base) is dict:
        return dict(value)
    return value


def check_option(name: str, value: Any) -> Any:
    """Check one value against the declared type of the :class:`RunConfig` option ``name``.

    Integers are taken for numbers, lists for tuples, paths for text; ``null`` only where the option may
    be unset. Nothing else is converted: ``"1"`` is no integer, ``"false"`` no boolean, 1.7 no integer.

    Args:
        name: the option.
        value: its value (from JSON, the command line or a saved configuration).

    Returns:
        the value in the option's type (float for numbers, tuple for lists).

    Raises:
        ValueError: one line, ``option: expected <type>, got <value as JSON>``.
    """
    hint = _type_hints()[name]
    base, nargs = option_type(name)
    nullable = type(None) in typing.get_args(hint)
    if nargs is None:
        expected = _EXPECTED.get(base, "a JSON object" if typing.get_origin(base) is dict else "a value")
    else:
        count = "one or more" if nargs == "+" else str(nargs)
        expected = f"a list of {count} {_EXPECTED_PLURAL.get(base, 'values')}"
    expected += " or null" if nullable else ""
    got = _shown(value) + (" (text)" if isinstance(value, str) else "")
    problem = f"{name}: expected {expected}, got {got}"
    if value is None:
        if nullable:
            return None
        raise ValueError(problem)
    if nargs is None:
        if not _is_type(value, base):
            raise ValueError(problem)
        return _as_type(value, base)
    if not isinstance(value, (list, tuple)) or not all(_is_type(v, base) for v in value):
        raise ValueError(problem)
    if (nargs == "+" and not value) or (isinstance(nargs, int) and len(value) != nargs):
        raise ValueError(problem)
    return tuple(_as_type(v, base) for v in value)


def checked_options(config: Mapping[str, Any], source: str | os.PathLike | None = None) -> dict[str, Any]:
    """The options of ``config``, each checked by :func:`check_option`.

    Args:
        config: ``{option: value}``.
        source: where the values come from (a file), named first in the error.

    Returns:
        ``{option: value}`` in the options' types.

    Raises:
        ValueError: one line naming the source, the option and the problem: an unknown option (with the
            nearest known name) or a value of another type.
    """
    prefix = f"{source}: " if source is not None else ""
    names = [f.name for f in fields(RunConfig)]
    unknown = sorted(str(k) for k in set(config) - set(names))
    if unknown:
        near = difflib.get_close_matches(unknown[0], names, n=1)
        hint = f" (did you mean {near[0]}?)" if near else ""
        raise ValueError(f"{prefix}unknown configuration keys: {', '.join(unknown)}{hint}")
    try:
        return {name: check_option(name, value) for name, value in config.items()}
    except ValueError as error:
        raise ValueError(f"{prefix}{error}") from None


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a ``--config`` JSON file of options, every value checked (:func:`checked_options`).

    Args:
        path: a JSON object ``{option: value}`` (the names of :class:`RunConfig`).

    Returns:
        ``{option: value}`` in the options' types.

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: one line naming the file and the problem (not readable, not JSON, not an object, an
            unknown option, a value of another type).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: configuration file not found")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path}: not valid JSON (line {error.lineno} column {error.colno}: {error.msg})"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or type(error).__name__
        raise ValueError(f"{path}: cannot read the configuration file ({reason})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a JSON object of options, got a {type(values).__name__}")
    return checked_options(values, path)


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """The device of a name, checked here: ``"auto"`` is CUDA when available, else the CPU; any other name
    (``"cpu"``, ``"cuda:1"``) or a ``torch.device`` as it is, if this machine has it.

    Raises:
        ValueError: one line, for a name that is no device or a GPU this machine does not have.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = name if isinstance(name, torch.device) else torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"--device {name}: not a device name; use auto, cpu or cuda[:i]") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device {name}: CUDA is not available on this machine (no GPU, no driver, or a CPU "
                "build of PyTorch); use --device cpu or auto"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(
                f"--device {name}: this machine has {count} GPUs (cuda:0 to cuda:{count - 1}); "
                "choose one of them"
            )
    return device


def validate_config(cfg: RunConfig) -> None:
    """Check the options against each other before any work starts.

    Raises:
        ValueError: naming the offending option and what is allowed.
    """
    for f in fields(cfg):
        check_option(f.name, getattr(cfg, f.name))
    for f in fields(cfg):
        choices = option_choices(f.name)
        value = getattr(cfg, f.name)
        if choices is not None and value not in choices and str(value).lower() not in choices:
            raise ValueError(f"{f.name}={value!r} is not one of {', '.join(map(str, choices))}")
        _, nargs = option_type(f.name)
        if isinstance(nargs, int) and value is not None and len(value) != nargs:
            raise ValueError(f"{f.name} needs {nargs} values, got {len(value)}: {tuple(value)}")
    if cfg.input_channels is not None and cfg.input_channels != cfg.in_channels:
        raise ValueError(
            f"input_channels={cfg.input_channels}, but the data gives {cfg.in_channels} channels "
            f"({NUM_CHANNELS} sequences x {2 * cfg.context + 1} slices with context={cfg.context}, "
            f"spatial_dims={cfg.spatial_dims})"
        )
    if cfg.spatial_dims == 3 and cfg.context:
        raise ValueError("context (2.5D) applies to 2D networks only; use spatial_dims=2 or context=0")
    if cfg.spatial_dims == 3 and (cfg.crop_size is not None or cfg.prob_edge_negative > 0):
        raise ValueError(
            "crop_size and prob_edge_negative apply to 2D training (slices); 3D trains on patch_size"
        )
    if cfg.crop_size is not None and min(cfg.crop_size) < 1:
        raise ValueError(f"crop_size must be positive, got {tuple(cfg.crop_size)}")
    if cfg.edge_slices < 1:
        raise ValueError(f"edge_slices must be >= 1, got {cfg.edge_slices}")
    if cfg.spatial_dims == 3 and cfg.input_size is not None:
        raise ValueError(
            "input_size applies to 2D networks only (3D inference runs at the native size); "
            "use spatial_dims=2 or leave input_size unset"
        )
    for key in ("epochs", "batch_size", "val_interval", "num_samples", "volume_repeats", "sw_batch_size"):
        if getattr(cfg, key) < 1:
            raise ValueError(f"{key} must be >= 1, got {getattr(cfg, key)}")
    for key in ("lr", "pos", "neg", "weight_decay", "grad_clip"):
        if getattr(cfg, key) < 0:
            raise ValueError(f"{key} must be >= 0, got {getattr(cfg, key)}")
    if cfg.members < 1:
        raise ValueError(f"members must be >= 1, got {cfg.members}")
    if cfg.pos + cfg.neg <= 0:
        raise ValueError("pos and neg cannot both be 0")
    if not 0.0 < cfg.threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {cfg.threshold}")
    if cfg.val_fold is not None and cfg.val_fold == cfg.fold:
        raise ValueError(
            f"val_fold={cfg.val_fold} equals fold={cfg.fold}: the checkpoint would be chosen on the test "
            "patients; pick another validation fold"
        )
    if cfg.train_on_all and (cfg.early_stopping > 0 or cfg.scheduler == "plateau"):
        raise ValueError(
            "train_on_all watches the test fold: early_stopping and the plateau schedule would decide on "
            "the test patients; turn them off or train with a validation fold"
        )
    low, high = cfg.zoom_range
    if not 0 < low <= high:
        raise ValueError(f"zoom_range needs 0 < MIN <= MAX, got {tuple(cfg.zoom_range)}")
    for f in fields(cfg):
        if f.name.startswith("prob_") and not 0.0 <= getattr(cfg, f.name) <= 1.0:
            raise ValueError(f"{f.name} must be in [0, 1], got {getattr(cfg, f.name)}")
    if cfg.resume and cfg.overwrite:
        raise ValueError("resume and overwrite exclude each other: continue the run or start it again")
    if cfg.spatial_dims == 3:
        stride = network_stride(cfg.arch, 3, **cfg.network_kwargs)
        if any(p % s for p, s in zip(cfg.patch_size, stride, strict=True)):
            raise ValueError(
                f"patch_size {tuple(cfg.patch_size)} must be a multiple of {cfg.arch}'s stride {stride}"
            )
