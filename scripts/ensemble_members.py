"""Take a fold ensemble apart: each member as the model of its fold, and the cross-validation it came from.

``lggseg ensemble`` stores which fold each member was trained for (``members``: run, fold, SHA-256). This
script writes member ``i`` as ``OUTPUT/fold<k>/checkpoints/best_model.pt`` (a one-network model file with
the training configuration, weights as float32) and, with ``--evaluate``, evaluates each on its own test
fold and pools the patients into ``OUTPUT/cv`` exactly as ``lggseg cv`` does. The result is a run folder
that ``scripts/compare_runs.py --reference`` can pair with a new recipe's run, patient by patient, when
the shipped run's own files are gone.

    python scripts/ensemble_members.py --model bundle/models/model.pt --output runs/unext_r1 --evaluate \
        [--data data/lgg] [--tta none]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from pipeline.model_files import CONFIG_KEY, MODEL_KEY, load_checkpoint, save_model_file
from pipeline.safety import atomic_write_json
from pipeline.training.checkpoints import BEST_NAME
from pipeline.workflows.cross_validation import evaluate_folds
from pipeline.workflows.training import DONE_NAME


def split_members(model: Path, output: Path, data: str | None = None) -> dict[int, Path]:
    """Write each member of the ensemble ``model`` as ``output/fold<k>/checkpoints/best_model.pt``.

    Args:
        model: an ensemble model file (``config["members"] > 1``).
        output: the run folder to create (refused when it holds any of those files).
        data: prepared data folder stored in the members' configuration (default: the training run's).

    Returns:
        ``{fold: model file}``.
    """
    ckpt = load_checkpoint(model)
    members = ckpt.get("members") or []
    if int(ckpt[CONFIG_KEY].get("members", 1)) < 2 or not members:
        raise SystemExit(f"ensemble_members: error: {model}: not an ensemble of fold models")
    training = dict(ckpt.get("training_config") or ckpt[CONFIG_KEY])
    written: dict[int, Path] = {}
    for index, member in enumerate(members):
        fold = int(member["fold"])
        target = output / f"fold{fold}" / "checkpoints" / BEST_NAME
        if target.exists():
            raise SystemExit(f"ensemble_members: error: {target}: exists; choose another --output")
        prefix = f"members.{index}."
        weights = {
            name[len(prefix) :]: tensor.float() if torch.is_floating_point(tensor) else tensor
            for name, tensor in ckpt[MODEL_KEY].items()
            if name.startswith(prefix)
        }
        config = {**training, "fold": fold, "val_fold": None, "members": 1, "output": str(output.parent)}
        config |= {"name": output.name} | ({"data": data} if data else {})
        save_model_file(target, {MODEL_KEY: weights, CONFIG_KEY: config})
        atomic_write_json(target.parent.parent / DONE_NAME, {"from_ensemble": str(model), **member})
        written[fold] = target
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="the ensemble model file")
    parser.add_argument("--output", type=Path, required=True, help="run folder to write (OUTPUT/fold<k>/...)")
    parser.add_argument("--data", help="prepared data folder (default: the one the members were trained on)")
    parser.add_argument("--evaluate", action="store_true", help="evaluate each member on its test fold")
    parser.add_argument("--tta", default="none", help="test-time augmentation of the evaluation")
    args = parser.parse_args(argv)
    models = split_members(args.model, args.output, args.data)
    print(f"{args.output}: {len(models)} fold models ({', '.join(map(str, sorted(models)))})")
    if args.evaluate:
        result = evaluate_folds(models, args.output / "cv", {"tta": args.tta, "progress": False})
        dice = [r["dice"] for r in result["records"]]
        print(f"{args.output / 'cv'}: {len(dice)} patients, mean Dice {sum(dice) / len(dice):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
