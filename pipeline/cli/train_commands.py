"""``lggseg train``, ``evaluate``, ``infer`` and ``cv``: parse the options into a configuration and call
:mod:`pipeline.engines`. The training options are generated from :class:`pipeline.engines.RunConfig`
(``--lr 3e-4``, ``--input-size 256 256``, ``--deep-supervision`` / ``--no-deep-supervision``, ...), so
the CLI, a ``--config`` JSON file and the bundle share one list of options.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import types
import typing
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from pipeline.engines import RunConfig

logger = logging.getLogger("lggseg")

POSTPROCESSING_KEYS = ("threshold", "keep_largest", "min_size", "tta", "sw_batch_size", "num_workers")
HELP = {
    "name": "run name; outputs go to OUTPUT/NAME/fold<k>",
    "output": "root folder of the runs",
    "data": "prepared data folder (with datalist.json, from `lggseg prepare`) or a datalist file",
    "fold": "test fold, held out from training and validation",
    "val_fold": "validation fold (default: the fold after --fold)",
    "arch": "network name in the registry",
    "input_channels": "check: 3 x (2 x context + 1) in 2D, 3 in 3D",
    "num_classes": "1: one sigmoid channel; 2: softmax over background/tumour",
    "input_size": "in-plane training size H W (the UNeXt script's input_h input_w; default native)",
    "loss": "dice_ce, bce_dice, dice_focal or tversky",
    "batch_dice": "Dice term over the whole batch instead of per slice (MONAI batch=True)",
    "optimizer": "adam, adamw or sgd",
    "scheduler": "cosine, plateau, multistep or constant",
    "early_stopping": "stop after this many validations without improvement (<= 0: off)",
    "context": "2.5D: neighbouring slices on each side as extra channels",
    "num_samples": "slices (3D: patches) drawn per volume per visit",
    "pos": "weight of tumour slices in sampling",
    "neg": "weight of tumour-free slices in sampling",
    "cache": "memory (CacheDataset), disk (PersistentDataset) or none",
    "val_interval": "validate every N epochs (and after the last)",
    "grad_clip": "clip the gradient norm (0: off)",
    "device": "auto (CUDA when present), cpu or cuda[:i]",
    "resume": "continue from the last checkpoint_epoch=N.pt of the run",
    "threshold": "probability threshold of the tumour",
    "keep_largest": "keep the N largest 3D connected components (Buda et al.: 1; 0: off)",
    "min_size": "drop 3D components under this many voxels (0: off)",
    "tta": "test-time augmentation: none, flip, scale or flip+scale",
    "network_kwargs": "JSON object of extra network arguments",
}


def _field_type(f: Any) -> Any:
    """The base type of a dataclass field, the element type for tuples, without ``| None``."""
    hint = typing.get_type_hints(RunConfig)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and args:
        hint = args[0]
    return hint


def add_config_options(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """Add one option per :class:`RunConfig` field (default: not given, i.e. the config's value)."""
    parser.add_argument("--config", type=Path, help="JSON file of options (command-line options win)")
    for f in fields(RunConfig):
        if f.name in skip or f.name == "divisible":  # derived from the network's stride
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f"{HELP.get(f.name, f.name.replace('_', ' '))} (default: {default})"
        hint = _field_type(f)
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        if hint is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif typing.get_origin(hint) is tuple:
            parser.add_argument(flag, nargs="+", type=typing.get_args(hint)[0], **kwargs)
        elif typing.get_origin(hint) is dict:
            parser.add_argument(flag, type=json.loads, **kwargs)
        else:
            parser.add_argument(flag, type=hint, **kwargs)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """A :class:`RunConfig` from ``--config`` (if any) updated with the options given on the command line."""
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(json.loads(Path(args.config).read_text()))
    names = {f.name for f in fields(RunConfig)}
    values.update({k: v for k, v in vars(args).items() if k in names})
    return RunConfig.from_dict(values)


def _postprocessing_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True, help="model file (best_model.pt)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:i]")
    parser.add_argument("--threshold", type=float, help=HELP["threshold"] + " (default: the run's)")
    parser.add_argument("--keep-largest", dest="keep_largest", type=int, help=HELP["keep_largest"])
    parser.add_argument("--min-size", dest="min_size", type=int, help=HELP["min_size"])
    parser.add_argument("--tta", choices=("none", "flip", "scale", "flip+scale"), help=HELP["tta"])
    parser.add_argument("--sw-batch-size", dest="sw_batch_size", type=int, help="slices per forward pass")
    parser.add_argument("--num-workers", dest="num_workers", type=int, help="data loader workers")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in POSTPROCESSING_KEYS if getattr(args, k, None) is not None}


def _guard(job: Any) -> int:
    """Run ``job``; bad input becomes one clear line on stderr and exit code 2."""
    try:
        job()
    except (FileNotFoundError, ValueError) as error:
        print(f"lggseg: error: {error}", file=sys.stderr)
        return 2
    return 0


def run_train(args: argparse.Namespace) -> int:
    from pipeline.engines import train

    return _guard(lambda: train(config_from_args(args)))


def run_cv(args: argparse.Namespace) -> int:
    from pipeline.engines import cross_validate

    return _guard(lambda: cross_validate(config_from_args(args), folds=args.folds))


def run_evaluate(args: argparse.Namespace) -> int:
    from pipeline.engines import evaluate

    def job() -> None:
        result = evaluate(
            args.checkpoint,
            output=args.output,
            data=args.data,
            folds=args.folds,
            overrides=_overrides(args),
            save_predictions=args.save_predictions,
            device=args.device,
        )
        dice = result["summary"]["overall"]["metrics"]["dice"]
        print(
            f"{len(result['records'])} patients: Dice mean {dice['mean']:.4f} median {dice['median']:.4f} "
            f"std {dice['std']:.4f}; report in {result['paths'].get('json', '').__str__()}"
        )

    return _guard(job)


def run_infer(args: argparse.Namespace) -> int:
    from pipeline.engines import infer

    def job() -> None:
        written = infer(
            args.checkpoint,
            args.input,
            args.output,
            overrides=_overrides(args),
            kaggle_masks=args.kaggle_masks,
            device=args.device,
        )
        print(f"{len(written)} predictions written to {args.output}")

    return _guard(job)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train``, ``evaluate``, ``infer`` and ``cv``."""
    p = subparsers.add_parser(
        "train",
        help="train a network on one fold (Ignite SupervisedTrainer)",
        description="Train on every fold but --fold and --val-fold; validate per patient "
        "in 3D on --val-fold; checkpoints, TensorBoard and config in OUTPUT/NAME/fold<k>.",
    )
    add_config_options(p)
    p.set_defaults(func=run_train)

    p = subparsers.add_parser(
        "cv",
        help="train and evaluate every fold, then pool the per-patient report",
        description="Cross-validation: each fold in turn is the test fold; finished "
        "folds are skipped, interrupted ones resumed. Report in OUTPUT/NAME/cv.",
    )
    add_config_options(p, skip=("fold", "resume"))
    p.add_argument("--folds", type=int, nargs="+", help="folds to run (default: all in the datalist)")
    p.set_defaults(func=run_cv)

    p = subparsers.add_parser(
        "evaluate",
        help="per-patient 3D evaluation of a checkpoint (CSV, JSON, plots)",
        description="Evaluate whole volumes per patient: Dice, IoU, HD95, ASSD, "
        "sensitivity, precision, volume differences, lesion counts, slice-level figures.",
    )
    _postprocessing_options(p)
    p.add_argument("--data", type=Path, help="prepared data folder or datalist (default: the run's)")
    p.add_argument("--folds", type=int, nargs="+", help="folds to evaluate (default: the run's test fold)")
    p.add_argument("--output", type=Path, help="report folder (default: <run>/evaluation)")
    p.add_argument("--save-predictions", action="store_true", help="also write predicted NIfTI volumes")
    p.set_defaults(func=run_evaluate)

    p = subparsers.add_parser(
        "infer",
        help="predict tumour masks as NIfTI (and Kaggle-layout TIFF masks)",
        description="Inputs: prepared folders or datalists, NIfTI images, raw Kaggle "
        "patient folders or folders of them. Writes OUTPUT/<patient>/prediction.nii.gz.",
    )
    _postprocessing_options(p)
    p.add_argument("--input", nargs="+", required=True, help="what to segment")
    p.add_argument("--output", type=Path, required=True, help="output folder")
    p.add_argument("--kaggle-masks", action="store_true", help="also write <patient>_<k>_mask.tif per slice")
    p.set_defaults(func=run_infer)
