"""The README's main command, ``lggseg demo``, end to end on the built-in synthetic data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from monai.data import load_decathlon_datalist


@pytest.mark.slow
def test_readme_main_command_runs_end_to_end(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "lggseg demo" in readme.split("```")[1], "the README must open with the demo command"
    output = tmp_path / "demo"
    completed = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "demo", "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "demo finished" in completed.stderr
    datalist = output / "prepared" / "datalist.json"
    entries = load_decathlon_datalist(str(datalist), True, "training")
    assert len(entries) == 10 and all(
        Path(e["image"]).is_file() and Path(e["label"]).is_file() for e in entries
    )
    assert json.loads(datalist.read_text())["num_folds"] == 5
    # trained, evaluated per patient on the held-out fold, and every raw patient segmented
    fold_dir = output / "runs" / "demo" / "fold0"
    assert (fold_dir / "checkpoints" / "best_model.pt").is_file() and (fold_dir / "config.json").is_file()
    assert list((fold_dir / "tensorboard").glob("events.out.tfevents.*"))
    report = json.loads((fold_dir / "evaluation" / "metrics.json").read_text())
    held_out = {e["patient"] for e in json.loads(datalist.read_text())["training"] if e["fold"] == 0}
    assert {p["patient_id"] for p in report["patients"]} == held_out
    mean_dice = report["summary"]["overall"]["metrics"]["dice"]["mean"]
    assert mean_dice > 0.5, f"the demo model must learn the synthetic task (mean Dice {mean_dice:.3f})"
    for name in ("metrics_per_patient.csv", "dice_per_institution.png", "overlay_worst.png"):
        assert (fold_dir / "evaluation" / name).is_file(), name
    predictions = sorted((output / "predictions").glob("*/*_seg.nii.gz"))
    assert len(predictions) == 10
    masks = list((predictions[0].parent / "kaggle_masks").glob("*_mask.tif"))
    assert len(masks) == len(list((output / "kaggle_3m" / predictions[0].parent.name).glob("*_mask.tif")))
    # a second run refuses to overwrite, and keeps what is there
    again = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "demo", "--output", str(output)],
        capture_output=True,
        text=True,
    )
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert datalist.is_file()
    # --overwrite never removes what the demo did not write
    (output / "my_notes.txt").write_text("mine")
    refused = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "demo", "--output", str(output), "--overwrite"],
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2 and "my_notes.txt" in refused.stderr
    assert (output / "my_notes.txt").read_text() == "mine" and datalist.is_file()
