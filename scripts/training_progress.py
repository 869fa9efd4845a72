"""Progress and time-to-quality of training runs, read from their logs (``lggseg train`` / ``cv``).

For each fold: epochs done, best validation per-patient mean Dice and its epoch, and the wall time
(sum of the logged epoch times, validation included) until the validation Dice first reached each
threshold. Resumed runs log the same epochs again from their checkpoint: the later line of an epoch
wins, so interrupted work is not counted twice.

    python scripts/training_progress.py runs/unext_r1.log [--thresholds 0.8 0.85] [--output FILE.json]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

FOLD = re.compile(r"fold (\d+): \d+ training, \d+ validation, \d+ test patients")
EPOCH = re.compile(
    r"epoch (\d+)/(\d+) \| loss [\d.]+ \| lr \S+ \|"
    r"(?: val_mean_dice ([\d.]+) \(best [\d.]+ @ epoch \d+\) \|)? ([\d.]+) s"
)


def parse_log(lines: Iterable[str]) -> dict[int, dict[int, dict[str, float | None]]]:
    """``{fold: {epoch: {"seconds", "dice"}}}`` from the lines of a training log.

    Args:
        lines: the log's lines (a fold starts at its "fold k: ... patients" line; a log without one is
            fold 0).

    Returns:
        per fold, per epoch: wall seconds of the epoch and its validation Dice (``None`` when it did not
        validate). A repeated epoch (after a resume) keeps its last line.
    """
    folds: dict[int, dict[int, dict[str, float | None]]] = {}
    fold = 0
    for line in lines:
        if match := FOLD.search(line):
            fold = int(match.group(1))
        elif match := EPOCH.search(line):
            dice = float(match.group(3)) if match.group(3) else None
            folds.setdefault(fold, {})[int(match.group(1))] = {"seconds": float(match.group(4)), "dice": dice}
    return folds


def summarise(
    epochs: dict[int, dict[str, float | None]], thresholds: Sequence[float]
) -> dict[str, float | int | None]:
    """Epochs done, best Dice and its epoch, and minutes to reach each threshold (``None``: not yet)."""
    summary: dict[str, float | int | None] = {"epochs": max(epochs) if epochs else 0}
    scored = [(e, v["dice"]) for e, v in sorted(epochs.items()) if v["dice"] is not None]
    best = max(scored, key=lambda item: item[1]) if scored else (None, None)
    summary["best_dice"], summary["best_epoch"] = best[1], best[0]
    for threshold in thresholds:
        reached = next((e for e, d in scored if d >= threshold), None)
        minutes = None
        if reached is not None:
            minutes = sum(float(v["seconds"] or 0.0) for e, v in epochs.items() if e <= reached) / 60
        summary[f"minutes_to_{threshold:g}"] = minutes
        summary[f"epoch_to_{threshold:g}"] = reached
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("log", type=Path, help="a training or cross-validation log")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.8, 0.85], help="validation Dice")
    parser.add_argument("--output", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if not args.log.is_file():
        print(f"training_progress: error: {args.log}: not found", file=sys.stderr)
        return 2
    folds = parse_log(args.log.read_text(errors="replace").splitlines())
    table = {fold: summarise(epochs, args.thresholds) for fold, epochs in sorted(folds.items())}
    for fold, row in table.items():
        reached = ", ".join(
            f">= {t:g}: "
            + (
                "not yet"
                if row[f"minutes_to_{t:g}"] is None
                else f"epoch {row[f'epoch_to_{t:g}']}, {row[f'minutes_to_{t:g}']:.0f} min"
            )
            for t in args.thresholds
        )
        best = (
            "none yet" if row["best_dice"] is None else f"{row['best_dice']:.4f} @ epoch {row['best_epoch']}"
        )
        print(f"fold {fold}: {row['epochs']} epochs, best validation Dice {best}; {reached}")
    if args.output:
        args.output.write_text(json.dumps(table, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
