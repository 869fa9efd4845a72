"""Training throughput with the full data pipeline vs the bare network; peak RAM with every patient cached.

1. Bare: forward + backward + Adam step of the network on random tensors of one training batch.
2. Pipeline: ``lggseg``'s own training loader (``CacheDataset`` of every patient's normalised volume,
   tumour-weighted slice sampling, augmentation) feeding MONAI's ``SupervisedTrainer`` built by
   :func:`pipeline.engines.build_trainer`; timed after the cache is full, so no file is read.
3. Peak resident memory of this process (``ru_maxrss``) after caching every patient and training.

Usage (prepares ``../shared/data/lgg/kaggle_3m`` into ``--work`` the first time)::

    .venv/bin/python scripts/benchmark_training.py --iterations 30 --output runs/bench/training.json

Presets (``--preset NAME``, repeatable; ``--list-presets``) compare networks, precisions and crop sizes at
recipe r2's pipeline (2.5D context 1, batch Dice, AdamW, the robustness augmentations; ``runs/unext_r2.sh``),
one after the other in one process over one cache (measure ratios side by side, on a quiet machine; with
``--rounds N`` every preset is timed N times in turn and its best round kept)::

    OMP_NUM_THREADS=2 .venv/bin/python scripts/benchmark_training.py --work data/lgg --rounds 2 \\
        --preset unext_r2_fp32 --preset unext_r2_bf16 --output runs/bench/presets.json

``basicunet`` presets build MONAI's ``BasicUNet`` here (the registry has no such entry; no deep supervision);
the others are registry networks.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from bench_data import add_data_arguments, prepared_entries
from ignite.engine import Events

from pipeline.config import RunConfig
from pipeline.engines import build_dataset, build_train_loader, build_trainer
from pipeline.model_files import create_network
from pipeline.training.autocast import cpu_bf16_supported
from pipeline.training.losses import build_loss
from pipeline.training.optim import build_optimizer
from pipeline.transforms import build_transforms
from pipeline.workflows.builders import transform_settings

# recipe r2 (runs/unext_r2.sh): what every preset trains with, unless the preset says otherwise
R2_RECIPE: dict[str, Any] = {
    "arch": "unext",
    "deep_supervision": True,
    "batch_dice": True,
    "optimizer": "adamw",
    "lr": 1e-3,
    "weight_decay": 1e-2,
    "context": 1,
    "batch_size": 16,
    "num_samples": 8,
    "prob_skull_strip": 0.25,
    "prob_sequence_dropout": 0.1,
    "prob_zoom": 0.3,
    "zoom_range": (0.75, 1.3),
    "prob_bias_field": 0.2,
    "prob_histogram_shift": 0.2,
    "prob_smooth": 0.1,
    "prob_noise": 0.1,
}
BASIC16, BASIC32 = (16, 16, 32, 64, 128, 16), (32, 32, 64, 128, 256, 32)
CROP = {"crop_size": (160, 160)}
BF16 = {"amp_cpu": True}
PRESETS: dict[str, dict[str, Any]] = {
    "unext_r2_fp32": {},
    "unext_r2_bf16": BF16,
    "unext_r2_crop160_bf16": {**CROP, **BF16},
    "basicunet16_crop160_bf16": {"arch": "basicunet", "features": BASIC16, **CROP, **BF16},
    "basicunet32_crop160_bf16": {"arch": "basicunet", "features": BASIC32, **CROP, **BF16},
    "basicunet16_whole_bf16": {"arch": "basicunet", "features": BASIC16, **BF16},
    "basicunet32_whole_bf16": {"arch": "basicunet", "features": BASIC32, **BF16},
    "unet16_crop160_fp32": {"arch": "unet", "network_kwargs": {"base_width": 16}, **CROP},
    "unet16_crop160_bf16": {"arch": "unet", "network_kwargs": {"base_width": 16}, **CROP, **BF16},
    "unet32_crop160_bf16": {"arch": "unet", "network_kwargs": {"base_width": 32}, **CROP, **BF16},
    "unet16_whole_bf16": {"arch": "unet", "network_kwargs": {"base_width": 16}, **BF16},
    "unet32_whole_bf16": {"arch": "unet", "network_kwargs": {"base_width": 32}, **BF16},
}
BASICUNET_STRIDE = 16  # four 2x2 poolings
EPOCH_SLICES = 64 * 4 * 8  # recipe r2: 64 training volumes x 4 visits x 8 slices = 128 steps of 16


def peak_rss_mib() -> float:
    """Peak resident set size of this process in MiB (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_network(cfg: RunConfig, features: tuple[int, ...] | None = None) -> torch.nn.Module:
    """The registry's network of ``cfg``, or MONAI's ``BasicUNet`` with ``features`` (basicunet presets)."""
    if features is None:
        return create_network(cfg)
    from monai.networks.nets import BasicUNet

    return BasicUNet(
        spatial_dims=2, in_channels=cfg.in_channels, out_channels=cfg.num_classes, features=features
    )


def bare_throughput(cfg: RunConfig, size: tuple[int, int], iterations: int, warmup: int) -> float:
    """Slices per second of forward + backward + step on random tensors (no data pipeline)."""
    network = create_network(cfg).train()
    optimizer = build_optimizer(cfg.optimizer, network.parameters(), cfg.lr)
    loss_fn = build_loss(cfg.loss, cfg.num_classes, cfg.deep_supervision)
    x = torch.randn(cfg.batch_size, cfg.in_channels, *size)
    y = (torch.rand(cfg.batch_size, 1, *size) > 0.9).float()
    for i in range(warmup + iterations):
        if i == warmup:
            start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss_fn(network(x), y).backward()
        optimizer.step()
    return cfg.batch_size * iterations / (time.perf_counter() - start)


def _cache_head(cfg: RunConfig) -> tuple:
    """The settings of the cached (deterministic) head of the training chain: presets that agree on them
    share one cache."""
    strip = cfg.augment and cfg.prob_skull_strip > 0
    return (cfg.input_size, cfg.clip_lower, cfg.clip_upper, cfg.brain_threshold, cfg.cache_float16, strip)


def pipeline_throughput(
    cfg: RunConfig,
    files: list[dict],
    iterations: int,
    warmup: int,
    features: tuple[int, ...] | None = None,
    cached: dict[tuple, Any] | None = None,
) -> dict[str, float]:
    """Slices per second of the real training loop once the cache is full, and the caching time.

    Args:
        cfg: the run configuration.
        files: datalist entries to cache.
        iterations, warmup: timed and untimed steps.
        features: MONAI ``BasicUNet`` features (``None``: the registry network of ``cfg``).
        cached: datasets already filled, by :func:`_cache_head` (reused and extended).
    """
    stride = BASICUNET_STRIDE if features is not None else cfg.stride()
    transform = build_transforms("train", {**asdict(transform_settings(cfg)), "divisible": stride})
    start = time.perf_counter()
    cached = {} if cached is None else cached
    head = _cache_head(cfg)
    if head not in cached:
        cached[head] = build_dataset(files, transform, cfg.cache, progress=False)
    dataset = cached[head]
    dataset.transform = transform  # same cached head, this preset's sampling and augmentation
    loader = build_train_loader(dataset, cfg.batch_size, cfg.num_samples, cfg.volume_repeats)
    cache_s = time.perf_counter() - start
    network = make_network(cfg, features)
    trainer = build_trainer(
        device=torch.device("cpu"),
        max_epochs=cfg.epochs,
        train_data_loader=loader,
        network=network,
        optimizer=build_optimizer(cfg.optimizer, network.parameters(), cfg.lr, weight_decay=cfg.weight_decay),
        loss_function=build_loss(cfg.loss, cfg.num_classes, cfg.deep_supervision, cfg.batch_dice),
        amp_cpu=cfg.amp_cpu,
    )
    marks: dict[str, float] = {}
    shapes: list[tuple[int, ...]] = []
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED(once=warmup), lambda _: marks.update(t0=time.perf_counter())
    )
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED(once=1), lambda e: shapes.append(tuple(e.state.batch["image"].shape))
    )
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=warmup + iterations), lambda e: e.terminate())
    trainer.run()
    seconds = time.perf_counter() - marks["t0"]
    slices = cfg.num_samples * loader.batch_size * iterations
    return {
        "slices_per_s": slices / seconds,
        "cache_fill_s": cache_s,
        "slices_per_batch": slices / iterations,
        "batch_shape": list(shapes[0]) if shapes else [],
        "parameters_m": sum(p.numel() for p in network.parameters()) / 1e6,
        "autocast": type(trainer.inferer).__name__ == "AutocastInferer",
    }


def preset_config(name: str, base: Mapping[str, Any]) -> tuple[RunConfig, tuple[int, ...] | None]:
    """The configuration of a preset on top of ``base``, and its ``BasicUNet`` features (or ``None``)."""
    options = {**R2_RECIPE, **base, **PRESETS[name]}
    features = options.pop("features", None)
    if options["arch"] == "basicunet":
        # "unet" stands in for the options (stride 16 as BasicUNet's); make_network builds the BasicUNet
        options.update(arch="unet", deep_supervision=False)
    return RunConfig.from_dict(options), features


def run_presets(args: argparse.Namespace, files: list[dict], base: Mapping[str, Any]) -> dict[str, Any]:
    """Time every ``--preset`` over one cache, ``--rounds`` times in turn; returns the figures by preset.

    On a shared machine another job slows some rounds: each preset's best round (``slices_per_s``) is the
    figure nearest a quiet machine, and every round is kept (``rounds_slices_per_s``).
    """
    cached: dict[tuple, Any] = {}
    results: dict[str, Any] = {}
    for round_ in range(1, args.rounds + 1):
        for name in args.preset:
            cfg, features = preset_config(name, base)
            figures = pipeline_throughput(cfg, files, args.iterations, args.warmup, features, cached)
            rounds = [*results.get(name, {}).get("rounds_slices_per_s", []), figures["slices_per_s"]]
            figures["rounds_slices_per_s"] = rounds
            figures["slices_per_s"] = max(rounds)
            figures["epoch_s_estimate"] = EPOCH_SLICES / figures["slices_per_s"]
            network = f"BasicUNet{list(features)}" if features else f"{cfg.arch}{cfg.network_kwargs or ''}"
            figures["network"] = network
            figures["crop_size"] = list(cfg.crop_size) if cfg.crop_size else None
            figures["amp_cpu"] = cfg.amp_cpu
            results[name] = figures
            print(
                f"round {round_} {name:26s} {rounds[-1]:6.1f} slices/s (best {figures['slices_per_s']:5.1f}, "
                f"~{figures['epoch_s_estimate']:4.0f} s/epoch) batch {figures['batch_shape']} "
                f"{figures['parameters_m']:.2f} M autocast {figures['autocast']} load {_load()}",
                flush=True,
            )
    return results


def _load() -> str:
    """The 1-minute load average (another job on the machine shows here)."""
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_data_arguments(parser)
    parser.add_argument("--arch", default="unext")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-samples", type=int, default=8)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--preset", action="append", choices=sorted(PRESETS), help="time this preset")
    parser.add_argument("--rounds", type=int, default=1, help="time the presets this many times in turn")
    parser.add_argument("--list-presets", action="store_true", help="print the presets and exit")
    parser.add_argument("--output", type=Path, help="write the figures as JSON")
    args = parser.parse_args()
    if args.list_presets:
        print(json.dumps({k: {**R2_RECIPE, **v} for k, v in PRESETS.items()}, indent=1, default=str))
        return
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)

    files = prepared_entries(args)
    base = {
        "batch_size": args.batch_size,
        "num_samples": args.num_samples,
        "num_workers": args.num_workers,
        "progress": False,
        "volume_repeats": 1000,
    }
    common = {
        "patients_cached": len(files),
        "slices_cached": sum(f["num_slices"] for f in files),
        "threads": torch.get_num_threads(),
        "num_workers": args.num_workers,
        "cpu_bf16": cpu_bf16_supported(),
        "iterations": args.iterations,
        "warmup": args.warmup,
        "rounds": args.rounds,
    }
    if args.preset:
        figures: dict[str, Any] = {**common, "presets": run_presets(args, files, base)}
        figures["peak_rss_mib"] = peak_rss_mib()
        figures["recipe"] = R2_RECIPE
    else:
        cfg = RunConfig.from_dict({**base, "arch": args.arch})
        size = (256, 256)
        bare = bare_throughput(cfg, size, args.iterations, args.warmup)
        pipe = pipeline_throughput(cfg, files, args.iterations, args.warmup)
        figures = {
            "arch": args.arch,
            **common,
            "batch_slices": pipe["slices_per_batch"],
            "bare_slices_per_s": bare,
            "pipeline_slices_per_s": pipe["slices_per_s"],
            "pipeline_over_bare": pipe["slices_per_s"] / bare,
            "cache_fill_s": pipe["cache_fill_s"],
            "peak_rss_mib": peak_rss_mib(),
            "config": {k: v for k, v in asdict(cfg).items() if k != "network_kwargs"},
        }
        print(json.dumps({k: v for k, v in figures.items() if k != "config"}, indent=2))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(figures, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
