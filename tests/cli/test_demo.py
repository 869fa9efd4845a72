"""The README's main command, ``lggseg demo``, end to end: the example scan segmented by the shipped model
first (mask on the FLAIR's own grid, QC picture, summary row, Dice when the Kaggle data set is here), then the
round trip on the built-in synthetic data."""

from __future__ import annotations

import argparse
import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers import REPO_ROOT
from monai.data import load_decathlon_datalist

from pipeline.cli import demo_command, main

CASE = demo_command.EXAMPLE.name


def assert_example_outputs(example: Path) -> None:
    """The example's mask is on its FLAIR's grid (shape and affine as nibabel reads the FLAIR), uint8 0/1
    with a tumour, beside its QC picture, and ``summary.csv`` has its row."""
    flair = nib.load(next(demo_command.EXAMPLE.glob("*_fla.nii.gz")))
    mask = nib.load(example / CASE / f"{CASE}_seg.nii.gz")
    assert mask.shape == flair.shape
    assert np.allclose(mask.affine, flair.affine, atol=1e-4)
    values = np.asarray(mask.dataobj)
    assert values.dtype == np.uint8 and set(np.unique(values)) == {0, 1}
    assert (example / CASE / f"{CASE}_qc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(example / "summary.csv", newline="") as f:
        rows = {row["case"]: row for row in csv.DictReader(f)}
    assert set(rows) == {CASE}
    assert int(rows[CASE]["tumour_voxels"]) == int(values.sum()) > 0
    assert Path(rows[CASE]["seg_nifti"]) == example / CASE / f"{CASE}_seg.nii.gz"


@pytest.mark.slow
def test_readme_main_command_runs_end_to_end(tmp_path: Path) -> None:
    readme = (REPO_ROOT / "README.md").read_text()
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
    # first the real example scan with the shipped model: where its files are, and its Dice (or why none)
    out = completed.stdout
    assert out.index(f"example scan {CASE}") < out.index("synthetic round trip")
    assert_example_outputs(output / "example")
    assert f"mask:       {output / 'example' / CASE / f'{CASE}_seg.nii.gz'}" in out
    assert f"QC picture: {output / 'example' / CASE / f'{CASE}_qc.png'}" in out
    (dice_line,) = [line for line in out.splitlines() if line.strip().startswith("Dice:")]
    if (demo_command.KAGGLE_3M / CASE).is_dir():
        assert 0.6 < float(re.search(r"Dice:\s+([0-9.]+) ", dice_line).group(1)) <= 1.0, dice_line
        assert "training patient" in dice_line and "cross-validated" in dice_line
    else:
        assert "none: the Kaggle mask of this patient" in dice_line
    # the last line names the synthetic run's report where it is (no staging folder, no doubled path)
    report = output / "synthetic" / "fold0" / "evaluation" / "metrics.json"
    assert out.rstrip().splitlines()[-1].startswith(f"synthetic round trip: evaluation report {report},")
    assert ".lggseg-staging-" not in completed.stderr + out
    for noise in ("Setting affine", "nvImageCodec"):
        assert noise not in completed.stderr, noise
    datalist = output / "prepared" / "datalist.json"
    entries = load_decathlon_datalist(str(datalist), True, "training")
    assert len(entries) == 10 and all(
        Path(e["image"]).is_file() and Path(e["label"]).is_file() for e in entries
    )
    assert json.loads(datalist.read_text())["num_folds"] == 5
    # trained, evaluated per patient on the held-out fold, and every raw patient segmented
    fold_dir = output / "synthetic" / "fold0"
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


@pytest.mark.slow
def test_example_step_without_the_kaggle_data_says_there_is_no_dice(tmp_path, monkeypatch, capsys):
    """Without ``../shared`` the example is segmented all the same; one line says why there is no Dice."""
    monkeypatch.setattr(demo_command, "KAGGLE_3M", tmp_path / "no_shared" / "kaggle_3m")
    args = argparse.Namespace(output=tmp_path / "demo", overwrite=False)
    step = demo_command.example_step(args)
    assert step is not None and main(["infer", *step[1:], "--device", "cpu"]) == 0
    demo_command.report_example(args, seconds=1.0)
    lines = capsys.readouterr().out.splitlines()
    dice = [line for line in lines if line.strip().startswith("Dice:")]
    missing = tmp_path / "no_shared" / "kaggle_3m" / CASE
    assert dice == [f"  Dice:       none: the Kaggle mask of this patient ({missing}) is not on this machine"]
    assert_example_outputs(tmp_path / "demo" / "example")
