"""``lggseg ensemble --quality``: the quality calibration of ``scripts/fit_qc.py`` stored with the model."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pipeline.cli import main
from pipeline.model_files import CONFIG_KEY, load_checkpoint
from pipeline.networks import build_network


def _member(path: Path, fold: int) -> Path:
    torch.manual_seed(fold)
    config = {"arch": "unext", "spatial_dims": 2, "context": 0, "num_classes": 1, "fold": fold}
    config |= {"deep_supervision": False, "network_kwargs": {}, "input_size": [32, 32]}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": build_network("unext", 2, 3, 1).state_dict(), "config": config}, path)
    return path


def test_the_calibration_is_stored_in_the_ensemble(tmp_path, capsys):
    members = [_member(tmp_path / f"f{k}" / "m.pt", k) for k in (0, 1)]
    calibration = {
        "slope": 38.8,
        "intercept": -35.7,
        "review_below": 0.68,
        "ranges": {"volume_share": [0, 1]},
    }
    (tmp_path / "qc.json").write_text(json.dumps({"calibration": calibration, "figures": {}}))
    out = tmp_path / "ensemble.pt"
    args = [
        "ensemble",
        "--models",
        *map(str, members),
        "--output",
        str(out),
        "--quality",
        str(tmp_path / "qc.json"),
    ]
    assert main(args) == 0
    assert "quality calibration stored" in capsys.readouterr().out
    assert load_checkpoint(out)[CONFIG_KEY]["quality"] == calibration


def test_a_file_that_is_no_calibration_is_refused_in_one_line(tmp_path, capsys):
    members = [_member(tmp_path / f"f{k}" / "m.pt", k) for k in (0, 1)]
    (tmp_path / "qc.json").write_text(json.dumps({"figures": {}}))
    out = tmp_path / "ensemble.pt"
    args = [
        "ensemble",
        "--models",
        *map(str, members),
        "--output",
        str(out),
        "--quality",
        str(tmp_path / "qc.json"),
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a quality calibration" in err[0] and not out.exists()
