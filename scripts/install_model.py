"""Install a model file into the bundle: the weights, and the configs that must agree with them.

- copies the model file to ``BUNDLE/models/model.pt`` (an existing one is replaced only with ``--overwrite``;
  written under a temporary name, then renamed), with the model's version (``metadata.json``'s ``version``,
  the trained weights' version, not the package's) under ``"model_version"``
  (:func:`pipeline.model_files.model_version`); a file that already says that version is copied byte for
  byte, and the weights and configuration are never changed;
- sets ``inference.json``'s network options and post-processing values (``arch``, ``context``,
  ``deep_supervision``, ``members``, ``network_kwargs``, ``keep_largest``, ``tta``, ...) from the model's
  ``config``;
- sets ``train.json``'s recipe values from it (an ensemble's ``training_config``, ``members`` 1: training
  builds one network), so the bundle trains what it ships;
- sets the network input of ``metadata.json`` (channels: 3 sequences x ``2 * context + 1`` slices) and the
  package version its configs need (``required_packages_version``'s ``lggseg``: this one).

Only the value of existing top-level one-line values changes (scalars, and literals such as
``"network_kwargs": {}``); the files keep their layout. Expressions (``$...``, ``@...``) and blocks that
span lines are never touched.

    python scripts/install_model.py --model runs/unext_r1/model.pt [--bundle bundle] [--overwrite]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from pipeline import __version__
from pipeline.config import BUNDLE_NAMES, RunConfig, network_in_channels
from pipeline.ingestion.sequences import CHANNEL_DESCRIPTIONS
from pipeline.model_files import (
    CONFIG_KEY,
    INFERENCE_KEYS,
    MODEL_VERSION_KEY,
    load_checkpoint,
    save_model_file,
)
from pipeline.safety import atomic_write_bytes, atomic_write_text

# how and where a run ran, not what it learnt: left as the bundle has them
RUNTIME_KEYS = ("device", "amp", "num_workers", "cache", "cache_dir", "progress", "resume", "overwrite")


def set_scalars(path: Path, values: Mapping[str, Any]) -> dict[str, Any]:
    """Set the value of each top-level one-line value of a bundle JSON config that names a key of ``values``
    (a line that opens a block, ``{`` or ``[``, and expressions are left alone).

    Args:
        path: the config file.
        values: ``RunConfig`` names -> values (zoo names such as ``learning_rate`` are mapped).

    Returns:
        ``{bundle name: new value}`` of the lines changed.
    """
    text = path.read_text()
    changed = {}
    for name, value in values.items():
        key = BUNDLE_NAMES.get(name, name)
        pattern = re.compile(rf'^(    "{re.escape(key)}": )(.*?)(,?)$', re.M)
        match = pattern.search(text)
        if match is None or match.group(2).startswith(('"$', '"@')) or match.group(2) in ("{", "["):
            continue
        new = json.dumps(value)
        if new != match.group(2):
            text = text[: match.start(2)] + new + text[match.end(2) :]
            changed[key] = value
    json.loads(text)  # still valid JSON
    atomic_write_text(path, text)
    return changed


def channel_def(context: int) -> dict[str, str]:
    """Names of the network's input channels: the 3 sequences of each slice, ``-context`` to ``+context``."""
    if context == 0:
        return {str(i): name for i, name in enumerate(CHANNEL_DESCRIPTIONS)}
    offsets = range(-context, context + 1)
    names = [f"{name}, slice {offset:+d}" for offset in offsets for name in CHANNEL_DESCRIPTIONS]
    return {str(i): name for i, name in enumerate(names)}


def install(model: Path, bundle: Path, overwrite: bool = False) -> dict[str, Any]:
    """Copy ``model`` into ``bundle`` and make the bundle's configs agree with it.

    Raises:
        FileNotFoundError: no such model file.
        ValueError: not an lggseg model file, an existing ``models/model.pt`` without ``overwrite``, or a
            ``metadata.json`` without a ``version``.
    """
    saved = load_checkpoint(model)
    config = saved[CONFIG_KEY]
    trained = saved.get("training_config", config)  # an ensemble keeps its members' recipe apart
    target = bundle / "models" / "model.pt"
    if target.exists() and not overwrite and target.resolve() != model.resolve():
        raise ValueError(f"{target}: exists; pass --overwrite to replace it")
    meta_path = bundle / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    version = meta.get("version")
    if not isinstance(version, str) or not version.strip():
        raise ValueError(f"{meta_path}: no 'version' (the model's version, written into the model file)")
    names = {f.name for f in fields(RunConfig)}
    recipe = {k: v for k, v in trained.items() if k in names and k not in RUNTIME_KEYS}
    changes = {
        "inference.json": set_scalars(
            bundle / "configs" / "inference.json", {k: config[k] for k in INFERENCE_KEYS if k in config}
        ),
        "train.json": set_scalars(bundle / "configs" / "train.json", {**recipe, "members": 1}),
    }
    image = meta["network_data_format"]["inputs"]["image"]
    context = int(config.get("context", 0))
    image["num_channels"] = network_in_channels(int(config.get("spatial_dims", 2)), context)
    image["channel_def"] = channel_def(context)
    meta.setdefault("required_packages_version", {})["lggseg"] = __version__
    atomic_write_text(meta_path, json.dumps(meta, indent=4) + "\n")
    if saved.get(MODEL_VERSION_KEY) != version.strip():  # the same weights and configuration, and the version
        save_model_file(target, {**saved, MODEL_VERSION_KEY: version.strip()})
    elif target.resolve() != model.resolve():
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, model.read_bytes())
    return changes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, required=True, help="the model file to ship")
    parser.add_argument("--bundle", type=Path, default=Path("bundle"), help="bundle folder (default: bundle)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing models/model.pt")
    args = parser.parse_args(argv)
    try:
        changes = install(args.model, args.bundle, args.overwrite)
    except (ValueError, FileNotFoundError) as error:
        print(f"install_model: error: {error}", file=sys.stderr)
        return 2
    for name, changed in changes.items():
        print(f"{name}: {json.dumps(changed) if changed else 'unchanged'}")
    print(f"{args.bundle / 'models' / 'model.pt'}: installed from {args.model}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
