"""From a :class:`pipeline.config.RunConfig` to the builders' arguments: the one place that turns a
run configuration into the keyword arguments of :mod:`pipeline.engines`,
:func:`pipeline.networks.build_network`, :func:`pipeline.transforms.build_transforms`, the inferer and the
post-processing, the same functions the bundle's JSON configs call.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from monai.data import Dataset

from pipeline.config import RunConfig
from pipeline.engines import (
    build_dataset,
)
from pipeline.inference.inferers import VolumeInferer
from pipeline.inference.postprocessing import build_postprocessing
from pipeline.ingestion.datalist import DATALIST_FILENAME, load_datalist, split_folds
from pipeline.training.autocast import cpu_bf16_supported
from pipeline.transforms import TransformSettings

logger = logging.getLogger(__name__)


def transform_settings(cfg: RunConfig) -> TransformSettings:
    """The transform options of a configuration (training samples padded to the network's stride)."""
    return TransformSettings.from_dict({**asdict(cfg), "divisible": cfg.stride()})


def make_inferer(cfg: RunConfig) -> VolumeInferer:
    """The whole-volume inferer of a configuration (validation, evaluation, inference); with ``cfg.amp``
    the network runs in bf16 on CPUs that have it natively (on CUDA the engine's ``amp`` autocasts)."""
    return VolumeInferer(
        spatial_dims=cfg.spatial_dims,
        num_classes=cfg.num_classes,
        context=cfg.context,
        divisible=cfg.stride(),
        input_size=cfg.input_size,
        patch_size=cfg.patch_size,
        sw_batch_size=cfg.sw_batch_size,
        tta=cfg.tta,
        cpu_bf16=cfg.amp,
    )


def network_precision(cfg: RunConfig, device: torch.device | str) -> str:
    """How the networks of :func:`make_inferer` and the evaluator run on ``device``, for logs and reports.

    Returns:
        ``"float16 AMP"`` (CUDA with ``amp``), ``"bf16 autocast"`` (a CPU with native bf16 and ``amp``) or
        ``"float32"``.
    """
    if not cfg.amp:
        return "float32"
    if torch.device(device).type == "cuda":
        return "float16 AMP"
    return "bf16 autocast" if cpu_bf16_supported() else "float32"


def make_postprocessing(cfg: RunConfig, preprocessing: Any = None) -> Any:
    """Threshold and connected-component filters of a configuration.

    Args:
        cfg: the configuration.
        preprocessing: the cases' transform chain: the probability is first mapped back onto each case's own
            grid through it (MONAI ``Invertd``), then thresholded there.
    """
    return build_postprocessing(
        cfg.threshold,
        cfg.keep_largest,
        cfg.min_size,
        preprocessing=preprocessing,
        edge_components=cfg.edge_components,
        min_mass_fraction=cfg.min_mass_fraction,
        quality=cfg.quality,
    )


def datalist_path(data: str | Path) -> Path:
    path = Path(data)
    return path / DATALIST_FILENAME if path.is_dir() else path


def split_datalist(cfg: RunConfig) -> tuple[list[dict], list[dict], list[dict]]:
    """Train, validation and test entries of the configured fold (patient-level, from the datalist).

    With ``train_on_all`` every fold but the test fold trains, and the test fold is also the "validation"
    set: validated only to draw the learning curves, never to choose a checkpoint (the last one is kept).

    Raises:
        LGGDataError: missing datalist or an entry naming a missing file.
        ValueError: a fold with no patients, or validation fold = test fold.
    """
    datalist = datalist_path(cfg.data)
    entries = load_datalist(datalist)
    try:
        parts = split_folds(entries, cfg.fold, cfg.val_fold, cfg.train_on_all)
    except ValueError as err:
        raise ValueError(f"{datalist}: {err}") from err
    return parts["train"], parts["val"], parts["test"]


def _cache_dir(cfg: RunConfig, tag: str) -> Path:
    # one folder per transform setting; inside, PersistentDataset keys each file by the data's content
    settings = json.dumps(asdict(transform_settings(cfg)), sort_keys=True, default=str)
    digest = hashlib.sha1(settings.encode()).hexdigest()[:12]
    return Path(cfg.cache_dir or Path(cfg.output) / cfg.name / "cache") / f"{tag}-{digest}"


def cached_dataset(cfg: RunConfig, files: Sequence[dict], transform: Any, tag: str) -> Dataset:
    cache_dir = _cache_dir(cfg, tag) if cfg.cache == "disk" else None
    return build_dataset(files, transform, cfg.cache, cache_dir, cfg.num_workers, cfg.progress)


def datalist_entries(data: str | Path, folds: Sequence[int] | None) -> list[dict]:
    return load_datalist(datalist_path(data), folds=folds)
