"""The README's main command, ``lggseg demo``, end to end on the built-in synthetic data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from monai.data import load_decathlon_datalist


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
    # a second run refuses to overwrite, and keeps what is there
    again = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "demo", "--output", str(output)],
        capture_output=True,
        text=True,
    )
    assert again.returncode == 1 and "--overwrite" in again.stderr
    assert datalist.is_file()
