"""Per-patient evaluation time: whole-volume inference + post-processing + metrics, loading reported apart.

It runs :func:`pipeline.workflows.prediction.evaluate` (the code behind ``lggseg evaluate``) over the prepared
patients and reads the per-patient timings it records from the evaluator's events: ``load_s``
(reading and normalising the volume), ``inference_s`` (``SliceInferer`` over every slice),
``postprocess_s`` (threshold and connected components), ``metrics_s`` (3D metrics and slice counts);
``eval_s`` is the sum of the last three. Without ``--checkpoint`` it evaluates an untrained network of
``--arch`` (same cost of inference; its predictions are not realistic, which changes the cost of the
metrics a little).

Usage::

    .venv/bin/python scripts/benchmark_evaluation.py --checkpoint runs/x/fold0/checkpoints/best_model.pt \
        --output runs/bench/evaluation.json          # --limit 10 for a quick look
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from bench_data import add_data_arguments, prepared_entries
from figures import write_figures

from pipeline.config import RunConfig
from pipeline.model_files import create_network
from pipeline.workflows.prediction import evaluate

TIMINGS = ("load_s", "inference_s", "postprocess_s", "metrics_s", "eval_s")


def untrained_checkpoint(arch: str, folder: Path) -> Path:
    """Save an untrained network of ``arch`` as an lggseg checkpoint in ``folder``."""
    cfg = RunConfig.from_dict({"arch": arch, "progress": False})
    torch.manual_seed(0)
    path = folder / "untrained.pt"
    torch.save({"model": create_network(cfg).state_dict(), "config": asdict(cfg)}, path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_data_arguments(parser)
    parser.add_argument("--checkpoint", type=Path, help="model to evaluate (default: an untrained --arch)")
    parser.add_argument("--arch", default="unext")
    parser.add_argument("--tta", default="none", choices=("none", "flip", "scale", "flip+scale"))
    parser.add_argument("--keep-largest", type=int, default=1)
    parser.add_argument("--sw-batch-size", type=int, default=32)
    parser.add_argument("--output", type=Path, help="write the figures as JSON")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    entries = prepared_entries(args)
    overrides = {
        "tta": args.tta,
        "keep_largest": args.keep_largest,
        "sw_batch_size": args.sw_batch_size,
        "progress": False,
        "num_workers": 0,
    }
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or untrained_checkpoint(args.arch, Path(tmp))
        result = evaluate(checkpoint, entries=entries, overrides=overrides, write=False)
    records = result["records"]
    figures = {
        "checkpoint": str(args.checkpoint) if args.checkpoint else f"untrained {args.arch}",
        "patients": len(records),
        "slices": int(sum(r["n_slices"] for r in records)),
        "threads": torch.get_num_threads(),
        "tta": args.tta,
        "keep_largest": args.keep_largest,
        "mean_s": {k: float(np.mean([r[k] for r in records])) for k in TIMINGS},
        "max_s": {k: float(np.max([r[k] for r in records])) for k in TIMINGS},
        "mean_dice": float(np.mean([r["dice"] for r in records])),
    }
    print(json.dumps(figures, indent=2))
    write_figures(figures, args.output)


if __name__ == "__main__":
    main()
