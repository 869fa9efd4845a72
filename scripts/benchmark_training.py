"""Training throughput with the full data pipeline vs the bare network; peak RAM with every patient cached.

1. Bare: forward + backward + Adam step of the network on random tensors of one training batch.
2. Pipeline: ``lggseg``'s own training loader (``CacheDataset`` of every patient's normalised volume,
   tumour-weighted slice sampling, augmentation) feeding MONAI's ``SupervisedTrainer`` built by
   :func:`pipeline.engines.build_trainer`; timed after the cache is full, so no file is read.
3. Peak resident memory of this process (``ru_maxrss``) after caching every patient and training.

Usage (prepares ``../shared/data/lgg/kaggle_3m`` into ``--work`` the first time)::

    .venv/bin/python scripts/benchmark_training.py --iterations 30 --output runs/bench/training.json
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import time
from dataclasses import asdict
from pathlib import Path

import torch
from bench_data import add_data_arguments, prepared_entries
from ignite.engine import Events

from pipeline.config import RunConfig
from pipeline.engines import build_dataset, build_train_loader, build_trainer
from pipeline.model_files import create_network
from pipeline.training.losses import build_loss
from pipeline.training.optim import build_optimizer
from pipeline.transforms import build_transforms
from pipeline.workflows.builders import transform_settings


def peak_rss_mib() -> float:
    """Peak resident set size of this process in MiB (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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


def pipeline_throughput(cfg: RunConfig, files: list[dict], iterations: int, warmup: int) -> dict[str, float]:
    """Slices per second of the real training loop once the cache is full, and the caching time."""
    start = time.perf_counter()
    dataset = build_dataset(files, build_transforms("train", transform_settings(cfg)), cfg.cache)
    loader = build_train_loader(dataset, cfg.batch_size, cfg.num_samples, cfg.volume_repeats)
    cache_s = time.perf_counter() - start
    network = create_network(cfg)
    trainer = build_trainer(
        device=torch.device("cpu"),
        max_epochs=cfg.epochs,
        train_data_loader=loader,
        network=network,
        optimizer=build_optimizer(cfg.optimizer, network.parameters(), cfg.lr),
        loss_function=build_loss(cfg.loss, cfg.num_classes, cfg.deep_supervision, cfg.batch_dice),
    )
    marks: dict[str, float] = {}
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED(once=warmup), lambda _: marks.update(t0=time.perf_counter())
    )
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=warmup + iterations), lambda e: e.terminate())
    trainer.run()
    seconds = time.perf_counter() - marks["t0"]
    slices = cfg.num_samples * loader.batch_size * iterations
    return {
        "slices_per_s": slices / seconds,
        "cache_fill_s": cache_s,
        "slices_per_batch": slices / iterations,
    }


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
    parser.add_argument("--output", type=Path, help="write the figures as JSON")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)

    files = prepared_entries(args)
    cfg = RunConfig.from_dict(
        {
            "arch": args.arch,
            "batch_size": args.batch_size,
            "num_samples": args.num_samples,
            "num_workers": args.num_workers,
            "progress": False,
            "volume_repeats": 1000,
        }
    )
    size = (256, 256)
    bare = bare_throughput(cfg, size, args.iterations, args.warmup)
    pipe = pipeline_throughput(cfg, files, args.iterations, args.warmup)
    figures = {
        "arch": args.arch,
        "patients_cached": len(files),
        "slices_cached": sum(f["num_slices"] for f in files),
        "batch_slices": pipe["slices_per_batch"],
        "threads": torch.get_num_threads(),
        "num_workers": args.num_workers,
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
