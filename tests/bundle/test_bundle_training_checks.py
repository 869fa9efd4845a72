"""The bundle's ``train.json`` and ``evaluate.json`` check their values first, as ``lggseg train`` and
``lggseg evaluate`` do: bad input is one line ``lggseg: error: ...`` and exit code 2, never MONAI's
"Failed to evaluate" traceback; an existing model or report is never replaced unasked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO_ROOT

from pipeline.networks import build_network
from pipeline.workflows import bundle_checks

CONFIGS = REPO_ROOT / "bundle" / "configs"


def _datalist(folder: Path, folds: int = 3) -> Path:
    """A datalist of ``folds`` folds, two patients each; the files exist (the checks do not read them)."""
    entries = []
    for fold in range(folds):
        for index in range(2):
            patient = f"P{fold}{index}"
            for kind in ("image", "label"):
                (folder / f"{patient}_{kind}.nii.gz").write_bytes(b"")
            entries.append(
                {
                    "image": f"{patient}_image.nii.gz",
                    "label": f"{patient}_label.nii.gz",
                    "patient": patient,
                    "fold": fold,
                }
            )
    path = folder / "datalist.json"
    path.write_text(json.dumps({"training": entries}))
    return path


def _run_config() -> dict:
    """``train.json``'s ``run_config`` with its references replaced by the shipped values."""
    config = json.loads((CONFIGS / "train.json").read_text())
    names = {"lr": "learning_rate", "loss": "loss_name", "optimizer": "optimizer_name"}
    names |= {"scheduler": "scheduler_name"}
    return {key: config[names.get(key, key)] for key in config["run_config"]}


def _training(tmp_path: Path, **changes) -> dict:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    values = {
        "splits": bundle_checks.datalist_splits(_datalist(data), 0, None),
        "device": "cpu",
        "ckpt_dir": str(tmp_path / "models" / "fold0"),
        "output_dir": str(tmp_path / "eval" / "fold0"),
        "run_config": _run_config(),
        "dataset_dir": str(data),
    }
    return {**values, **changes}


def _say(capsys, check, values: dict) -> str:
    with pytest.raises(SystemExit) as raised:
        check(**values)
    lines = capsys.readouterr().err.splitlines()
    assert raised.value.code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("lggseg: error: "), lines
    return lines[0]


def test_training_checks_pass_a_good_configuration_and_create_nothing(capsys, tmp_path):
    bundle_checks.check_training(**_training(tmp_path))
    assert capsys.readouterr().err == ""
    assert not (tmp_path / "models").exists() and not (tmp_path / "eval").exists()


def test_a_bad_datalist_is_one_line(capsys, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    path = _datalist(data)
    problems = [
        ((tmp_path / "none.json", 0, None), "none.json does not exist"),
        ((path, 7, None), "the test split of fold=7"),
        ((path, 1, 1), "validation fold 1 is the test fold"),
    ]
    for args, words in problems:
        with pytest.raises(SystemExit) as raised:
            bundle_checks.datalist_splits(*args)
        lines = capsys.readouterr().err.splitlines()
        assert raised.value.code == 2 and len(lines) == 1 and words in lines[0], (args, lines)
    splits = bundle_checks.datalist_splits(path, 1, None)
    assert [e["patient"] for e in splits["test"]] == ["P10", "P11"] and splits["val_fold"] == 2


def test_training_checks_say_each_problem_in_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    good = _training(tmp_path)
    bad_config = {**good["run_config"], "epochs": 0}
    (tmp_path / "file").write_text("a file")
    problems = [
        ({"splits": {"train": [], "val": [{"image": "x"}]}}, "the train split is empty"),
        ({"device": "cuda"}, "cuda"),
        ({"run_config": bad_config}, "epochs"),
        ({"ckpt_dir": str(tmp_path / "data" / "models")}, "inside"),
        ({"output_dir": str(tmp_path / "file" / "eval")}, "file"),
    ]
    for change, words in problems:
        line = _say(capsys, bundle_checks.check_training, {**good, **change})
        assert words in line, (change, line)
    # the MONAI Label trainer gives its splits itself and no data folder: nothing else is read
    given = {"train": [{"image": "a"}], "val": [{"image": "a"}]}
    bundle_checks.check_training(**{**good, "splits": given, "dataset_dir": None})


def test_training_refuses_to_replace_a_model(capsys, tmp_path):
    values = _training(tmp_path)
    model = Path(values["ckpt_dir"]) / "model.pt"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"the user's model")
    line = _say(capsys, bundle_checks.check_training, values)
    assert str(model) in line and "exists" in line
    assert model.read_bytes() == b"the user's model"


def _evaluation(tmp_path: Path, **changes) -> dict:
    values = _training(tmp_path)
    del values["ckpt_dir"]
    weights = tmp_path / "model.pt"
    if not weights.exists():
        torch.save({"model": build_network("unext", 2, 3, 1).state_dict(), "config": {}}, weights)
    return {**values, "ckpt_path": str(weights), "overwrite": False, **changes}


def test_evaluation_checks_the_weights_and_claims_the_report(capsys, tmp_path):
    values = _evaluation(tmp_path)
    line = _say(capsys, bundle_checks.check_evaluation, {**values, "ckpt_path": str(tmp_path / "no.pt")})
    assert "no.pt: model file not found" in line
    line = _say(capsys, bundle_checks.check_evaluation, {**values, "splits": {"test": []}})
    assert "the test split is empty" in line
    bundle_checks.check_evaluation(**values)  # good: passes and claims the report's names
    report = Path(values["output_dir"]) / "metrics.json"
    report.write_text("{}")  # what the run writes
    line = _say(capsys, bundle_checks.check_evaluation, values)
    assert "already holds an evaluation report" in line and "--overwrite" in line
    bundle_checks.check_evaluation(**{**values, "overwrite": True})
    assert report.read_text() == "{}"  # the checks replace nothing


def test_evaluation_never_replaces_a_report_lggseg_did_not_write(capsys, tmp_path):
    values = _evaluation(tmp_path, overwrite=True)
    own = Path(values["output_dir"]) / "metrics_per_patient.csv"
    own.parent.mkdir(parents=True)
    own.write_text("the user's table")
    (own.parent / "events.out.tfevents.1").write_bytes(b"")  # train.json's TensorBoard events are fine
    line = _say(capsys, bundle_checks.check_evaluation, values)
    assert "metrics_per_patient.csv" in line and "did not write" in line
    assert own.read_text() == "the user's table"


def test_train_and_evaluate_json_run_the_checks_first():
    train = json.loads((CONFIGS / "train.json").read_text())
    evaluate = json.loads((CONFIGS / "evaluate.json").read_text())
    assert train["initialize"][0].startswith("$pipeline.workflows.bundle_checks.check_training(")
    assert evaluate["initialize"][0].startswith("$pipeline.workflows.bundle_checks.check_evaluation(")
    assert evaluate["overwrite"] is False
    for name in ("multi_gpu_train.json", "multi_gpu_evaluate.json"):
        steps = json.loads((CONFIGS / name).read_text())["initialize"]
        assert sum("pipeline.workflows.bundle_checks.check_" in step for step in steps) == 1, name
        assert not any("refuse_existing_model" in step for step in steps), name


@pytest.mark.slow
def test_monai_bundle_run_of_train_and_evaluate_say_bad_input_in_one_line(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), "CUDA_VISIBLE_DEVICES": ""}
    files = {"train": ["train.json"], "evaluate": ["train.json", "evaluate.json"]}
    for name, configs in files.items():
        config_file = json.dumps([str(CONFIGS / c) for c in configs])
        cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config_file]
        cmd += ["--bundle_root", str(tmp_path / "bundle"), "--dataset_dir", str(tmp_path / "no_data")]
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
        errors = [line for line in result.stderr.splitlines() if "error:" in line]
        assert result.returncode == 2, (name, result.stderr[-2000:])
        assert "Traceback" not in result.stdout + result.stderr, (name, result.stderr[-2000:])
        assert len(errors) == 1 and errors[0].startswith("lggseg: error: "), (name, errors)
    assert not (tmp_path / "bundle").exists()
