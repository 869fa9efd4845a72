"""``lggseg demo``: the whole pipeline on the built-in synthetic data set, no download needed."""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

from pipeline.cli import main as lggseg

logger = logging.getLogger("lggseg")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``demo`` to ``lggseg``."""
    demo = subparsers.add_parser(
        "demo",
        help="run the pipeline end to end on synthetic LGG-like data (the README's main command)",
        description="Generate deterministic synthetic patients in the Kaggle layout, then run every "
        "pipeline step on them with the same commands a user runs on the real data.",
    )
    demo.add_argument(
        "--output", type=Path, default=Path("runs/demo"), help="work folder (default runs/demo)"
    )
    demo.add_argument("--patients", type=int, default=10, help="number of synthetic patients (default 10)")
    demo.add_argument("--size", type=int, default=128, help="slice size of the synthetic data (default 128)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--overwrite", action="store_true", help="start again if --output already exists")
    demo.set_defaults(func=run_demo)


def demo_steps(args: argparse.Namespace) -> list[list[str]]:
    """The ``lggseg`` command lines the demo runs, in order.

    Args:
        args: the parsed ``demo`` arguments.

    Returns:
        one argument list per step.
    """
    raw, prepared = args.output / "kaggle_3m", args.output / "prepared"
    return [
        [
            "synthesize",
            "--output",
            str(raw),
            "--patients",
            str(args.patients),
            "--size",
            str(args.size),
            "--seed",
            str(args.seed),
        ],
        ["prepare", "--input", str(raw), "--output", str(prepared), "--seed", str(args.seed)],
        *train_evaluate_infer_steps(args, raw, prepared),
    ]


def train_evaluate_infer_steps(args: argparse.Namespace, raw: Path, prepared: Path) -> list[list[str]]:
    """Train UNeXt briefly on fold 0's training folds, evaluate it per patient on the held-out fold, and
    segment every raw patient folder (NIfTI and Kaggle-layout masks)."""
    runs = args.output / "runs"
    best = str(runs / "demo" / "fold0" / "checkpoints" / "best_model.pt")
    training = (
        "--name demo --fold 0 --arch unext --epochs 6 --batch-size 16 --num-samples 16 --volume-repeats 2"
    )
    return [
        [
            "train",
            "--data",
            str(prepared),
            "--output",
            str(runs),
            *training.split(),
            "--seed",
            str(args.seed),
        ],
        ["evaluate", "--checkpoint", best, "--keep-largest", "1", "--save-predictions"],
        [
            "infer",
            "--checkpoint",
            best,
            "--input",
            str(raw),
            "--output",
            str(args.output / "predictions"),
            "--keep-largest",
            "1",
            "--kaggle-masks",
        ],
    ]


def run_demo(args: argparse.Namespace) -> int:
    """Run ``lggseg demo``: every step, stopping at the first failure."""
    if args.output.exists() and any(args.output.iterdir()):
        if not args.overwrite:
            logger.error("%s already exists; pass --overwrite to start again", args.output)
            return 1
        shutil.rmtree(args.output)
    for number, step in enumerate(demo_steps(args), start=1):
        logger.info("demo step %d: lggseg %s", number, " ".join(step))
        code = lggseg(step)
        if code:
            logger.error("demo step %d failed (exit code %d)", number, code)
            return code
    logger.info("demo finished: results in %s", args.output)
    return 0
