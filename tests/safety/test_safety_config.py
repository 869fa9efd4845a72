"""Safety round 2 (issue 20): configuration values, datalists, model files, devices and the bundle's own
checks are refused before any work, in one line naming the file, the key or parameter and the problem
(``lggseg``: exit code 2; the bundle's ``inference.json``: exit code 2 without a traceback)."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from helpers import REPO_ROOT, run_lggseg

import pipeline.config as config_module
import pipeline.model_files as model_files
from pipeline.config import RunConfig
from pipeline.ingestion.datalist import load_datalist
from pipeline.ingestion.errors import LGGDataError
from pipeline.model_files import CONFIG_KEY, MODEL_KEY, create_network, load_checkpoint, save_model_file

CONFIGS = REPO_ROOT / "bundle" / "configs"
MAX_LINE = 300 + len("lggseg: error: ")  # a one-line error stays readable: the file, the problem, no dumps


def _readable(line: str, *paths: object) -> bool:
    """True when ``line`` is at most MAX_LINE long once the named ``paths`` (pytest's own temporary
    folders, whose length differs from machine to machine) are left out."""
    for path in paths:
        line = line.replace(str(path), "<path>")
    return len(line) <= MAX_LINE


def _run(capsys: pytest.CaptureFixture, argv: list[str]) -> tuple[int, list[str]]:
    """Run ``lggseg ARGV`` in-process; returns the exit code and the lines on stderr."""
    code, _, err = run_lggseg(capsys, *argv)
    return code, err.splitlines()


# ------------------------------------------------------------------- item 18: --config values of a wrong type
WRONG_TYPES = [
    ({"epochs": "1"}, "epochs", '"1"'),
    ({"epochs": None}, "epochs", "null"),
    ({"lr": "fast"}, "lr", '"fast"'),
    ({"augment": "false"}, "augment", '"false"'),
    ({"epochs": 1.7}, "epochs", "1.7"),
    ({"fold": "0"}, "fold", '"0"'),
    ({"milestones": 3}, "milestones", "3"),
    ({"input_size": [256, "256"]}, "input_size", '"256"'),
    ({"network_kwargs": [1, 2]}, "network_kwargs", "[1, 2]"),
    ({"threshold": True}, "threshold", "true"),
]


@pytest.mark.parametrize("values, key, shown", WRONG_TYPES, ids=lambda v: json.dumps(v))
def test_config_file_value_of_a_wrong_type_is_one_line_exit_2(capsys, tmp_path, values, key, shown):
    config = tmp_path / "run.json"
    config.write_text(json.dumps(values))
    code, lines = _run(
        capsys, ["train", "--config", config, "--data", tmp_path / "none", "--output", tmp_path]
    )
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("lggseg: error: ") and _readable(lines[0], config)
    assert f"{key}:" in lines[0] and shown in lines[0], lines[0]
    assert str(config) in lines[0]  # the CLI reads --config through read_config_file
    assert not (tmp_path / "lggseg").exists()  # nothing was started


@pytest.mark.parametrize("values, key, shown", WRONG_TYPES, ids=lambda v: json.dumps(v))
def test_config_file_reader_names_the_file_the_key_and_the_value(tmp_path, values, key, shown):
    config = tmp_path / "run.json"
    config.write_text(json.dumps(values))
    with pytest.raises(ValueError) as raised:
        config_module.read_config_file(config)
    message = str(raised.value)
    assert "\n" not in message and message.startswith(f"{config}: {key}: ") and shown in message


@pytest.mark.parametrize(
    "text, words",
    [
        ("[1]", ["JSON object", "list"]),
        ('{"epochs": 2,}', ["not valid JSON", "line 1"]),
        ('{"epoch": 2}', ["epoch"]),
    ],
)
def test_config_file_that_is_not_an_object_of_options(tmp_path, text, words):
    config = tmp_path / "run.json"
    config.write_text(text)
    with pytest.raises(ValueError) as raised:
        config_module.read_config_file(config)
    assert str(raised.value).startswith(f"{config}: ") and all(w in str(raised.value) for w in words)


def test_values_of_the_declared_types_are_kept():
    cfg = RunConfig.from_dict({"lr": 1, "threshold": 0.4, "fold": 2, "val_fold": None, "milestones": [3, 4]})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.milestones == (3, 4) and cfg.val_fold is None
    assert RunConfig.from_dict(asdict(RunConfig())) == RunConfig()
    shipped = load_checkpoint(REPO_ROOT / "bundle" / "models" / "model.pt")[CONFIG_KEY]
    RunConfig.from_dict({k: v for k, v in shipped.items() if k in asdict(RunConfig())})


def test_run_config_built_directly_with_a_wrong_type_is_refused():
    with pytest.raises(ValueError, match='epochs: expected an integer, got "3"'):
        config_module.validate_config(RunConfig(epochs="3"))


# ------------------------------------------------------------------------ item 18: datalist entries
GOOD_ENTRY = {"image": "P1/image.nii.gz", "label": "P1/label.nii.gz", "patient": "P1", "fold": 0}
BAD_ENTRIES = [
    ({"fold": "0"}, "fold"),
    ({"fold": True}, "fold"),
    ({"fold": 1.5}, "fold"),
    ({"fold": None}, "fold"),
    ({"image": 5}, "image"),
    ({"label": ["a"]}, "label"),
    ({"patient": 7}, "patient"),
    ({"num_slices": "12"}, "num_slices"),
]


def _datalist(tmp_path: Path, training) -> Path:
    (tmp_path / "P1").mkdir(exist_ok=True)
    for name in ("image.nii.gz", "label.nii.gz"):
        (tmp_path / "P1" / name).write_bytes(b"")
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"training": training}))
    return path


@pytest.mark.parametrize("change, key", BAD_ENTRIES, ids=lambda v: json.dumps(v))
def test_datalist_entry_of_a_wrong_type(tmp_path, change, key):
    path = _datalist(tmp_path, [{**GOOD_ENTRY, **change}])
    with pytest.raises(LGGDataError) as raised:
        load_datalist(path)
    message = str(raised.value)
    assert "\n" not in message and message.startswith(f"{path}: ") and f"'{key}'" in message, message


@pytest.mark.parametrize("key", ["image", "label", "fold"])
def test_datalist_entry_without_a_required_key(tmp_path, key):
    path = _datalist(tmp_path, [GOOD_ENTRY, {k: v for k, v in GOOD_ENTRY.items() if k != key}])
    with pytest.raises(LGGDataError) as raised:
        load_datalist(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: entry 2 ") and f"'{key}'" in message and "missing" in message


@pytest.mark.parametrize("training", [{"a": 1}, [[1, 2]], ["P1"], "x"], ids=json.dumps)
def test_datalist_whose_training_list_is_not_a_list_of_entries(tmp_path, training):
    path = _datalist(tmp_path, training)
    with pytest.raises(LGGDataError) as raised:
        load_datalist(path)
    assert str(raised.value).startswith(f"{path}: ") and "\n" not in str(raised.value)


def test_datalist_of_a_wrong_type_through_the_cli(capsys, tmp_path):
    path = _datalist(tmp_path, [{**GOOD_ENTRY, "fold": "0"}])
    code, lines = _run(capsys, ["train", "--data", path, "--output", tmp_path / "runs"])
    assert code == 2 and len(lines) == 1 and str(path) in lines[0] and "'fold'" in lines[0], lines
    assert not (tmp_path / "runs").exists()


def test_good_datalist_still_loads(tmp_path):
    path = _datalist(tmp_path, [{**GOOD_ENTRY, "institution": None, "num_slices": 3}])
    (entry,) = load_datalist(path)
    assert entry["patient"] == "P1" and Path(entry["image"]).is_absolute()


# ------------------------------------------------------------------ item 9: weights with NaN or Inf
@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_weights_with_nan_or_inf_are_refused_naming_the_parameter(tmp_path, tiny_model, bad):
    ckpt = load_checkpoint(tiny_model)
    name = sorted(k for k, v in ckpt[MODEL_KEY].items() if v.is_floating_point() and v.numel() > 1)[3]
    ckpt[MODEL_KEY][name].view(-1)[1] = bad
    path = save_model_file(tmp_path / "bad" / "model.pt", ckpt)
    with pytest.raises(model_files.ModelFileError) as raised:
        load_checkpoint(path)
    assert isinstance(raised.value, ValueError)
    message = str(raised.value)
    assert message.startswith(f"{path}: ") and name in message and str(bad) in message.lower()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_cli_refuses_weights_with_nan_or_inf_in_one_line(capsys, tmp_path, tiny_model, bad):
    ckpt = load_checkpoint(tiny_model)
    name = sorted(k for k, v in ckpt[MODEL_KEY].items() if v.is_floating_point())[0]
    ckpt[MODEL_KEY][name].view(-1)[0] = bad
    path = save_model_file(tmp_path / "bad" / "model.pt", ckpt)
    argv = ["infer", "--checkpoint", path, "--input", tmp_path / "none", "--output", tmp_path / "out"]
    code, lines = _run(capsys, [*argv, "--device", "cpu"])
    assert code == 2 and len(lines) == 1 and str(path) in lines[0] and name in lines[0], lines
    assert not (tmp_path / "out").exists()


# -------------------------------------------------- item 19: weights of another network, empty files
def test_weights_of_another_network_are_summarised(capsys, tmp_path, tiny_model):
    config = load_checkpoint(tiny_model)[CONFIG_KEY]
    other = create_network({**config, "arch": "unet", "network_kwargs": {}}).state_dict()
    path = save_model_file(tmp_path / "other" / "model.pt", {MODEL_KEY: other, CONFIG_KEY: config})
    argv = ["infer", "--checkpoint", path, "--input", tmp_path / "none", "--output", tmp_path / "out"]
    code, lines = _run(capsys, [*argv, "--device", "cpu"])
    assert code == 2 and len(lines) == 1 and _readable(lines[0], path), lines
    line = lines[0]
    assert str(path) in line and "unext" in line.lower() and "missing" in line and "unexpected" in line


def test_weights_of_other_widths_name_the_first_shape_mismatch(tmp_path, tiny_model):
    config = load_checkpoint(tiny_model)[CONFIG_KEY]
    wide = create_network({**config, "network_kwargs": {"widths": [8, 16, 24, 32, 48]}}).state_dict()
    path = save_model_file(tmp_path / "wide" / "model.pt", {MODEL_KEY: wide, CONFIG_KEY: config})
    with pytest.raises(model_files.ModelFileError) as raised:
        model_files.load_model(path, device="cpu")
    message = str(raised.value)
    assert len(message.replace(str(path), "")) <= 300, message  # pytest's temporary folder not counted
    assert "shape mismatch" in message and "8x3x3x3 vs 4x3x3x3" in message, message
    assert "torch.Size" not in message


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated"], ids=["empty", "truncated"])
def test_empty_or_truncated_model_file_says_what_is_wrong(capsys, tmp_path, tiny_model, content):
    path = tiny_model.parent / "broken.pt"  # beside the good model file
    path.write_bytes(content or b"")
    if content:
        path.write_bytes(tiny_model.read_bytes()[: len(tiny_model.read_bytes()) // 2])
    with pytest.raises(model_files.ModelFileError) as raised:
        load_checkpoint(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: ") and ("empty" in message if not content else "truncated" in message)
    assert not message.rstrip().endswith((":", "()", "(EOFError)")), message


# --------------------------------------------------------------------- item 19: a device that is not here
@pytest.mark.parametrize("device", ["cuda", "cuda:7", "gpu", "cuda:x"])
def test_device_that_is_not_there_is_one_line_exit_2(monkeypatch, capsys, tmp_path, tiny_model, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = ["infer", "--checkpoint", tiny_model, "--input", tmp_path / "none", "--output", tmp_path / "out"]
    code, lines = _run(capsys, [*argv, "--device", device])
    assert code == 2 and len(lines) == 1 and device in lines[0] and _readable(lines[0], tiny_model), lines


def test_resolve_device_checks_the_gpu_index(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert config_module.resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ValueError, match="cuda:2.*2 GPUs"):
        config_module.resolve_device("cuda:2")
    assert config_module.resolve_device("cpu") == torch.device("cpu")


# ------------------------------------------------- item 20: the bundle's inference.json checks, in process
def _bundle_checks():
    return importlib.import_module("pipeline.workflows.bundle_checks")


def _bundle_values(tmp_path: Path, **changes) -> dict:
    config = json.loads((CONFIGS / "inference.json").read_text())
    cases = tmp_path / "cases"
    cases.mkdir(exist_ok=True)
    (cases / "a.nii.gz").write_bytes(b"")  # a FLAIR by name; not read by the checks
    values = {k: config[k] for k in _bundle_checks().INFERENCE_OPTIONS}
    values |= {"dataset_dir": str(cases), "output_dir": str(tmp_path / "out"), "overwrite": False}
    return {**values, "device": "cpu", **changes}


def _bundle_problems(tmp_path: Path) -> list[tuple[dict, str]]:
    return [
        ({"dataset_dir": str(tmp_path / "missing")}, "missing: not found"),
        ({"dataset_dir": str(tmp_path / "empty")}, "no case found"),
        ({"output_dir": str(tmp_path / "cases" / "out")}, "inside"),
        ({"tta": "mirror"}, "tta='mirror'"),
        ({"threshold": 1.5}, "threshold"),
        ({"threshold": "high"}, "threshold"),
        ({"device": "cuda"}, "cuda"),
    ]


def test_bundle_inference_checks_exit_2_in_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (tmp_path / "empty").mkdir()
    _bundle_checks().check_inference(**_bundle_values(tmp_path))  # a good configuration passes
    assert capsys.readouterr().err == ""
    for change, words in _bundle_problems(tmp_path):
        with pytest.raises(SystemExit) as raised:
            _bundle_checks().check_inference(**_bundle_values(tmp_path, **change))
        lines = capsys.readouterr().err.splitlines()
        assert raised.value.code == 2 and len(lines) == 1, (change, lines)
        assert lines[0].startswith("lggseg: error: ") and words in lines[0], (change, lines)
    assert not (tmp_path / "out").exists()


def test_inference_json_runs_the_checks_first():
    config = json.loads((CONFIGS / "inference.json").read_text())
    first = config["initialize"][0]
    assert first.startswith("$pipeline.workflows.bundle_checks.check_inference(")
    assert all(f"@{name}" in first for name in ("dataset_dir", "output_dir", "overwrite", "device"))
    assert all(f"@{name}" in first for name in _bundle_checks().INFERENCE_OPTIONS)


# ------------------------------------------- item 20: python -m monai.bundle run inference.json, for real
def _bundle_run(tmp_path: Path, **overrides) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(CONFIGS / "inference.json")]
    cmd += ["--meta_file", str(CONFIGS / "metadata.json"), "--logging_file", str(CONFIGS / "logging.conf")]
    for key, value in {"bundle_root": str(tmp_path / "bundle"), **overrides}.items():
        cmd += [f"--{key}", str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)


@pytest.mark.slow
def test_monai_bundle_run_reports_bad_input_in_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    # the in-process test above covers every check; these show what the monai.bundle process prints
    for change, words in [_bundle_problems(tmp_path)[i] for i in (0, 2, 5, 6)]:
        values = _bundle_values(tmp_path, **change)
        given = ("dataset_dir", "output_dir", "device", *change)
        result = _bundle_run(tmp_path, **{k: values[k] for k in given})
        errors = [line for line in result.stderr.splitlines() if "error:" in line]
        assert result.returncode == 2, (change, result.stderr[-2000:])
        assert "Traceback" not in result.stdout + result.stderr, (change, result.stderr[-2000:])
        assert len(errors) == 1 and errors[0].startswith("lggseg: error: ") and words in errors[0], errors
    assert not (tmp_path / "out").exists() and not (tmp_path / "cases" / "out").exists()


def test_bundle_refuses_weights_with_nan_in_one_line(monkeypatch, capsys, tmp_path):
    """inference.json loads its weights with MONAI's CheckpointLoader, which took NaN weights silently
    (empty masks, exit 0): the bundle's checks read them first, lggseg model files and bare state_dicts."""
    from pipeline.networks import build_network

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    weights = build_network("unext", 2, 3, 1).state_dict()
    torch.save({"model": weights, "config": {}}, tmp_path / "good.pt")
    torch.save(weights, tmp_path / "bare.pt")
    for name in ("good.pt", "bare.pt"):
        _bundle_checks().check_inference(**_bundle_values(tmp_path, ckpt_path=str(tmp_path / name)))
    first = next(k for k, v in weights.items() if v.is_floating_point())
    weights[first] = weights[first].clone().fill_(float("nan"))
    torch.save(weights, tmp_path / "nan.pt")
    (tmp_path / "junk.pt").write_text("not weights")
    cases = [("nan.pt", first), ("junk.pt", "not a readable"), ("missing.pt", "not found")]
    for name, words in cases:
        with pytest.raises(SystemExit) as raised:
            _bundle_checks().check_inference(**_bundle_values(tmp_path, ckpt_path=str(tmp_path / name)))
        lines = capsys.readouterr().err.splitlines()
        assert raised.value.code == 2 and len(lines) == 1, lines
        assert name in lines[0] and words in lines[0], lines
