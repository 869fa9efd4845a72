"""``lggseg train`` / ``evaluate`` / ``infer``: options, exit codes, and resume after ``kill -9``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import prepare_synthetic

from pipeline.cli import main
from pipeline.model_files import load_checkpoint

TINY = [
    "--epochs",
    "1",
    "--batch-size",
    "8",
    "--num-samples",
    "8",
    "--input-size",
    "32",
    "32",
    "--arch",
    "unext",
    "--no-progress",
    "--overlay-images",
    "0",
]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    return prepare_synthetic(root, seed=1)


@pytest.mark.slow
def test_train_evaluate_infer_commands(prepared, tmp_path, capsys):
    config = tmp_path / "options.json"
    config.write_text(json.dumps({"lr": 0.002, "loss": "bce_dice", "optimizer": "sgd", "nesterov": True}))
    code = main(
        [
            "train",
            "--data",
            str(prepared),
            "--output",
            str(tmp_path),
            "--name",
            "cli",
            "--config",
            str(config),
            "--lr",
            "0.005",
            *TINY,
        ]
    )
    assert code == 0
    run = tmp_path / "cli" / "fold0"
    saved = json.loads((run / "config.json").read_text())
    assert saved["lr"] == 0.005  # the command line wins over --config
    assert saved["loss"] == "bce_dice" and saved["optimizer"] == "sgd" and saved["nesterov"] is True
    assert saved["input_size"] == [32, 32]
    best = run / "checkpoints" / "best_model.pt"
    assert (
        main(["evaluate", "--checkpoint", str(best), "--output", str(tmp_path / "eval"), "--min-size", "5"])
        == 0
    )
    assert "patients: Dice mean" in capsys.readouterr().out
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert (
        main(
            ["infer", "--checkpoint", str(best), "--input", str(prepared), "--output", str(tmp_path / "pred")]
        )
        == 0
    )
    assert len(list((tmp_path / "pred").glob("*/*_seg.nii.gz"))) == 6


@pytest.mark.parametrize(
    "argv, message",
    [
        (["evaluate", "--checkpoint", "missing.pt"], "checkpoint not found"),
        (["infer", "--checkpoint", "missing.pt", "--input", "x", "--output", "y"], "checkpoint not found"),
        (
            ["train", "--data", "{data}", "--input-channels", "9", *TINY],
            "input_channels=9, but the data gives 3",
        ),
        (["train", "--data", "{tmp}/nowhere", *TINY], "does not exist"),
        (["train", "--data", "{data}", "--resume", "--output", "{tmp}", *TINY], "no checkpoint_epoch"),
    ],
)
def test_bad_input_exits_with_a_clear_message(prepared, tmp_path, monkeypatch, capsys, argv, message):
    # relative paths (the default --output runs) resolve in the test's own folder, never the working tree's
    monkeypatch.chdir(tmp_path)
    argv = [a.format(data=prepared, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists(), "nothing written"


@pytest.mark.parametrize(
    "argv, problem",
    [
        (["--flair", "{tmp}/missing_fla.nii.gz"], "{tmp}/missing_fla.nii.gz: not found (--flair)"),
        (["--flair", "{flair}", "--t1", "{tmp}/no_t1.nii.gz"], "{tmp}/no_t1.nii.gz: not found (--t1)"),
        (["--flair", "{flair}", "--t1c", "{tmp}/no_t1c"], "{tmp}/no_t1c: not found (--t1c)"),
    ],
)
def test_infer_refuses_a_missing_file_before_any_work(tmp_path, monkeypatch, capsys, argv, problem):
    """A missing --flair, --t1 or --t1c is one line and exit code 2 before the model is read: no other case
    is segmented, nothing is written (no failures.json)."""
    monkeypatch.chdir(tmp_path)
    flair = tmp_path / "case_fla.nii.gz"
    flair.write_bytes(b"not read: the check comes first")
    started = []
    monkeypatch.setattr("pipeline.workflows.prediction.infer", lambda *a, **k: started.append(a))
    argv = [a.format(tmp=tmp_path, flair=flair) for a in argv]
    assert main(["infer", *argv, "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    line = f"lggseg: error: {problem.format(tmp=tmp_path)}; give an existing file or folder"
    assert err.splitlines() == [line]
    assert not (tmp_path / "out").exists() and not started


def test_help_lists_the_unext_config_keys(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for key in (
        "--epochs",
        "--batch-size",
        "--arch",
        "--deep-supervision",
        "--input-channels",
        "--num-classes",
        "--input-size",
        "--loss",
        "--optimizer",
        "--lr",
        "--momentum",
        "--weight-decay",
        "--nesterov",
        "--scheduler",
        "--min-lr",
        "--factor",
        "--patience",
        "--milestones",
        "--gamma",
        "--early-stopping",
        "--num-workers",
        "--fold",
        "--resume",
    ):
        assert key in out


def _train_cmd(prepared: Path, output: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pipeline.cli",
        "train",
        "--data",
        str(prepared),
        "--output",
        str(output),
        *TINY,
        "--epochs",  # the later value wins
        "3",
        "--volume-repeats",
        "6",
        *extra,
    ]


@pytest.mark.slow
def test_kill_9_then_resume_ends_with_the_same_weights(prepared, tmp_path):
    """SIGKILL during epoch 2 (after the epoch-1 checkpoint), ``--resume``, compare with a straight run."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = subprocess.run(_train_cmd(prepared, tmp_path / "a"), env=env, capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr[-2000:]

    ckpts = tmp_path / "b" / "lggseg" / "fold0" / "checkpoints"
    proc = subprocess.Popen(
        _train_cmd(prepared, tmp_path / "b"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while (
        not (ckpts / "checkpoint_epoch=1.pt").exists() and proc.poll() is None and time.monotonic() < deadline
    ):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (ckpts / "checkpoint_epoch=3.pt").exists()  # it really was interrupted

    resumed = subprocess.run(
        [*_train_cmd(prepared, tmp_path / "b"), "--resume"], env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stderr
    a = load_checkpoint(tmp_path / "a" / "lggseg" / "fold0" / "checkpoints" / "checkpoint_epoch=3.pt")[
        "model"
    ]
    b = load_checkpoint(ckpts / "checkpoint_epoch=3.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the checkpoints written before the interruption count towards the two kept
    assert sorted(p.name for p in ckpts.glob("checkpoint_epoch=*.pt")) == [
        "checkpoint_epoch=2.pt",
        "checkpoint_epoch=3.pt",
    ]
