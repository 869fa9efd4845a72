"""The run configuration: every option described once, and the bundle's train.json in step with it."""

from __future__ import annotations

import json
from dataclasses import asdict, fields

from helpers import REPO_ROOT

from pipeline.config import BUNDLE_NAMES, OPTION_HELP, RunConfig
from pipeline.model_files import load_checkpoint


def test_every_option_has_its_help_line():
    names = {f.name for f in fields(RunConfig)}
    assert set(OPTION_HELP) == names
    assert all(text and "\n" not in text for text in OPTION_HELP.values())


def test_train_json_differs_from_the_defaults_only_by_the_shipped_recipe():
    train = json.loads((REPO_ROOT / "bundle" / "configs" / "train.json").read_text())
    saved = load_checkpoint(REPO_ROOT / "bundle" / "models" / "model.pt")
    recipe = saved.get("training_config", saved["config"])
    defaults = asdict(RunConfig())
    by_bundle_name = {BUNDLE_NAMES.get(name, name): name for name in defaults}
    compared, differing = 0, {}
    for key, value in train.items():
        name = by_bundle_name.get(key)
        if (
            name is None
            or (isinstance(value, str) and value.startswith(("$", "@")))
            or isinstance(value, dict)
        ):
            continue
        compared += 1
        default = list(defaults[name]) if isinstance(defaults[name], tuple) else defaults[name]
        if value != default:
            differing[name] = value
    assert compared >= 20  # the scalar options train.json spells out
    assert differing, "train.json holds the shipped recipe, which is not all defaults"
    for name, value in differing.items():
        expected = list(recipe[name]) if isinstance(recipe[name], tuple) else recipe[name]
        assert value == expected, f"{name}: train.json {value!r} is neither the default nor the recipe"
