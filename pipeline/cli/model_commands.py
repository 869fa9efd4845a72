"""``lggseg choose-postprocessing`` and ``lggseg ensemble``: turn a finished cross-validation into a model.

``choose-postprocessing`` picks largest-component filtering and flip TTA on the validation folds only and
evaluates the test folds once with the choice; ``ensemble`` puts the folds' models (and that choice) into
one model file that the CLI, the bundle and the MONAI Label app load like any other.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.cli.parsing import add_command
from pipeline.cli.run_options import print_pooled_dice


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``choose-postprocessing`` and ``ensemble``."""
    p = add_command(
        subparsers,
        "choose-postprocessing",
        run_choose_postprocessing,
        interrupted="the folds' models in {run} are untouched; run the same command again (it starts over)",
        help="choose post-processing and TTA of a CV run on its validation folds, then report the test folds",
        description="Each finished fold's model is evaluated on its validation patients with every "
        "candidate (artefact components filtered by position and probability mass, flip TTA on/off); "
        "the best pooled mean Dice wins (ties: "
        "the cheaper). The test folds are then evaluated once with it: RUN/cv_postprocessed.",
    )
    p.add_argument("--run", type=Path, required=True, help="CV run folder (OUTPUT/NAME, with fold<k> inside)")
    p.add_argument("--num-workers", type=int, default=0, help="data loader worker processes (default: 0)")

    p = add_command(
        subparsers,
        "ensemble",
        run_ensemble,
        interrupted="{output} is unchanged (the model file is renamed into place when complete); run again",
        help="combine the folds' models of a CV run into one model file (probabilities averaged)",
        description="One model file holding every finished fold's best model, with the post-processing "
        "chosen by `choose-postprocessing` (when made); load it with --checkpoint like any model.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=Path, help="CV run folder: every finished fold's best_model.pt")
    source.add_argument("--models", type=Path, nargs="+", help="model files to combine")
    p.add_argument("--output", type=Path, required=True, help="model file to write (not one of the models)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing --output (an ensemble lggseg wrote)"
    )
    p.add_argument("--half", action="store_true", help="store the weights as float16 (half the file size)")
    p.add_argument(
        "--quality",
        type=Path,
        help="the quality-score calibration to store with the model (scripts/fit_qc.py --output JSON, fitted "
        "on this run's cross-validation with the same post-processing)",
    )


def run_choose_postprocessing(args: argparse.Namespace) -> int:
    """Run ``lggseg choose-postprocessing``: print every candidate's validation Dice and the test figures."""
    from pipeline.workflows.cross_validation import evaluate_folds
    from pipeline.workflows.model_selection import choose_postprocessing, finished_folds

    loader = {"num_workers": args.num_workers, "progress": False}
    choice = choose_postprocessing(args.run, overrides=loader)
    for candidate in choice["candidates"]:
        print(
            f"{'cross-validation' if 'nested' in choice.get('chosen_on', '') else 'validation'} "
            f"{json.dumps(candidate['options'])}: Dice mean {candidate['mean_dice']:.4f} "
            f"median {candidate['median_dice']:.4f} ({candidate['patients']} patients)"
        )
    folds = finished_folds(args.run)
    per_fold = choice.get("per_fold_choice") or {fold: choice["chosen"] for fold in folds}
    result = evaluate_folds(
        folds,
        args.run / "cv_postprocessed",
        overrides=loader,
        fold_report="evaluation_postprocessed",
        extra={
            **choice["chosen"],  # the shipped choice (a nested CV evaluated each fold with per_fold_choice)
            "per_fold_choice": per_fold,
            "chosen_on": choice.get("chosen_on", "validation folds"),
            "choice": str(args.run / "postprocessing.json"),
        },
        fold_overrides={int(fold): options for fold, options in per_fold.items()},
    )
    chosen = f"chosen {json.dumps(choice['chosen'])}; test folds, "
    return print_pooled_dice(result, args.run / "cv_postprocessed", before=chosen)


def run_ensemble(args: argparse.Namespace) -> int:
    """Run ``lggseg ensemble``: one model file from the folds' models (and the chosen post-processing)."""
    from pipeline.model_files import CONFIG_KEY, check_ensemble_members, load_checkpoint
    from pipeline.safety import check_output_file
    from pipeline.workflows.model_selection import CHOICE_NAME, combine_models, finished_folds, read_choice

    models = list(finished_folds(args.run).values()) if args.run else args.models
    check_output_file(args.output, models, args.overwrite, replaceable=_is_ensemble_file, kind="model file")
    check_ensemble_members([(m, load_checkpoint(m)[CONFIG_KEY]) for m in models])
    chosen = read_choice(args.run) if args.run and (args.run / CHOICE_NAME).is_file() else {}
    if args.quality is not None:
        chosen = {**chosen, "quality": read_quality_calibration(args.quality)}
    saved = combine_models(
        models, args.output, overwrite=args.overwrite, config_updates=chosen, half=args.half
    )
    folds = ", ".join(str(m["fold"]) for m in saved["members"])
    shown = {k: v for k, v in chosen.items() if k != "quality"}
    quality = "; quality calibration stored" if "quality" in chosen else ""
    print(
        f"{args.output}: ensemble of {len(models)} models (folds {folds}); post-processing {shown}{quality}"
    )
    return 0


def _is_ensemble_file(path: Path) -> bool:
    """Whether ``path`` is a model file ``lggseg ensemble`` wrote (the only kind it may replace)."""
    from pipeline.model_files import CONFIG_KEY, load_checkpoint

    try:
        return int(load_checkpoint(path)[CONFIG_KEY].get("members", 1)) > 1
    except (OSError, ValueError, TypeError, RuntimeError):
        return False


def read_quality_calibration(path: Path) -> dict:
    """The ``calibration`` of a ``scripts/fit_qc.py`` output, checked (slope, intercept, review threshold).

    Raises:
        ValueError: a file that is not such an output (one line naming it).
    """
    try:
        calibration = json.loads(Path(path).read_text())["calibration"]
        for key in ("slope", "intercept", "review_below"):
            float(calibration[key])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a quality calibration of scripts/fit_qc.py ({error})") from None
    return dict(calibration)
