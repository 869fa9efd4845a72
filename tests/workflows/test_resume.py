"""``lggseg train --resume`` and ``lggseg cv`` keep a run's own settings: an interrupted run resumes with the
epochs it was started with, an option that differs from the run's is refused before anything is written, a
finished run trains nothing and leaves its files byte-identical."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import pytest
from helpers import prepare_synthetic, tree_digests
from ignite.engine import Events

import pipeline.workflows.training as training
from pipeline.cli import main
from pipeline.config import RunConfig

TINY = ["--batch-size", "4", "--num-samples", "2", "--volume-repeats", "1", "--input-size", "32", "32"]
TINY += ["--arch", "unext", "--no-progress", "--overlay-images", "0", "--device", "cpu"]
# every relative path of a test resolves in its own folder, never in the working tree
pytestmark = pytest.mark.usefixtures("in_tmp")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return prepare_synthetic(tmp_path_factory.mktemp("resume"), seed=2)


@pytest.fixture
def finished_run(prepared: Path, tmp_path: Path) -> tuple[list[str], Path]:
    """A run folder as a finished 3-epoch run leaves it (its config and done marker), made without training:
    the command line that names it, and the folder."""
    run = tmp_path / "runs" / "lggseg" / "fold0"
    (run / "checkpoints").mkdir(parents=True)
    config = RunConfig(data=str(prepared), output=str(tmp_path / "runs"), epochs=3, lr=2e-3)
    (run / "config.json").write_text(json.dumps(asdict(config), indent=2))
    done = {"best_metric": 0.5, "best_metric_epoch": 3, "epochs": 3, "run_dir": str(run)}
    (run / "training_done.json").write_text(json.dumps(done))
    return ["train", "--data", str(prepared), "--output", str(tmp_path / "runs")], run


def test_finished_run_trains_nothing_and_keeps_its_files(finished_run, capsys, caplog):
    argv, run = finished_run
    before = tree_digests(run.parent.parent)
    caplog.set_level(logging.INFO)
    assert main([*argv, "--resume"]) == 0
    finished = [r.getMessage() for r in caplog.records if "nothing to resume" in r.getMessage()]
    assert len(finished) == 1 and "finished (3 epochs" in finished[0] and "\n" not in finished[0]
    assert not any("resolved configuration" in r.getMessage() for r in caplog.records), "nothing was built"
    assert tree_digests(run.parent.parent) == before


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--epochs", "100"], ["--epochs 100 (the run's: 3)"]),
        (["--lr", "0.01", "--scheduler", "constant"], ["--lr 0.01 (the run's: 0.002)", "--scheduler const"]),
        (["--input-size", "64", "64"], ["--input-size 64 64 (the run's: null)"]),
    ],
)
def test_resume_refuses_an_option_that_differs_from_the_runs(finished_run, capsys, extra, words):
    argv, run = finished_run
    before = tree_digests(run.parent.parent)
    assert main([*argv, "--resume", *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"lggseg: error: {run}: ")
    assert all(w in err for w in words) and "--overwrite" in err
    assert tree_digests(run.parent.parent) == before


def test_resume_accepts_the_runs_own_values_and_the_safe_options(finished_run, caplog):
    argv, run = finished_run
    before = tree_digests(run.parent.parent)
    caplog.set_level(logging.INFO)
    # the same values as the run's (spelt otherwise), and options that change nothing the run computes
    same = ["--epochs", "3", "--lr", "0.002", "--num-workers", "1", "--no-progress", "--device", "cpu"]
    assert main([*argv, "--resume", *same]) == 0
    said = " ".join(r.getMessage() for r in caplog.records)
    assert said.count("resuming with") == 1  # one line
    assert "resuming with --num-workers 1 (the run's: 0)" in said and "--progress false" in said
    assert "--epochs" not in said and "--lr" not in said
    assert tree_digests(run.parent.parent) == before


def test_resume_without_a_run_says_so(prepared, tmp_path, capsys):
    argv = ["train", "--data", str(prepared), "--output", str(tmp_path / "empty"), "--resume"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "no checkpoint_epoch=N.pt to resume from" in err and err.count("\n") == 1
    assert not (tmp_path / "empty").exists()


def test_cv_refuses_an_option_that_differs_from_a_folds_run_before_any_work(finished_run, capsys):
    argv, run = finished_run
    before = tree_digests(run.parent.parent)
    cv = ["cv", *argv[1:], "--epochs", "5", "--folds", "0", "1"]
    assert main(cv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--epochs 5 (the run's: 3)" in err
    assert tree_digests(run.parent.parent) == before and not (run.parent / "fold1").exists()


@pytest.mark.slow
@pytest.mark.usefixtures("single_thread")
def test_interrupted_run_resumes_with_its_own_epochs(prepared, tmp_path, monkeypatch, caplog):
    """``train --epochs 3`` interrupted after epoch 2; ``train --resume`` (no --epochs) finishes 3 epochs with
    the run's schedule, keeps its config.json byte for byte, and a second ``--resume`` trains nothing."""
    argv = ["train", "--data", str(prepared), "--output", str(tmp_path / "runs"), *TINY]
    real_prepare = training.prepare_run

    def interrupted_after_epoch_2(cfg):
        run = real_prepare(cfg)

        @run["trainer"].on(Events.EPOCH_COMPLETED(once=2))
        def stop(engine):  # after the epoch's checkpoint, as Ctrl-C there would
            raise KeyboardInterrupt

        return run

    monkeypatch.setattr(training, "prepare_run", interrupted_after_epoch_2)
    assert main([*argv, "--epochs", "3"]) == 130
    monkeypatch.setattr(training, "prepare_run", real_prepare)
    run = tmp_path / "runs" / "lggseg" / "fold0"
    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("checkpoint_epoch=*.pt")) == [
        "checkpoint_epoch=1.pt",
        "checkpoint_epoch=2.pt",
    ]
    config = (run / "config.json").read_bytes()

    caplog.set_level(logging.INFO)
    caplog.clear()  # the interrupted run's own epoch lines are not the resumed run's
    assert main(["train", "--data", str(prepared), "--output", str(tmp_path / "runs"), "--resume"]) == 0
    assert any("resumed from" in r.getMessage() for r in caplog.records)
    assert (run / "config.json").read_bytes() == config
    assert json.loads((run / "training_done.json").read_text())["epochs"] == 3
    assert sorted(p.name for p in ckpts.glob("checkpoint_epoch=*.pt")) == [
        "checkpoint_epoch=2.pt",
        "checkpoint_epoch=3.pt",
    ]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert [line.split(" |")[0] for line in lines] == ["epoch 3/3"]

    before = tree_digests(tmp_path / "runs")
    caplog.clear()
    assert main(["train", "--data", str(prepared), "--output", str(tmp_path / "runs"), "--resume"]) == 0
    assert any("nothing to resume" in r.getMessage() for r in caplog.records)
    assert tree_digests(tmp_path / "runs") == before
