"""``lggseg ensemble --quality``: the quality calibration of ``scripts/fit_qc.py`` stored with the model."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import save_untrained_model

from pipeline.cli import main
from pipeline.model_files import CONFIG_KEY, load_checkpoint


def _ensemble(tmp_path: Path, quality: dict) -> tuple[list[str], Path]:
    """``lggseg ensemble`` of two untrained fold models with ``--quality`` a file holding ``quality``: the
    command line and the ensemble it writes."""
    members = [save_untrained_model(tmp_path / f"f{k}" / "m.pt", fold=k, seed=k) for k in (0, 1)]
    qc = tmp_path / "qc.json"
    qc.write_text(json.dumps(quality))
    out = tmp_path / "ensemble.pt"
    return ["ensemble", "--models", *map(str, members), "--output", str(out), "--quality", str(qc)], out


def test_the_calibration_is_stored_in_the_ensemble(tmp_path, capsys):
    calibration = {
        "slope": 38.8,
        "intercept": -35.7,
        "review_below": 0.68,
        "ranges": {"volume_share": [0, 1]},
    }
    args, out = _ensemble(tmp_path, {"calibration": calibration, "figures": {}})
    assert main(args) == 0
    assert "quality calibration stored" in capsys.readouterr().out
    assert load_checkpoint(out)[CONFIG_KEY]["quality"] == calibration


def test_a_file_that_is_no_calibration_is_refused_in_one_line(tmp_path, capsys):
    args, out = _ensemble(tmp_path, {"figures": {}})
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a quality calibration" in err[0] and not out.exists()
