"""AtomicCheckpointSaver on Ignite's public Checkpoint: the best model under a fixed name, two epoch files,
atomic writes, and its state carried into a resumed run (on a bare Ignite engine, no training)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events

from pipeline.safety import is_temporary, temporary_name
from pipeline.training.handlers import AtomicCheckpointSaver


def _engine(scores: list[float]) -> Engine:
    """An engine whose epoch ``n`` reports ``scores[n - 1]`` as its key metric ``dice``."""
    engine = Engine(lambda e, batch: None)
    engine.state.key_metric_name = "dice"  # what MONAI's workflows set

    @engine.on(Events.EPOCH_COMPLETED)
    def _metric(e: Engine) -> None:
        e.state.metrics["dice"] = scores[e.state.epoch - 1]

    return engine


def _savers(folder: Path, net: torch.nn.Module) -> tuple[AtomicCheckpointSaver, AtomicCheckpointSaver]:
    best = AtomicCheckpointSaver(
        save_dir=str(folder),
        save_dict={"model": net},
        save_key_metric=True,
        key_metric_filename="best_model.pt",
    )
    epochs = AtomicCheckpointSaver(
        save_dir=str(folder),
        save_dict={"model": net, "extra": torch.nn.Linear(1, 1)},
        save_interval=1,
        n_saved=2,
    )
    return best, epochs


def _mark_weights(engine: Engine, net: torch.nn.Module) -> None:
    with torch.no_grad():
        net.weight.fill_(engine.state.epoch)  # tells which epoch a saved model comes from


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_best_model_and_two_epoch_files_then_resume(tmp_path):
    net = torch.nn.Linear(2, 1)
    best, epochs = _savers(tmp_path, net)
    engine = _engine([0.2, 0.5, 0.3])
    best.attach(engine)
    epochs.attach(engine)
    engine.add_event_handler(Events.EPOCH_STARTED, _mark_weights, net)
    engine.run([0], max_epochs=3)
    assert _files(tmp_path) == {"best_model.pt", "checkpoint_epoch=2.pt", "checkpoint_epoch=3.pt"}
    assert torch.load(tmp_path / "best_model.pt")["weight"].eq(2).all()  # epoch 2 scored best
    assert set(torch.load(tmp_path / "checkpoint_epoch=3.pt")) == {"model", "extra"}
    state = {"best": best.state_dict(), "epochs": epochs.state_dict()}
    assert state["best"]["key_metric"]["_saved"] == [(0.5, "best_model.pt")]
    assert [f for _, f in state["epochs"]["interval"]["_saved"]] == [
        "checkpoint_epoch=2.pt",
        "checkpoint_epoch=3.pt",
    ]

    # a resumed run with new savers: a worse score keeps the best model, old epoch files go in turn
    best2, epochs2 = _savers(tmp_path, net)
    best2.load_state_dict(state["best"])
    epochs2.load_state_dict(
        {"interval": {"_saved": [(2, "checkpoint_epoch=2.pt"), (3, "checkpoint_epoch=3.pt")]}}
    )
    engine2 = _engine([0.2, 0.5, 0.3, 0.4, 0.6])
    best2.attach(engine2)
    epochs2.attach(engine2)
    engine2.add_event_handler(Events.EPOCH_STARTED, _mark_weights, net)
    engine2.load_state_dict({"epoch_length": 1, "iteration": 3, "max_epochs": 5})
    engine2.run([0])
    assert _files(tmp_path) == {"best_model.pt", "checkpoint_epoch=4.pt", "checkpoint_epoch=5.pt"}
    assert torch.load(tmp_path / "best_model.pt")["weight"].eq(5).all()  # 0.4 < 0.5 kept epoch 2; 0.6 won


def test_a_failed_write_leaves_the_files_there_intact(tmp_path, monkeypatch):
    net = torch.nn.Linear(2, 1)
    best, epochs = _savers(tmp_path, net)
    engine = _engine([0.1, 0.9])
    best.attach(engine)
    epochs.attach(engine)
    engine.run([0], max_epochs=1)
    before = {name: (tmp_path / name).read_bytes() for name in _files(tmp_path)}

    def broken_save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half a model")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        engine.run([0], max_epochs=2)
    monkeypatch.undo()
    assert {name: (tmp_path / name).read_bytes() for name in _files(tmp_path)} == before  # no partial file
    assert torch.load(tmp_path / "best_model.pt")["weight"].shape == (1, 2)


def test_temporaries_name_their_process_and_a_killed_runs_are_removed(tmp_path, monkeypatch):
    """A run killed with ``kill -9`` while saving left Ignite's ``tmpXXXXXXXX`` (18 MB) for good; the
    temporary now names its process, and the next saver in the folder removes those of dead processes."""
    stale = temporary_name(tmp_path / "checkpoint_epoch=3.pt")
    stale = stale.with_name(re.sub(r"\.tmp-\d+-\d+-", ".tmp-999999999-0-", stale.name))  # no such process
    stale.write_bytes(b"half a model")
    running = temporary_name(tmp_path / "best_model.pt")  # this process: still writing
    running.write_bytes(b"being written")
    users = [tmp_path / "tmp1a2b3c4d", tmp_path / "notes.txt"]
    for path in users:
        path.write_text("the user's")
    net = torch.nn.Linear(2, 1)
    best, epochs = _savers(tmp_path, net)
    assert not stale.exists() and running.exists() and all(p.read_text() == "the user's" for p in users)

    written = []
    real_save = torch.save

    def recording_save(obj, f, *args, **kwargs):
        written.append(Path(f))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", recording_save)
    engine = _engine([0.3])
    best.attach(engine)
    epochs.attach(engine)
    engine.run([0], max_epochs=1)
    assert len(written) == 2 and all(is_temporary(p.name) and p.parent == tmp_path for p in written)
    assert not any(p.exists() for p in written)  # renamed into place
    assert {"best_model.pt", "checkpoint_epoch=1.pt"} <= _files(tmp_path)


def test_bad_arguments():
    with pytest.raises(ValueError, match="key_metric_n_saved"):
        AtomicCheckpointSaver(
            ".",
            {"m": torch.nn.Linear(1, 1)},
            save_key_metric=True,
            key_metric_filename="a.pt",
            key_metric_n_saved=2,
        )
    with pytest.raises(ValueError, match="save_dict"):
        AtomicCheckpointSaver(".", {})


def test_resumes_a_best_model_recorded_under_ignites_own_name(tmp_path):
    """Runs saved before recorded the best model under Ignite's name; the fixed file is replaced anyway."""
    net = torch.nn.Linear(2, 1)
    best, _ = _savers(tmp_path, net)
    best.load_state_dict({"key_metric": {"_saved": [(0.5, "checkpoint_key_metric=0.5000.pt")]}})
    engine = _engine([0.4, 0.7])
    best.attach(engine)
    engine.add_event_handler(Events.EPOCH_STARTED, _mark_weights, net)
    engine.run([0], max_epochs=1)
    assert not (tmp_path / "best_model.pt").exists()  # 0.4 is not better than the recorded 0.5
    engine.run([0], max_epochs=2)
    assert torch.load(tmp_path / "best_model.pt")["weight"].eq(2).all()
    assert best.state_dict() == {"key_metric": {"_saved": [(0.7, "best_model.pt")]}}


def test_final_model_is_saved_when_the_run_completes_and_never_after_an_exception(tmp_path):
    """``save_final`` (what ``train_on_all`` keeps): the last epoch's weights, once; a run that stops on an
    exception leaves no such file (MONAI's ``save_final`` would save one, as if finished)."""
    net = torch.nn.Linear(2, 1)
    final = AtomicCheckpointSaver(tmp_path, {"model": net}, save_final=True, final_filename="model.pt")
    engine = _engine([0.9, 0.1, 0.2])  # the scores do not matter: the last epoch is kept
    final.attach(engine)
    engine.add_event_handler(Events.EPOCH_STARTED, _mark_weights, net)
    engine.run([0], max_epochs=3)
    assert _files(tmp_path) == {"model.pt"}
    assert torch.load(tmp_path / "model.pt")["weight"].eq(3).all()

    broken_dir = tmp_path / "broken"
    broken = AtomicCheckpointSaver(broken_dir, {"model": net}, save_final=True, final_filename="model.pt")
    failing = Engine(lambda e, batch: (_ for _ in ()).throw(RuntimeError("interrupted")))
    broken.attach(failing)
    with pytest.raises(RuntimeError, match="interrupted"):
        failing.run([0], max_epochs=2)
    assert not (broken_dir / "model.pt").exists()
