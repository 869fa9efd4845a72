"""``lggseg demo``: the whole pipeline on the built-in synthetic data set, no download needed."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.cli import main as lggseg
from pipeline.cli.parsing import add_command

logger = logging.getLogger("lggseg")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``demo`` to ``lggseg``."""
    demo = add_command(
        subparsers,
        "demo",
        run_demo,
        interrupted="the steps finished so far are in {output}; run again with --overwrite to start again",
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


DEMO_PARTS = ("kaggle_3m", "prepared", "runs", "predictions")


def _clear_for_overwrite(output: Path) -> str | None:
    """Make room for a new demo in ``output``, removing only what an earlier demo wrote.

    Returns:
        ``None`` when the demo may start, else the one-line reason it may not (nothing removed then).
    """
    from pipeline.safety import MANIFEST_FILENAME, foreign_files, remove_owned

    foreign = sorted(p.name for p in output.iterdir() if p.name not in DEMO_PARTS)
    if foreign:
        return (
            f"{output}: holds {', '.join(foreign[:3])}, which the demo did not write; choose another --output"
        )
    raw = output / "kaggle_3m"
    if raw.is_dir() and foreign_files(raw):
        return f"{raw}: holds files the demo did not write; choose another --output"
    if raw.is_dir():
        remove_owned(raw)
        (raw / MANIFEST_FILENAME).unlink(missing_ok=True)
        if not any(raw.iterdir()):
            raw.rmdir()
    return None


def run_demo(args: argparse.Namespace) -> int:
    """Run ``lggseg demo``: every step, stopping at the first failure. ``--overwrite`` starts again in a
    folder of an earlier demo and replaces only the files the demo wrote; ``--debug`` is passed on to
    the steps.

    Raises:
        ValueError: ``--output`` holds an earlier demo and no ``--overwrite``, or files the demo did not
            write (bad usage, exit code 2; nothing removed).
    """
    steps = demo_steps(args)
    if args.output.exists() and any(args.output.iterdir()):
        if not args.overwrite:
            raise ValueError(f"{args.output}: already exists; pass --overwrite to start again")
        problem = _clear_for_overwrite(args.output)
        if problem:
            raise ValueError(problem)
        for step in steps:
            if step[0] in ("prepare", "train", "infer"):
                step.append("--overwrite")
    for number, step in enumerate(steps, start=1):
        logger.info("demo step %d: lggseg %s", number, " ".join(step))
        code = lggseg(["--debug", *step] if getattr(args, "debug", False) else step)
        if code:
            logger.error("demo step %d failed (exit code %d)", number, code)
            return code
    logger.info("demo finished: results in %s", args.output)
    return 0
