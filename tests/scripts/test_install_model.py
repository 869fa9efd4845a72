"""``scripts/install_model.py``: the shipped model and the bundle's configs agree with each other."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import REPO_ROOT
from monai.bundle import ConfigParser, verify_metadata

from pipeline.networks import build_network

SCHEMA = REPO_ROOT.parent / "shared" / "schemas" / "meta_schema_20240725.json"


@pytest.fixture()
def bundle(tmp_path) -> Path:
    shutil.copytree(REPO_ROOT / "bundle" / "configs", tmp_path / "bundle" / "configs")
    return tmp_path / "bundle"


def _ensemble_file(path: Path) -> Path:
    torch.manual_seed(0)
    net = build_network("unext", 2, 9, 1, deep_supervision=True, members=2)
    config = {"arch": "unext", "spatial_dims": 2, "context": 1, "num_classes": 1, "deep_supervision": True}
    config |= {"members": 2, "network_kwargs": {}, "keep_largest": 1, "tta": "flip", "fold": 0}
    config |= {"epochs": 40, "lr": 0.001, "optimizer": "adamw", "batch_dice": True, "device": "cuda:3"}
    trained = {**config, "members": 1, "keep_largest": 0, "tta": "none"}
    torch.save({"model": net.state_dict(), "config": config, "training_config": trained}, path)
    return path


def _assert_installed(installed: Path, model: Path, version: str) -> None:
    """The installed file is the model file (every entry, every weight) with the model's version added; a
    file that says that version already is copied byte for byte."""
    shipped, given = (torch.load(p, weights_only=True) for p in (installed, model))
    assert shipped.pop("model_version") == version and "model_version" not in given
    assert shipped.keys() == given.keys() and shipped["config"] == given["config"]
    assert all(torch.equal(shipped["model"][k], given["model"][k]) for k in given["model"])
    assert shipped["model"].keys() == given["model"].keys()


def test_install_sets_the_configs_from_the_model(bundle, tmp_path, load_script):
    install_model = load_script("install_model")
    model = _ensemble_file(tmp_path / "ensemble.pt")
    before = {n: (bundle / "configs" / n).read_text().splitlines() for n in ("inference.json", "train.json")}
    changes = install_model.install(model, bundle)
    inference = json.loads((bundle / "configs" / "inference.json").read_text())
    expected = {"context": 1, "deep_supervision": True, "members": 2, "keep_largest": 1, "tta": "flip"}
    assert {k: inference[k] for k in expected} == expected
    train = json.loads((bundle / "configs" / "train.json").read_text())
    assert train["epochs"] == 40 and train["optimizer_name"] == "adamw" and train["batch_dice"] is True
    assert train["members"] == 1 and train["context"] == 1 and train["device"] == "auto"  # runtime kept
    assert train["keep_largest"] == 0 and train["tta"] == "none"  # the recipe's, not the ensemble's choice
    for name, lines in before.items():  # only the values of the changed lines differ, nothing else
        after = (bundle / "configs" / name).read_text().splitlines()
        assert len(after) == len(lines)
        changed = {a.split(":")[0].strip().strip('"') for a, b in zip(after, lines, strict=True) if a != b}
        assert changed == set(changes[name])
    assert install_model.install(model, bundle, overwrite=True) == {"inference.json": {}, "train.json": {}}
    meta_file = bundle / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    image = meta["network_data_format"]["inputs"]["image"]
    assert image["num_channels"] == 9 and image["channel_def"]["4"] == "FLAIR, slice +0"
    verify_metadata(meta_file=str(meta_file), filepath=str(SCHEMA))
    _assert_installed(bundle / "models" / "model.pt", model, meta["version"])
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(
        torch.load(bundle / "models" / "model.pt", weights_only=True)["model"], strict=True
    )


def test_install_refuses_to_replace_a_model_without_overwrite(bundle, tmp_path, capsys, load_script):
    install_model = load_script("install_model")
    (bundle / "models").mkdir()
    (bundle / "models" / "model.pt").write_bytes(b"shipped")
    model = _ensemble_file(tmp_path / "ensemble.pt")
    configs = {p.name: p.read_bytes() for p in (bundle / "configs").iterdir()}
    assert install_model.main(["--model", str(model), "--bundle", str(bundle)]) == 2
    assert configs == {p.name: p.read_bytes() for p in (bundle / "configs").iterdir()}
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert (bundle / "models" / "model.pt").read_bytes() == b"shipped"
    assert install_model.main(["--model", str(model), "--bundle", str(bundle), "--overwrite"]) == 0
    version = json.loads((bundle / "configs" / "metadata.json").read_text())["version"]
    _assert_installed(bundle / "models" / "model.pt", model, version)
