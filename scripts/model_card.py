"""Write the cross-validation results of the shipped model into the bundle: figures, ``eval_metrics``, tables.

Every number comes from the files of a finished cross-validation (no hand-edited figures):

- ``RUN/cv/metrics.json`` (test folds, no post-processing) and ``RUN/cv_postprocessed/metrics.json`` (test
  folds with the post-processing chosen on the validation folds, ``RUN/postprocessing.json``);
- each ``RUN/fold<k>/evaluation*/metrics.json`` for the per-fold table;
- the training logs (``scripts/training_progress.py``; folds trained side by side may have their own) for
  epochs, best validation Dice and time-to-quality;
- the model file for its SHA-256, size and members;
- optionally (``--reference``) the pooled test report of an earlier run, paired patient by patient;
- optionally (``--external``) the figures of ``scripts/external_dice.py`` on the external development scans;
- optionally (``--qc``) the quality estimate's figures and the failure classes of ``scripts/fit_qc.py``.

It copies the Dice distribution plot and the best / median / worst overlays to ``BUNDLE/docs/images``,
sets ``eval_metrics`` in ``BUNDLE/configs/metadata.json`` and replaces the text between
``<!-- cv-results:start -->`` and ``<!-- cv-results:end -->`` in each ``--markdown`` file. Files are written
under a temporary name, then renamed.

    python scripts/model_card.py --run runs/unext_r2 --log runs/unext_r2.log --model bundle/models/model.pt \
        [--reference runs/unext_r1] [--external runs/unext_r2/external.json] [--bundle bundle] \
        [--markdown bundle/docs/README.md README.md]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import re
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from training_progress import parse_log, summarise  # noqa: E402

from pipeline.model_files import file_sha256, load_checkpoint  # noqa: E402
from pipeline.safety import atomic_write_bytes, atomic_write_text  # noqa: E402

START, END = "<!-- cv-results:start -->", "<!-- cv-results:end -->"
FIGURES = {"dice_plot": "cv_dice_per_patient.png", "volume_plot": "cv_volume_pred_vs_true.png"}
FIGURES |= {f"overlay_{k}": f"cv_overlay_{k}.png" for k in ("best", "median", "worst")}
THRESHOLDS = (0.8, 0.85)


def _metrics(report: Path) -> dict[str, Any]:
    path = report / "metrics.json"
    if not path.is_file():
        raise SystemExit(f"model_card: error: {path}: not found; finish the cross-validation first")
    return json.loads(path.read_text())


def _stat(report: dict[str, Any], name: str, kind: str) -> float | None:
    """A pooled figure (``None`` when no patient defines it, e.g. HD95 with empty predictions)."""
    value = report["summary"]["overall"]["metrics"][name][kind]
    return None if value is None else float(value)


@functools.cache  # compare_runs reads the reference once, not once per run
def patient_dice(run: Path) -> dict[str, float]:
    """``{patient: Dice}`` of the pooled test report ``RUN/cv``."""
    report = json.loads((run / "cv" / "metrics.json").read_text())
    return {p["patient_id"]: float(p["dice"]) for p in report["patients"]}


def paired_difference(ours: dict[str, float], theirs: dict[str, float], patients: Sequence[str]) -> dict:
    """Paired per-patient Dice of two runs on ``patients``: ``mean_diff`` (ours minus theirs), ``better``,
    ``worse`` and the two-sided Wilcoxon signed-rank ``p`` (1.0 when no difference or one patient)."""
    from scipy.stats import wilcoxon

    diff = [ours[p] - theirs[p] for p in patients]
    return {
        "mean_diff": statistics.fmean(diff),
        "better": sum(d > 0 for d in diff),
        "worse": sum(d < 0 for d in diff),
        "p": float(wilcoxon(diff).pvalue) if any(diff) and len(diff) > 1 else 1.0,
    }


def hardware() -> str:
    """This machine in words (CPU, cores, torch threads)."""
    import torch

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():  # Linux: the model name, not just the architecture
        lines = cpuinfo.read_text().splitlines()
        names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _cell(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def eval_metrics(report: dict[str, Any]) -> dict[str, float | int | None]:
    """``metadata.json``'s ``eval_metrics``: pooled per-patient figures of the test folds."""
    return {
        "cv_patient_mean_dice": _rounded(_stat(report, "dice", "mean"), 4),
        "cv_patient_median_dice": _rounded(_stat(report, "dice", "median"), 4),
        "cv_patient_mean_iou": _rounded(_stat(report, "iou", "mean"), 4),
        "cv_patient_mean_hd95_mm": _rounded(_stat(report, "hd95_mm", "mean"), 2),
        "cv_patient_median_hd95_mm": _rounded(_stat(report, "hd95_mm", "median"), 2),
        "cv_patients": int(report["n_patients"]),
        "cv_folds": len(report["run"].get("folds", [])),
    }


def _row(label: str, report: dict[str, Any]) -> str:
    cells = [
        _cell(_stat(report, "dice", "mean"), 3),
        _cell(_stat(report, "dice", "median"), 3),
        _cell(_stat(report, "dice", "std"), 3),
        _cell(_stat(report, "iou", "mean"), 3),
        _cell(_stat(report, "sensitivity", "mean"), 3),
        _cell(_stat(report, "precision", "mean"), 3),
        _cell(_stat(report, "hd95_mm", "mean"), 1),
        _cell(_stat(report, "hd95_mm", "median"), 1),
    ]
    return f"| {label} | {report['n_patients']} | " + " | ".join(cells) + " |"


HEADER = (
    "| | patients | Dice mean | Dice median | Dice std | IoU mean | sensitivity | precision | "
    "HD95 mean (mm) | HD95 median (mm) |\n|---|---|---|---|---|---|---|---|---|---|"
)


def _trained_on_all(run: Path) -> bool:
    """Whether the run's folds were trained with ``train_on_all`` (their ``config.json``)."""
    configs = [json.loads(p.read_text()) for p in sorted(run.glob("fold*/config.json"))]
    return any(bool(c.get("train_on_all")) for c in configs)


def _fold_configs(run: Path) -> dict[int, dict[str, Any]]:
    """Each fold's ``config.json`` (the options it trained with), by fold number."""
    configs = {}
    for path in sorted(run.glob("fold*/config.json")):
        config = json.loads(path.read_text())
        configs[int(config.get("fold", path.parent.name.removeprefix("fold")))] = config
    return configs


def _test_folds(report: dict[str, Any]) -> dict[str, int]:
    """``{patient: test fold}`` of a pooled cross-validation report."""
    return {p["patient_id"]: int(p["fold"]) for p in report["patients"] if p.get("fold") is not None}


def paired_lines(run: Path, reference: Path) -> list[str]:
    """Markdown: the run against ``reference`` on their common test patients, pooled and per test fold.

    Both runs' pooled test reports (``RUN/cv``, no post-processing) are compared patient by patient:
    mean Dice difference, patients better / worse, two-sided Wilcoxon signed-rank p.
    """
    ours, theirs = patient_dice(run), patient_dice(reference)
    folds = _test_folds(_metrics(run / "cv"))
    common = sorted(ours.keys() & theirs.keys())
    groups = {"all": common} | {
        f"fold {k}": [p for p in common if folds.get(p) == k] for k in sorted(set(folds.values()))
    }
    lines = [
        f"Paired with the earlier recipe `{reference.name}` on the same test patients (both without "
        "post-processing or TTA; Wilcoxon signed-rank, two-sided):",
        "",
        f"| test patients | n | Dice mean `{run.name}` | Dice mean `{reference.name}` | mean difference | "
        "better / worse | Wilcoxon p |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, patients in groups.items():
        if not patients:
            continue
        pair = paired_difference(ours, theirs, patients)
        lines.append(
            f"| {name} | {len(patients)} | {statistics.fmean(ours[p] for p in patients):.3f} | "
            f"{statistics.fmean(theirs[p] for p in patients):.3f} | {pair['mean_diff']:+.3f} | "
            f"{pair['better']} / {pair['worse']} | {pair['p']:.3f} |"
        )
    return lines


def external_lines(figures: dict[str, Any], test_folds: dict[str, int]) -> list[str]:
    """Markdown: the external development scans (``scripts/external_dice.py``'s JSON), each patient's
    place in the cross-validation said (those in a test fold were in the training folds of the others)."""
    lines = [
        "External development scans (`../shared/data/external`, through the own-scans path of `lggseg "
        f"infer`, each on its own grid; model `{Path(figures['checkpoint']).name}`, TTA "
        f"{figures.get('tta') or 'as stored in the model'}): the raw TCIA series against its Kaggle mask "
        "carried onto the raw grid, the BraTS-preprocessed volumes (skull-stripped, 1 mm) against the "
        "BraTS algorithms' fusion (whole tumour; a reference, not an expert mask).",
        "",
        "| case | Dice | predicted mL | truth mL | qc_score (review) | in the development folds |",
        "|---|---|---|---|---|---|",
    ]
    for row in figures["cases"]:
        fold = test_folds.get(Path(row["case"]).name)  # the case folders are named after the patient
        where = (
            f"yes: test fold {fold}, training data of the other folds' models" if fold is not None else "no"
        )
        dice = "-" if row.get("dice") is None else f"{row['dice']:.3f}"
        truth = "no truth" if row.get("truth_ml") is None else f"{row['truth_ml']:.1f}"
        quality = f"{row['qc_score']:.2f} ({row['review']})" if "qc_score" in row else "-"
        lines.append(f"| `{row['case']}` | {dice} | {row['pred_ml']:.1f} | {truth} | {quality} | {where} |")
    scored = [row["dice"] for row in figures["cases"] if row.get("dice") is not None]
    if scored:
        lines += ["", f"Mean Dice of the {len(scored)} scored cases: {sum(scored) / len(scored):.3f}."]
    return lines


def results_block(
    run: Path,
    logs: Sequence[Path],
    model: Path,
    image_prefix: str,
    reference: Path | None = None,
    external: dict[str, Any] | None = None,
    machine: str | None = None,
    qc: dict[str, Any] | None = None,
) -> str:
    """The generated Markdown: pooled and per-fold tables, the post-processing choice, time-to-quality,
    the model file's identity and the figures.

    Args:
        run: the cross-validation run folder.
        logs: its training logs (time-to-quality).
        model: the shipped model file.
        image_prefix: path from the Markdown file to the copied figures, ending with ``/``.
        reference: an earlier run to pair with, patient by patient (optional).
        external: ``scripts/external_dice.py``'s figures (optional).
        machine: the hardware the run trained on, in words (default: this machine).
        qc: ``scripts/fit_qc.py``'s figures (optional).

    Returns:
        the section, markers included.
    """
    raw, chosen_report = _metrics(run / "cv"), _metrics(run / "cv_postprocessed")
    choice_path = run / "postprocessing.json"
    if not choice_path.is_file():
        raise SystemExit(f"model_card: error: {choice_path}: not found; run lggseg choose-postprocessing")
    choice = json.loads(choice_path.read_text())
    lines = [START, "", f"Cross-validation `{run.name}`, patient-level folds, every patient tested once:", ""]
    lines += [
        HEADER,
        _row("no post-processing", raw),
        _row(f"chosen: `{json.dumps(choice['chosen'])}`", chosen_report),
    ]
    lines += ["", "Per test fold (chosen post-processing):", "", HEADER]
    for fold_dir in sorted(run.glob("fold*")):
        report = fold_dir / "evaluation_postprocessed"
        if (report / "metrics.json").is_file():
            lines.append(_row(fold_dir.name, _metrics(report)))
    if reference is not None:
        lines += ["", *paired_lines(run, reference)]
    configs = _fold_configs(run)
    seeds = sorted({c.get("seed") for c in configs.values()}, key=str)
    lines += [
        "",
        f"Folds trained: {', '.join(str(k) for k in sorted(configs))}; seed "
        f"{', '.join(str(s) for s in seeds)}; hardware: {machine or hardware()}.",
    ]
    if external is not None:
        lines += ["", *external_lines(external, _test_folds(raw))]
    nested = "nested" in choice.get("chosen_on", "")
    where = (
        "on the cross-validation's own predictions (a `train_on_all` run has no validation patients); "
        "each test fold was evaluated with the candidate best on the **other** folds"
        if nested
        else "on the **validation** folds (the test folds took no part)"
    )
    lines += ["", f"Post-processing candidates, {where}:", ""]
    lines += ["| candidate | patients | Dice mean | Dice median | under 0.5 |", "|---|---|---|---|---|"]
    for c in choice["candidates"]:
        mark = " (chosen)" if c["options"] == choice["chosen"] else ""
        lines.append(
            f"| `{json.dumps(c['options'])}`{mark} | {c['patients']} | {c['mean_dice']:.3f} | "
            f"{c['median_dice']:.3f} | {c.get('under_0.5', '-')} |"
        )
    if qc is not None:
        lines += ["", *quality_lines(qc)]
    if logs:
        lines += [
            "",
            f"Training (from {', '.join(f'`{log.name}`' for log in logs)}; wall minutes of the logged "
            "epochs, validation included):",
            "",
        ]
        watched = _trained_on_all(run)
        if watched:
            lines += [
                "The models were trained on every fold but their test fold and the last epoch was kept; the "
                '"val" Dice below is the test fold watched during training (it chose nothing).',
                "",
            ]
        val = "watched test-fold Dice" if watched else "val Dice"
        names = [f"minutes to {val} {t:g}" for t in THRESHOLDS]
        lines += [f"| fold | epochs | best {val} (epoch) | minutes | " + " | ".join(names) + " |"]
        lines += ["|---" * (4 + len(THRESHOLDS)) + "|"]
        log_lines = [line for log in logs for line in log.read_text().splitlines()]
        for fold, epochs in sorted(parse_log(log_lines).items()):
            s = summarise(epochs, THRESHOLDS)
            total = sum(float(v["seconds"] or 0.0) for v in epochs.values()) / 60
            reach = [
                f"{s[f'minutes_to_{t:g}']:.0f} (epoch {s[f'epoch_to_{t:g}']})"
                if s[f"minutes_to_{t:g}"]
                else "not reached"
                for t in THRESHOLDS
            ]
            best = f"{s['best_dice']:.3f} ({s['best_epoch']})" if s["best_dice"] is not None else "-"
            lines.append(f"| {fold} | {s['epochs']} | {best} | {total:.0f} | " + " | ".join(reach) + " |")
    saved = load_checkpoint(model)
    members = saved["config"].get("members", 1)
    lines += [
        "",
        f"Model file `{model.name}`: SHA-256 `{file_sha256(model)}`, {model.stat().st_size / 1e6:.1f} MB, "
        f"{members} network(s) of `{saved['config'].get('arch')}`"
        + (" (the folds' models, probabilities averaged)" if members > 1 else "")
        + f"; post-processing stored with it: threshold {saved['config'].get('threshold', 0.5)}, "
        f"keep_largest {saved['config'].get('keep_largest')}, edge_components "
        f"{saved['config'].get('edge_components', 0)}, min_mass_fraction "
        f"{saved['config'].get('min_mass_fraction', 0.0)}, tta {saved['config'].get('tta')}; quality "
        f"calibration {'stored' if saved['config'].get('quality') else 'none'}.",
        "",
        f"![per-patient Dice of the cross-validation]({image_prefix}{FIGURES['dice_plot']})",
        "",
        "Best, median and worst patients of the cross-validation (FLAIR; truth green, prediction red):",
        "",
    ]
    lines += [f"![{k} patient]({image_prefix}{FIGURES[f'overlay_{k}']})" for k in ("best", "median", "worst")]
    lines += ["", END]
    return "\n".join(lines)


def tta_rows(figures: dict[str, float] | None) -> list[str]:
    """The rows of the quality table for ``--tta flip`` (its ``tta_disagree`` flag), when measured."""
    if not figures:
        return []
    return [
        "| with `--tta flip`: AUROC of the flipped masks' agreement for Dice < 0.7 | "
        f"{figures['auroc_tta_agreement_under_0.7']:.3f} | |",
        "| with `--tta flip`: `review = yes` (and `tta_disagree`) catches, of the patients under 0.5 | "
        f"{figures['review_catches_under_0.5']:.0%} | >= 80% |",
        "| with `--tta flip`: `review = yes` flags, of the other patients | "
        f"{figures['review_flags_others']:.0%} | <= 30% |",
    ]


def quality_lines(qc: dict[str, Any]) -> list[str]:
    """The quality estimate's figures and the failure classes, from ``scripts/fit_qc.py``'s JSON."""
    f, classes = qc["figures"], qc["figures"].get("failure_classes", {})
    calibration = qc["calibration"]
    lines = [
        f"Quality estimate (`qc_score`, `review`, `qc_flags`; fitted with `scripts/fit_qc.py` on the "
        f"{f['patients']} cross-validation predictions, each patient by a fold model that never saw it; "
        "every figure nested: each test fold scored with the calibration and review threshold fitted on the "
        "other four):",
        "",
        "| | value | goal |",
        "|---|---|---|",
        f"| AUROC of `qc_score` for Dice < 0.7 ({f['under_0.7']} patients) | {f['auroc_under_0.7']:.3f} "
        "| >= 0.85 |",
        f"| Spearman correlation of `qc_score` with Dice | {f['spearman']:.3f} | |",
        f"| mean absolute error of `qc_score` as a Dice estimate | {f['mean_abs_error']:.3f} | |",
        f"| `review = yes` catches, of the {f['under_0.5']} patients under Dice 0.5 | "
        f"{f['review_catches_under_0.5']:.0%} | >= 80% |",
        f"| `review = yes` flags, of the other patients | {f['review_flags_others']:.0%} | <= 30% |",
        *tta_rows(f.get("with_flip_tta")),
        "",
        f"Shipped calibration (all {f['patients']} patients): expected Dice = 1 / (1 + exp(-("
        f"{calibration['slope']:.2f} x mean probability inside the mask "
        f"{calibration['intercept']:+.2f}))); review below "
        f"{calibration['review_below']:.2f}. The folds' single models made these predictions; the shipped "
        "ensemble's probability is their mean, so its mean inside a mask is its members' mean confidence. "
        "The calibration knows the data set's own volumes only: on other pipelines' scans the networks are "
        "less sure of good masks and the score reads low (the external cases above), so `review` errs "
        "towards a look there.",
        "",
        "What each flag caught on the cross-validation (flags of the input, such as `stand_in` or `plane`, "
        "never arise on the data set's own volumes):",
        "",
        "| flag | patients flagged | of them Dice < 0.7 | patients < 0.7 it missed |",
        "|---|---|---|---|",
    ]
    for code, row in qc["flags"].items():
        if row["flagged"] or code in ("review", "low_confidence", "edge", "empty"):
            lines.append(
                f"| `{code}` | {row['flagged']} | {row['flagged_under_0.7']} | {row['missed_under_0.7']} |"
            )
    if classes:
        lines += [
            "",
            "Failure classes over the cross-validation (post-processing as shipped; without it in brackets): "
            f"false-positive components over 500 voxels with no overlap with the truth "
            f"{classes['fp_components_over_500_voxels']} ({classes['without_post_processing']}), of them on "
            f"the outermost 3 slices {classes['of_them_on_the_outermost_3_slices']} "
            f"({classes['without_post_processing_on_the_outermost_3_slices']}); patients under Dice 0.5: "
            f"{classes['patients_under_0.5']}; masks that missed the tumour entirely: "
            f"{classes['patients_zeroed']}; under-segmented (sensitivity < 0.65, precision >= 0.75): "
            f"{classes['under_segmented']}; over-segmented (precision < 0.6, sensitivity >= 0.75): "
            f"{classes['over_segmented']}.",
        ]
    return lines


def replace_block(text: str, block: str, path: Path, start: str = START, end: str = END) -> str:
    """``text`` with the section between the markers ``start`` and ``end`` replaced by ``block``.

    Raises:
        SystemExit: ``path`` has no such section (one line naming the file).
    """
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{path}: no '{start}' ... '{end}' section to replace")
    return pattern.sub(lambda _: block, text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", type=Path, required=True, help="CV run folder (OUTPUT/NAME)")
    parser.add_argument("--model", type=Path, required=True, help="the shipped model file")
    parser.add_argument(
        "--log", type=Path, nargs="*", default=[], help="the CV training logs (time-to-quality)"
    )
    parser.add_argument("--bundle", type=Path, default=Path("bundle"), help="bundle folder (default: bundle)")
    parser.add_argument("--reference", type=Path, help="an earlier run to pair with, patient by patient")
    parser.add_argument("--external", type=Path, help="scripts/external_dice.py --output JSON of the model")
    parser.add_argument("--qc", type=Path, help="scripts/fit_qc.py --output JSON of the run")
    parser.add_argument(
        "--hardware", help="the machine the run trained on, in words (default: this machine's CPU)"
    )
    parser.add_argument(
        "--markdown",
        type=Path,
        nargs="*",
        help="files with a cv-results section (default: BUNDLE/docs/README.md)",
    )
    args = parser.parse_args(argv)
    report = _metrics(args.run / "cv_postprocessed")  # before anything is written
    if args.reference is not None:
        _metrics(args.reference / "cv")
    external = None
    if args.external is not None:
        if not args.external.is_file():
            raise SystemExit(f"model_card: error: {args.external}: not found; run scripts/external_dice.py")
        external = json.loads(args.external.read_text())
    qc = json.loads(args.qc.read_text()) if args.qc is not None else None
    images = args.bundle / "docs" / "images"
    images.mkdir(parents=True, exist_ok=True)
    for key, name in FIGURES.items():
        atomic_write_bytes(images / name, (args.run / "cv_postprocessed" / report["files"][key]).read_bytes())
    meta_path = args.bundle / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["eval_metrics"] = eval_metrics(report)
    atomic_write_text(meta_path, json.dumps(meta, indent=4) + "\n")
    for path in args.markdown or [args.bundle / "docs" / "README.md"]:
        prefix = Path(os.path.relpath(images.resolve(), path.resolve().parent)).as_posix()
        block = results_block(
            args.run, args.log, args.model, f"{prefix}/", args.reference, external, args.hardware, qc
        )
        atomic_write_text(path, replace_block(path.read_text(), block, path))
        print(f"{path}: cross-validation section written")
    print(f"{meta_path}: eval_metrics {json.dumps(meta['eval_metrics'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
