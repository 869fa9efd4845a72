"""From a cross-validation to a model: the post-processing chosen on validation patients only,
and the folds' models combined into one model file.

As nnU-Net does, every candidate (artefact-component filtering, flip test-time augmentation) is tried on
each fold's *validation* patients with that fold's model; the candidate with the best pooled mean Dice
is kept (ties: the earlier, cheaper one). The test folds never take part in the choice; they are then
evaluated once with it (:func:`pipeline.workflows.cross_validation.evaluate_folds`).
"""

from __future__ import annotations

import json
import logging
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.ingestion.datalist import load_datalist, split_folds
from pipeline.model_files import (
    CONFIG_KEY,
    MODEL_KEY,
    check_ensemble_members,
    check_model_config,
    file_sha256,
    load_checkpoint,
    save_model_file,
)
from pipeline.safety import atomic_write_json
from pipeline.training.checkpoints import BEST_NAME
from pipeline.workflows.builders import datalist_path
from pipeline.workflows.prediction import evaluate
from pipeline.workflows.training import DONE_NAME

logger = logging.getLogger(__name__)

CHOICE_NAME = "postprocessing.json"
VALIDATION_CACHE_NAME = "validation_postprocessing.json"
DICE_KEYS = ("mean_dice", "median_dice")
# cheapest first: a tie keeps the earlier candidate. Every candidate can only remove artefacts, never a
# tumour for one: keeping the largest component alone (Buda et al.) is no candidate since model 0.3.0 kept a
# vertex artefact larger than the tumour of an unseen patient and deleted the tumour (Dice 0.00); components
# are filtered by probability mass relative to the largest and by lying only on the outermost axial slices
POSTPROCESSING_CANDIDATES: tuple[dict[str, Any], ...] = (
    {"keep_largest": 0, "tta": "none"},
    {"keep_largest": 0, "tta": "none", "edge_components": 2},
    {"keep_largest": 0, "tta": "none", "min_mass_fraction": 0.3},
    {"keep_largest": 0, "tta": "none", "edge_components": 2, "min_mass_fraction": 0.3},
    {"keep_largest": 0, "tta": "none", "edge_components": 3, "min_mass_fraction": 0.3},
    {"keep_largest": 0, "tta": "flip", "edge_components": 2, "min_mass_fraction": 0.3},
)
ZEROED_BELOW = 0.05  # a patient's Dice under this: the mask missed the tumour entirely


def finished_folds(run_root: str | Path) -> dict[int, Path]:
    """``{fold: best model}`` of the folds of a CV run (``OUTPUT/NAME``) whose training finished.

    Raises:
        ValueError: when no fold of ``run_root`` has finished.
    """
    root = Path(run_root)
    found = {}
    for run_dir in sorted(root.glob("fold*")):
        best = run_dir / "checkpoints" / BEST_NAME
        if (run_dir / DONE_NAME).is_file() and best.is_file():
            found[int(load_checkpoint(best)[CONFIG_KEY]["fold"])] = best
    if not found:
        raise ValueError(f"{root}: no finished fold (fold<k>/{DONE_NAME} with checkpoints/{BEST_NAME})")
    return dict(sorted(found.items()))


def validation_fold(config: Mapping[str, Any]) -> int:
    """The validation fold a training run used (its ``val_fold``, or the datalist's default for its fold)."""
    if config.get("val_fold") is not None:
        return int(config["val_fold"])
    entries = load_datalist(datalist_path(config["data"]))
    return int(split_folds(entries, int(config["fold"]))["val_fold"])


def choose_postprocessing(
    run_root: str | Path,
    candidates: Sequence[Mapping[str, Any]] = POSTPROCESSING_CANDIDATES,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Try every candidate on patients each fold's model never chose anything on; keep the best pooled mean.

    A run with validation folds is judged on each fold's validation patients (the test folds take no part).
    A ``train_on_all`` run (nnU-Net style) has no such patients: every fold but the test fold trained. Its
    candidates are judged on the cross-validation's own predictions, each fold's test patients by that
    fold's model, as nnU-Net does; the test figure stays honest by nesting: fold ``k`` is then evaluated
    with the candidate that is best on the *other* folds (``per_fold_choice``), so its own labels never
    take part in its choice. The shipped choice is the best on all folds.

    Args:
        run_root: the CV run folder (``OUTPUT/NAME`` with ``fold<k>`` inside).
        candidates: post-processing / TTA options to compare (keys of ``POSTPROCESSING_KEYS``).
        overrides: options for every evaluation (``num_workers``, ``progress``).

    Each fold's figures are kept beside its model (:func:`validation_dice`), so an interrupted choice
    resumes where it stopped.

    Returns:
        ``{"chosen": options, "candidates": [{"options", "mean_dice", "median_dice", "patients",
        "per_fold": {fold: mean Dice}}], "folds": {fold: fold judged on}, "chosen_on": what,
        "per_fold_choice": {fold: options} (the options each test fold is evaluated with)}``; also written
        to ``run_root/postprocessing.json``.
    """
    models = finished_folds(run_root)
    configs = {fold: load_checkpoint(path)[CONFIG_KEY] for fold, path in models.items()}
    nested = any(bool(config.get("train_on_all")) for config in configs.values())
    judged_on = {fold: fold if nested else validation_fold(configs[fold]) for fold in models}
    digests = {fold: file_sha256(path) for fold, path in models.items()}  # once per model, not per candidate
    results, per_patient = [], []
    for options in candidates:
        per_fold: dict[int, float] = {}
        by_fold: dict[int, list[float]] = {}
        for fold, path in models.items():
            by_fold[fold] = validation_dice(path, judged_on[fold], options, overrides, digests[fold])
            per_fold[fold] = statistics.fmean(by_fold[fold])
        dice = [value for values in by_fold.values() for value in values]
        per_patient.append(by_fold)
        results.append(
            {
                "options": dict(options),
                "mean_dice": statistics.fmean(dice),
                "median_dice": statistics.median(dice),
                "patients": len(dice),
                "under_0.5": sum(value < 0.5 for value in dice),
                "zeroed": sum(value < ZEROED_BELOW for value in dice),
                "per_fold": per_fold,
            }
        )
        where = "cross-validation" if nested else "validation"
        logger.info("%s %s: Dice mean %.4f, median %.4f", where, options, *map(results[-1].get, DICE_KEYS))

    def best_on(folds: Sequence[int]) -> int:
        means = [statistics.fmean(v for f in folds for v in per_patient[i][f]) for i in range(len(results))]
        return max(range(len(results)), key=lambda i: (means[i], -i))  # ties: the earlier, cheaper one

    best = best_on(list(models))
    if nested and len(models) > 1:
        per_fold_choice = {f: results[best_on([g for g in models if g != f])]["options"] for f in models}
    else:
        per_fold_choice = {fold: results[best]["options"] for fold in models}
    choice = {
        "chosen": results[best]["options"],
        "candidates": results,
        "folds": judged_on,
        "chosen_on": "test folds, nested (each fold evaluated with the choice of the others)"
        if nested
        else "validation folds",
        "per_fold_choice": per_fold_choice,
    }
    atomic_write_json(Path(run_root) / CHOICE_NAME, choice)
    return choice


def validation_dice(
    model: Path,
    val_fold: int,
    options: Mapping[str, Any],
    overrides: Mapping[str, Any] | None = None,
    digest: str | None = None,
) -> list[float]:
    """Per-patient Dice of ``model`` on fold ``val_fold`` with post-processing ``options``.

    The figures are kept in ``<run>/fold<k>/validation_postprocessing.json`` with the model file's SHA-256
    and reused while the model is unchanged (``digest``: that SHA-256 when the caller has it).
    """
    cache_path = model.resolve().parent.parent / VALIDATION_CACHE_NAME
    digest = digest or file_sha256(model)
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    if cache.get("model_sha256") != digest or cache.get("val_fold") != val_fold:
        cache = {"model_sha256": digest, "val_fold": val_fold, "dice": {}}
    key = json.dumps(dict(options), sort_keys=True)
    if key not in cache["dice"]:
        settings = {**dict(overrides or {}), **options}
        result = evaluate(model, folds=[val_fold], overrides=settings, write=False)
        cache["dice"][key] = [float(r["dice"]) for r in result["records"]]
        atomic_write_json(cache_path, cache, indent=1)
    return cache["dice"][key]


def read_choice(run_root: str | Path) -> dict[str, Any]:
    """The post-processing chosen for a CV run by :func:`choose_postprocessing`.

    Raises:
        FileNotFoundError: when it has not been chosen yet.
    """
    path = Path(run_root) / CHOICE_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: not found; run `lggseg choose-postprocessing --run {run_root}` first"
        )
    return json.loads(path.read_text())["chosen"]


def combine_models(
    paths: Sequence[str | Path],
    output: str | Path,
    overwrite: bool = False,
    config_updates: dict[str, Any] | None = None,
    half: bool = False,
) -> dict[str, Any]:
    """Write one model file holding every model of ``paths`` as a :class:`ModelEnsemble`.

    Args:
        paths: model files (``best_model.pt`` of each fold) trained with the same network options.
        output: the ensemble's model file; written under a temporary name, then renamed.
        overwrite: replace an existing ``output`` (otherwise refused).
        config_updates: configuration values to store with it (the post-processing chosen by
            cross-validation: ``threshold``, ``keep_largest``, ``min_size``, ``tta``).
        half: store floating-point weights as float16 (half the file; they load into the float32 network,
            ``load_state_dict`` converts them).

    Returns:
        the saved mapping without the weights: ``config`` (with ``members`` and ``config_updates``),
        ``training_config`` (the first member's, as trained) and ``members`` (run, fold, SHA-256 of each
        source file).

    Raises:
        ValueError: fewer than two models, members whose network options differ, an ensemble among them,
            or an existing ``output`` without ``overwrite``.
    """
    if len(paths) < 2:
        raise ValueError(f"an ensemble needs at least two models, got {len(paths)}")
    output = Path(output)
    if output.exists() and not overwrite:
        raise ValueError(f"{output}: exists; pass overwrite to replace it")
    checkpoints = [load_checkpoint(p) for p in paths]
    first = checkpoints[0][CONFIG_KEY]
    for path, ckpt in zip(paths, checkpoints, strict=True):
        config = ckpt[CONFIG_KEY]
        if int(config.get("members", 1)) != 1:
            raise ValueError(f"{path}: is already an ensemble; combine single models")
        check_model_config(config, first, path)
    check_ensemble_members([(p, c[CONFIG_KEY]) for p, c in zip(paths, checkpoints, strict=True)])
    weights = {
        f"members.{i}.{name}": tensor
        for i, ckpt in enumerate(checkpoints)
        for name, tensor in ckpt[MODEL_KEY].items()
    }
    if half:
        weights = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    members = [
        {"run": Path(p).parent.parent.name, "fold": c[CONFIG_KEY].get("fold"), "sha256": file_sha256(p)}
        for p, c in zip(paths, checkpoints, strict=True)
    ]
    config = {**first, **(config_updates or {}), "members": len(paths)}
    saved = {
        "training_config": dict(first),  # the recipe of the members, before the chosen post-processing
        MODEL_KEY: weights,
        CONFIG_KEY: config,
        "members": members,
        "weights_dtype": "float16" if half else "float32",
    }
    save_model_file(output, saved)
    return {k: v for k, v in saved.items() if k != MODEL_KEY}
