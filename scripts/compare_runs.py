"""The network comparison table of a cross-validation study (issue 8, item 1), from finished runs only.

One row per CV run folder (``OUTPUT/NAME`` of ``lggseg cv``): network and input, parameters and GMACs per
slice at the run's training size (counted on the run's own network; 3D: one patch divided by its depth),
folds finished, epochs and slices (3D: patches) drawn per training volume per epoch, mean best validation
Dice, the pooled per-patient test figures of ``RUN/cv`` (Dice mean and median, HD95 mean and median), mean
CPU inference seconds per volume (the folds' evaluation reports), wall minutes of training per fold (from
the run's logs, ``NAME.log`` or ``NAME_fold*.log``, when given) and this machine's CPU.
With ``--reference RUN``: the mean per-patient Dice difference from that run on their common test patients and
the Wilcoxon signed-rank p-value (paired). Nothing is typed by hand.

    python scripts/compare_runs.py runs/unext_r1 runs/unet_short [--log LOG ...] [--output table.json]
        [--markdown README.md --caption "protocol"]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_card import hardware, paired_difference, patient_dice, replace_block  # noqa: E402
from training_progress import parse_log  # noqa: E402

from pipeline.config import network_in_channels  # noqa: E402
from pipeline.model_files import (
    create_network,  # noqa: E402
    load_checkpoint,  # noqa: E402
)
from pipeline.networks import count_gmacs, count_parameters  # noqa: E402
from pipeline.safety import atomic_write_text  # noqa: E402
from pipeline.workflows.model_selection import finished_folds  # noqa: E402

NATIVE_SIZE = (256, 256)  # the LGG slices
START, END = "<!-- network-ranking:start -->", "<!-- network-ranking:end -->"
COLUMNS = (
    ("run", "{}"),
    ("arch", "{}"),
    ("input", "{}"),
    ("parameters_m", "{:.2f}"),
    ("gmacs_per_slice", "{:.2f}"),
    ("folds", "{}"),
    ("epochs", "{}"),
    ("samples_per_volume_epoch", "{}"),
    ("best_val_dice", "{:.3f}"),
    ("dice_mean", "{:.3f}"),
    ("dice_median", "{:.3f}"),
    ("hd95_mean_mm", "{:.1f}"),
    ("hd95_median_mm", "{:.1f}"),
    ("cpu_s_per_volume", "{:.2f}"),
    ("train_min_per_fold", "{:.1f}"),
    ("dice_diff_vs_ref", "{:+.3f}"),
    ("wilcoxon_p_vs_ref", "{:.2f}"),
)


def run_row(run: Path, logs: Sequence[Path] = ()) -> dict[str, Any]:
    """The comparison figures of one CV run folder.

    Raises:
        ValueError: no finished fold. FileNotFoundError: no pooled report ``RUN/cv/metrics.json``.
    """
    models = finished_folds(run)
    config = load_checkpoint(next(iter(models.values())))["config"]
    network = create_network(config).eval()
    dims = int(config.get("spatial_dims", 2))
    channels = network_in_channels(dims, int(config.get("context", 0)))
    if dims == 3:
        patch = tuple(int(p) for p in config["patch_size"])
        size = "patch " + "x".join(map(str, patch))
        gmacs = count_gmacs(network, (1, channels, *patch)) / patch[-1]
    else:
        plane = tuple(config.get("input_size") or NATIVE_SIZE)
        size = "x".join(map(str, plane)) + ("" if config.get("input_size") else " (native)")
        gmacs = count_gmacs(network, (1, channels, *plane))
    report_path = run / "cv" / "metrics.json"
    if not report_path.is_file():
        raise FileNotFoundError(f"{report_path}: not found; run `lggseg cv` for this run to the end")
    metrics = json.loads(report_path.read_text())["summary"]["overall"]["metrics"]
    dones = [json.loads((m.parent.parent / "training_done.json").read_text()) for m in models.values()]
    # a run taken apart from a shipped ensemble (scripts/ensemble_members.py) has no training record
    best = [float(d["best_metric"]) for d in dones if "best_metric" in d]
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
        "input": f"{dims}D, {channels} ch, {size}",
        "parameters_m": count_parameters(network) / 1e6,
        "gmacs_per_slice": gmacs,
        "folds": len(models),
        "epochs": int(config["epochs"]),
        "samples_per_volume_epoch": int(config.get("volume_repeats", 1)) * int(config.get("num_samples", 1)),
        "best_val_dice": statistics.fmean(best) if best else None,
        "dice_mean": metrics["dice"]["mean"],
        "dice_median": metrics["dice"]["median"],
        "hd95_mean_mm": metrics["hd95_mm"]["mean"],
        "hd95_median_mm": metrics["hd95_mm"]["median"],
        "cpu_s_per_volume": statistics.fmean(timings) if timings else None,
        "train_min_per_fold": minutes,
    }


def paired_with(row: dict[str, Any], run: Path, reference: Path) -> None:
    """Add the paired comparison of ``run`` with ``reference`` on their common test patients to ``row``.

    ``dice_diff_vs_ref``: mean per-patient Dice difference (run minus reference); ``wilcoxon_p_vs_ref``:
    two-sided Wilcoxon signed-rank p-value (not corrected for the number of runs compared); both ``None``
    when the runs share no patient or are the reference itself.
    """
    ours, theirs = patient_dice(run), patient_dice(reference)
    common = sorted(ours.keys() & theirs.keys())
    row["dice_diff_vs_ref"] = row["wilcoxon_p_vs_ref"] = None
    if not common or run.resolve() == reference.resolve():
        return
    pair = paired_difference(ours, theirs, common)
    row["dice_diff_vs_ref"], row["wilcoxon_p_vs_ref"] = pair["mean_diff"], pair["p"]


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a Markdown table (``-`` where a figure is missing)."""
    lines = ["| " + " | ".join(name for name, _ in COLUMNS) + " |", "|---" * len(COLUMNS) + "|"]
    for row in rows:
        cells = ["-" if row.get(n) is None else fmt.format(row[n]) for n, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("runs", type=Path, nargs="+", help="CV run folders (OUTPUT/NAME)")
    logs_help = "training logs of those runs (NAME.log, NAME_fold*.log)"
    parser.add_argument("--log", type=Path, nargs="*", default=[], help=logs_help)
    parser.add_argument("--output", type=Path, help="also write the rows to this JSON file")
    parser.add_argument(
        "--reference", type=Path, help="run to compare every run with, patient by patient (paired)"
    )
    parser.add_argument(
        "--markdown", type=Path, nargs="*", default=[], help=f"files whose {START} section gets the table"
    )
    parser.add_argument("--caption", default="", help="text above the table (the protocol, in words)")
    args = parser.parse_args(argv)
    for path in [*args.markdown, *([args.reference / "cv" / "metrics.json"] if args.reference else [])]:
        if not path.is_file():  # checked before any work and before any file is written
            parser.error(f"{path}: not found")
    texts = {path: path.read_text() for path in args.markdown}
    rows = []
    for run in args.runs:
        logs = [log for log in args.log if log.stem == run.name or log.stem.startswith(f"{run.name}_fold")]
        try:
            rows.append(run_row(run, logs))
            if args.reference:
                paired_with(rows[-1], run, args.reference)
        except (ValueError, FileNotFoundError) as error:
            print(f"compare_runs: {run}: skipped: {error}", file=sys.stderr)
    table, machine = markdown(rows), hardware()
    print(table)
    print(f"\nhardware: {machine}")
    if not rows:
        return 1
    if args.output:
        atomic_write_text(args.output, json.dumps({"hardware": machine, "rows": rows}, indent=1) + "\n")
    block = "\n\n".join(filter(None, [START, args.caption, table, f"Hardware: {machine}.", END]))
    new_texts = {path: replace_block(text, block, path, START, END) for path, text in texts.items()}
    for path, text in new_texts.items():
        atomic_write_text(path, text)
        print(f"{path}: network ranking written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
