"""The network comparison table of a cross-validation study (issue 8, item 1), from finished runs only.

One row per CV run folder (``OUTPUT/NAME`` of ``lggseg cv``): network and input, parameters and GMACs per
slice (counted on the run's own network), folds finished, epochs, mean best validation Dice, the pooled
per-patient test figures of ``RUN/cv`` (Dice mean and median, HD95 mean and median), mean CPU inference
seconds per volume (the folds' evaluation reports), wall minutes of training per fold (when the run's
logs are given) and this machine's CPU. Nothing is typed by hand.

    python scripts/compare_runs.py runs/unext_r1 runs/unet_short [--log LOG ...] [--output table.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from training_progress import parse_log  # noqa: E402

from pipeline.checkpoint import load_checkpoint  # noqa: E402
from pipeline.config import network_in_channels  # noqa: E402
from pipeline.model_selection import finished_folds  # noqa: E402
from pipeline.networks import count_gmacs, count_parameters  # noqa: E402
from pipeline.safety import atomic_write_text  # noqa: E402
from pipeline.workflows import create_network  # noqa: E402

COLUMNS = (
    ("run", "{}"),
    ("arch", "{}"),
    ("input", "{}"),
    ("parameters_m", "{:.2f}"),
    ("gmacs_per_slice", "{:.2f}"),
    ("folds", "{}"),
    ("epochs", "{}"),
    ("best_val_dice", "{:.3f}"),
    ("dice_mean", "{:.3f}"),
    ("dice_median", "{:.3f}"),
    ("hd95_mean_mm", "{:.1f}"),
    ("hd95_median_mm", "{:.1f}"),
    ("cpu_s_per_volume", "{:.2f}"),
    ("train_min_per_fold", "{:.0f}"),
)


def run_row(run: Path, logs: Sequence[Path] = ()) -> dict[str, Any]:
    """The comparison figures of one CV run folder.

    Raises:
        ValueError: no finished fold. FileNotFoundError: no pooled report ``RUN/cv/metrics.json``.
    """
    models = finished_folds(run)
    config = load_checkpoint(next(iter(models.values())))["config"]
    network = create_network(config).eval()
    channels = network_in_channels(int(config.get("spatial_dims", 2)), int(config.get("context", 0)))
    report_path = run / "cv" / "metrics.json"
    if not report_path.is_file():
        raise FileNotFoundError(f"{report_path}: not found; run `lggseg cv` for this run to the end")
    metrics = json.loads(report_path.read_text())["summary"]["overall"]["metrics"]
    dones = [json.loads((m.parent.parent / "training_done.json").read_text()) for m in models.values()]
    timings = []
    for model in models.values():
        fold_report = model.parent.parent / "evaluation" / "metrics.json"
        if fold_report.is_file():
            timings.append(json.loads(fold_report.read_text())["run"]["mean_timing_s"]["inference_s"])
    minutes = None
    if logs:
        epochs = parse_log([line for log in logs for line in log.read_text().splitlines()])
        per_fold = [
            sum(float(e["seconds"] or 0) for e in epochs[f].values()) / 60 for f in models if f in epochs
        ]
        minutes = statistics.fmean(per_fold) if per_fold else None
    return {
        "run": run.name,
        "arch": config["arch"],
        "input": f"{config.get('spatial_dims', 2)}D, {channels} ch",
        "parameters_m": count_parameters(network) / 1e6,
        "gmacs_per_slice": count_gmacs(network, (1, channels, 256, 256)),
        "folds": len(models),
        "epochs": int(config["epochs"]),
        "best_val_dice": statistics.fmean(float(d["best_metric"]) for d in dones),
        "dice_mean": metrics["dice"]["mean"],
        "dice_median": metrics["dice"]["median"],
        "hd95_mean_mm": metrics["hd95_mm"]["mean"],
        "hd95_median_mm": metrics["hd95_mm"]["median"],
        "cpu_s_per_volume": statistics.fmean(timings) if timings else None,
        "train_min_per_fold": minutes,
    }


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a Markdown table (``-`` where a figure is missing)."""
    lines = ["| " + " | ".join(name for name, _ in COLUMNS) + " |", "|---" * len(COLUMNS) + "|"]
    for row in rows:
        cells = ["-" if row[n] is None else fmt.format(row[n]) for n, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def hardware() -> str:
    """This machine in words (CPU, cores, torch threads)."""
    import torch

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("runs", type=Path, nargs="+", help="CV run folders (OUTPUT/NAME)")
    parser.add_argument("--log", type=Path, nargs="*", default=[], help="training logs of those runs")
    parser.add_argument("--output", type=Path, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    rows = []
    for run in args.runs:
        logs = [log for log in args.log if log.name.startswith(run.name)]
        try:
            rows.append(run_row(run, logs))
        except (ValueError, FileNotFoundError) as error:
            print(f"compare_runs: {run}: skipped: {error}", file=sys.stderr)
    print(markdown(rows))
    print(f"\nhardware: {hardware()}")
    if args.output:
        atomic_write_text(args.output, json.dumps({"hardware": hardware(), "rows": rows}, indent=1) + "\n")
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
