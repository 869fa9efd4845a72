"""The outputs of `infer`, `evaluate`, `ensemble`, `export-kaggle` and `train` (issue 20): outputs named and
checked by their case, the report folder and the ensemble file guarded like every other output and checked
before the work, temporaries of killed runs removed, and a full disk reported in one line with nothing
half-written left."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import REPO_ROOT, prepare_synthetic
from helpers import tree_digests as _tree

from pipeline.cli import main
from pipeline.config import RunConfig
from pipeline.model_files import create_network
from pipeline.safety import is_temporary

TRAIN = ["--epochs", "1", "--batch-size", "4", "--num-samples", "2", "--volume-repeats", "1"]
TRAIN += ["--device", "cpu", "--no-progress", "--arch", "unext", "--cache", "none"]
ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _save_model(path: Path, seed: int = 0, **options) -> Path:
    """An untrained UNeXt model file (outputs are checked here, not their quality)."""
    cfg = RunConfig(arch="unext", **options)
    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": create_network(cfg).state_dict(), "config": asdict(cfg)}, path)
    return path


def _error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lggseg: error:")]
    assert len(err) == 1, err
    return err[0]


def _temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if is_temporary(p.name) or ".tmp" in p.name or "partial" in p.name]


def _unwritable(tmp_path: Path) -> tuple[Path, Path]:
    """A folder nobody may write (procfs for root, who writes through chmod 0555) and the path below it."""
    if os.geteuid() == 0:
        return Path("/proc"), Path("/proc") / f"lggseg-test-{os.getpid()}"
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    return locked, locked


@pytest.fixture(scope="module")
def untrained(tmp_path_factory) -> dict[str, Path]:
    """Six prepared synthetic patients and an untrained model in a run's checkpoints folder."""
    root = tmp_path_factory.mktemp("safety-outputs")
    prepared = prepare_synthetic(root)
    model = _save_model(root / "runs" / "r" / "fold0" / "checkpoints" / "best_model.pt", data=str(prepared))
    return {"root": root, "prepared": prepared, "model": model}


# ------------------------------------------------------------------------------ item 2: outputs named by case
def test_infer_names_each_output_after_its_case_not_its_file(untrained, tmp_path, capsys):
    patients = sorted(p for p in untrained["prepared"].iterdir() if p.is_dir())[:2]
    entries = []
    for folder, patient, source in zip(("x", "y"), ("p1", "p2"), patients, strict=True):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "scan.nii.gz").write_bytes((source / "image.nii.gz").read_bytes())
        entries.append({"image": str(tmp_path / folder / "scan.nii.gz"), "patient": patient, "fold": 0})
    (tmp_path / "datalist.json").write_text(json.dumps({"training": entries}))
    out = tmp_path / "out"
    (out / "scan").mkdir(parents=True)
    (out / "scan" / "scan_seg.nii.gz").write_bytes(b"the user's file")
    args = ["infer", "--checkpoint", str(untrained["model"]), "--input", str(tmp_path / "datalist.json")]
    assert main([*args, "--output", str(out), "--device", "cpu"]) == 0
    assert "2 predictions written" in capsys.readouterr().out
    assert (out / "scan" / "scan_seg.nii.gz").read_bytes() == b"the user's file"
    assert (out / "p1" / "p1_seg.nii.gz").is_file() and (out / "p2" / "p2_seg.nii.gz").is_file()
    assert not _temporaries(out)


# ------------------------------------------------------------------------ item 3: evaluate's output guarded
def _evaluate(untrained, *extra: object) -> list[str]:
    base = ["evaluate", "--checkpoint", str(untrained["model"]), "--data", str(untrained["prepared"])]
    return [*base, "--device", "cpu", *map(str, extra)]


def test_evaluate_never_replaces_the_users_files(untrained, tmp_path, capsys):
    out = tmp_path / "eval"
    pid = sorted(p.name for p in untrained["prepared"].iterdir() if p.is_dir())[0]
    (out / "predictions" / pid).mkdir(parents=True)
    for name in ("metrics.json", "metrics_per_patient.csv", f"predictions/{pid}/{pid}_seg.nii.gz"):
        (out / name).write_text("the user's " + name)
    before = _tree(out)
    assert main(_evaluate(untrained, "--output", out)) == 2
    assert "lggseg did not write" in _error_line(capsys)
    every = ["--overwrite", "--save-predictions", "--folds", 0, 1, 2]
    assert main(_evaluate(untrained, "--output", out, *every)) == 2
    line = _error_line(capsys)
    assert "never replaced" in line and str(out) in line
    assert _tree(out) == before and not list(tmp_path.glob(".*staging*"))


def test_evaluate_overwrite_replaces_only_its_own_report(untrained, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(_evaluate(untrained, "--output", out, "--save-predictions")) == 0
    first = _tree(out)
    assert "metrics.json" in first and any(k.startswith("predictions/") for k in first)
    (out / "my_notes.txt").write_text("mine")
    assert main(_evaluate(untrained, "--output", out)) == 2
    assert "already holds" in _error_line(capsys)
    assert main(_evaluate(untrained, "--output", out, "--overwrite")) == 0
    assert (out / "my_notes.txt").read_text() == "mine"
    assert not any(k.startswith("predictions/") for k in _tree(out)), "the earlier run's predictions removed"


def test_evaluate_refuses_the_data_folder_and_a_default_inside_the_repository(untrained, tmp_path, capsys):
    before = _tree(untrained["prepared"])
    assert main(_evaluate(untrained, "--output", untrained["prepared"])) == 2
    assert "input" in _error_line(capsys)
    assert main(_evaluate(untrained, "--output", untrained["prepared"] / untrained["model"].name)) == 2
    _error_line(capsys)
    assert _tree(untrained["prepared"]) == before
    # a model outside a run's checkpoints folder (the shipped bundle/models/model.pt) has no default report
    # folder: it would be bundle/evaluation inside the repository
    loose = _save_model(tmp_path / "models" / "model.pt")
    argv = ["evaluate", "--checkpoint", str(loose), "--data", str(untrained["prepared"]), "--device", "cpu"]
    assert main(argv) == 2
    assert "--output" in _error_line(capsys) and not (tmp_path / "evaluation").exists()
    shipped = ["evaluate", "--data", str(untrained["prepared"]), "--device", "cpu"]
    assert main(shipped) == 2
    assert "--output" in _error_line(capsys) and not (REPO_ROOT / "bundle" / "evaluation").exists()


# -------------------------------------------------------------------- items 5 and 11: the ensemble's file
def test_ensemble_never_replaces_an_input_or_a_file_it_did_not_write(tmp_path, capsys):
    a, b = _save_model(tmp_path / "a.pt"), _save_model(tmp_path / "b.pt", seed=1)
    (tmp_path / "notes.txt").write_text("mine")
    before = _tree(tmp_path)
    for output in (a, tmp_path / "notes.txt"):
        assert main(["ensemble", "--models", str(a), str(b), "--output", str(output), "--overwrite"]) == 2
        assert str(output) in _error_line(capsys)
    assert _tree(tmp_path) == before
    ensemble = tmp_path / "ensemble.pt"
    assert main(["ensemble", "--models", str(a), str(b), "--output", str(ensemble)]) == 0
    assert main(["ensemble", "--models", str(a), str(b), "--output", str(ensemble)]) == 2
    assert "--overwrite" in _error_line(capsys)
    assert main(["ensemble", "--models", str(b), str(a), "--output", str(ensemble), "--overwrite"]) == 0
    assert not _temporaries(tmp_path)


def test_ensemble_members_must_agree_on_their_input(tmp_path, capsys):
    native = _save_model(tmp_path / "native.pt")
    small = _save_model(tmp_path / "small.pt", input_size=(32, 32))
    assert main(["ensemble", "--models", str(native), str(small), "--output", str(tmp_path / "e.pt")]) == 2
    line = _error_line(capsys)
    assert str(native) in line and str(small) in line and "input_size" in line
    assert not (tmp_path / "e.pt").exists()


# ---------------------------------------------------------------------- item 12: checked before the work
def test_unwritable_outputs_are_refused_before_the_work(untrained, tmp_path, capsys, monkeypatch):
    import pipeline.workflows.prediction as prediction

    def no_work(*args, **kwargs):
        raise AssertionError("the evaluation ran before the output was checked")

    monkeypatch.setattr(prediction, "run_per_case", no_work)
    locked, below = _unwritable(tmp_path)
    try:
        assert main(_evaluate(untrained, "--output", below / "eval")) == 2
        assert str(locked) in _error_line(capsys)
        a, b = _save_model(tmp_path / "a.pt"), _save_model(tmp_path / "b.pt", seed=1)
        assert main(["ensemble", "--models", str(a), str(b), "--output", str(below / "e.pt")]) == 2
        assert str(locked) in _error_line(capsys)
    finally:
        if locked != Path("/proc"):
            locked.chmod(0o755)


# ------------------------------------------------------------------ item 13: temporaries of killed runs
def _killed_writer(target: Path, code: str = "") -> None:
    """A process that starts writing ``target`` the way lggseg does, then is killed with SIGKILL."""
    script = (
        "import os, signal, sys\n"
        "from pipeline.safety import atomic_path\n"
        f"{code}\n"
        "tmp = atomic_path(sys.argv[1]).__enter__()\n"
        "tmp.write_bytes(b'half' * 1000)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(target)], cwd=REPO_ROOT, check=False)
    assert done.returncode == -signal.SIGKILL


def _killed_prediction_writer(out: Path, case: str) -> None:
    """A process killed while MONAI's SaveImaged writes ``case``'s prediction (before it is renamed)."""
    script = (
        "import os, signal, sys, torch\n"
        "from monai.data import MetaTensor\n"
        "from pipeline.inference.writer import prediction_writer\n"
        "pred = MetaTensor(torch.zeros(1, 4, 4, 3), meta={'filename_or_obj': 'x/scan.nii.gz'})\n"
        "prediction_writer(sys.argv[1], publish=False)({'pred': pred, 'case': sys.argv[2]})\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(out), case], cwd=REPO_ROOT, check=False)
    assert done.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_temporaries_of_killed_runs_are_removed_by_the_next_run(untrained, tmp_path, capsys):
    from pipeline.safety import temporary_name

    # ensemble: the hidden temporary model file of a killed run
    a, b = _save_model(tmp_path / "a.pt"), _save_model(tmp_path / "b.pt", seed=1)
    _killed_writer(tmp_path / "e.pt")
    live = temporary_name(tmp_path / "other.pt")  # a temporary of a command still running (this process)
    live.write_bytes(b"in progress")
    assert len(_temporaries(tmp_path)) == 2
    assert main(["ensemble", "--models", str(a), str(b), "--output", str(tmp_path / "x.pt")]) == 0
    assert _temporaries(tmp_path) == [live]
    # export-kaggle: hidden temporary masks
    masks = tmp_path / "masks"
    masks.mkdir()
    _killed_writer(masks / "P_3_mask.tif")
    prepared = untrained["prepared"]
    label = str(prepared / sorted(p.name for p in prepared.iterdir() if p.is_dir())[0])
    argv = ["export-kaggle", "--label", f"{label}/label.nii.gz", "--output", str(masks), "--patient", "P"]
    assert main(argv) == 0
    assert not _temporaries(masks)
    # infer: the partial prediction of a case that is not segmented again, and a killed export's mask
    out = tmp_path / "out"
    _killed_prediction_writer(out, "old_case")
    (out / "old_case" / "kaggle_masks").mkdir()
    _killed_writer(out / "old_case" / "kaggle_masks" / "old_case_1_mask.tif")
    assert len(_temporaries(out)) == 2
    argv = ["infer", "--checkpoint", str(untrained["model"]), "--input", f"{label}/image.nii.gz"]
    assert main([*argv, "--output", str(out), "--device", "cpu"]) == 0
    assert not _temporaries(out)


# ----------------------------------------------------------------------------------- item 15: disk full
def _fail_writing(monkeypatch, module, name: str, when=lambda *a, **k: True):
    original = getattr(module, name)

    def full(*args, **kwargs):
        if when(*args, **kwargs):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, full)


def test_disk_full_in_infer_kaggle_masks(untrained, tmp_path, capsys, monkeypatch):
    import pipeline.ingestion.export as export

    _fail_writing(monkeypatch, export.tifffile, "imwrite", lambda path, *a, **k: "_5_mask" in str(path))
    out = tmp_path / "out"
    args = ["infer", "--checkpoint", str(untrained["model"]), "--input", str(untrained["prepared"])]
    assert main([*args, "--output", str(out), "--kaggle-masks", "--device", "cpu"]) == 1
    line = _error_line(capsys)
    assert "no space left" in line and str(out) in line
    assert not list(out.rglob("*_seg.nii.gz")), "the case that failed keeps no prediction"
    for manifest in out.rglob(".lggseg-manifest.json"):
        listed = json.loads(manifest.read_text())["files"]
        assert all((manifest.parent / f).is_file() for f in listed), manifest
    assert not _temporaries(tmp_path)


def test_disk_full_in_evaluate_leaves_no_partial_report(untrained, tmp_path, capsys, monkeypatch):
    _fail_writing(monkeypatch, Path, "write_bytes", lambda self, data: "metrics.json" in self.name)
    out = tmp_path / "eval"
    assert main(_evaluate(untrained, "--output", out)) == 1
    line = _error_line(capsys)
    assert "no space left" in line and "metrics.json" in line
    assert not out.exists() and os.listdir(tmp_path) == []


@pytest.mark.parametrize("torch_says", ["ENOSPC", "inline_container"])
def test_disk_full_in_ensemble(tmp_path, capsys, monkeypatch, torch_says):
    import shutil

    a, b = _save_model(tmp_path / "a.pt"), _save_model(tmp_path / "b.pt", seed=1)
    before = _tree(tmp_path)
    if torch_says == "ENOSPC":
        _fail_writing(monkeypatch, torch, "save")
    else:  # what torch.save says when the disk fills up while it writes its zip container

        def full(*args, **kwargs):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 2048 vs 1984")

        monkeypatch.setattr(torch, "save", full)
        empty = SimpleNamespace(total=2**30, used=2**30, free=0)
        monkeypatch.setattr(shutil, "disk_usage", lambda path: empty)
    assert main(["ensemble", "--models", str(a), str(b), "--output", str(tmp_path / "e.pt")]) == 1
    line = _error_line(capsys)
    assert "no space left" in line and str(tmp_path / "e.pt") in line and "inline_container" not in line
    assert _tree(tmp_path) == before


@pytest.mark.slow
def test_disk_full_in_train(untrained, tmp_path, capsys, monkeypatch):
    _fail_writing(monkeypatch, torch, "save")
    runs = tmp_path / "runs"
    assert main(["train", "--data", str(untrained["prepared"]), "--output", str(runs), *TRAIN]) == 1
    line = _error_line(capsys)
    assert "no space left" in line and "inline_container" not in line
    assert not list(runs.rglob("*.pt")) and not _temporaries(runs)


def test_cv_replaces_its_own_fold_reports_when_run_again(untrained, tmp_path):
    from pipeline.workflows.cross_validation import evaluate_folds

    model = untrained["model"]
    report = model.parent.parent / "evaluation"
    for _ in range(2):  # cv evaluates every fold again when it runs again (finished folds are not retrained)
        evaluate_folds({0: model}, tmp_path / "cv", overrides={"device": "cpu", "progress": False})
        assert (report / "metrics.json").is_file() and (tmp_path / "cv" / "metrics.json").is_file()


def test_pooled_cv_report_never_replaces_a_users_file_and_says_so_before_evaluating(tmp_path):
    from pipeline.workflows.cross_validation import evaluate_folds

    pooled = tmp_path / "cv"
    pooled.mkdir()
    (pooled / "metrics.json").write_text("the user's")
    missing = tmp_path / "fold0" / "checkpoints" / "best_model.pt"  # never read: the clash is said first
    with pytest.raises(ValueError, match="did not write") as raised:
        evaluate_folds({0: missing}, pooled, overrides={"device": "cpu"})
    assert str(pooled) in str(raised.value) and "\n" not in str(raised.value)
    assert (pooled / "metrics.json").read_text() == "the user's"


def test_disk_full_in_prepare_blames_the_disk_not_the_patients(tmp_path, monkeypatch, capsys):
    """A full disk while prepare writes a patient is one line for the run, no patient listed as bad, and
    the output folder is left as it was (the staging folder goes with the error)."""
    import errno

    from pipeline.cli import main
    from pipeline.ingestion import prepare as prepare_module
    from pipeline.ingestion.synthetic import write_synthetic_kaggle

    write_synthetic_kaggle(tmp_path / "kaggle_3m", num_patients=3, seed=0, size=32, slices=(4, 5))

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "x.nii.gz"))

    monkeypatch.setattr(prepare_module, "write_patient_nifti", full)
    code = main(
        [
            "prepare",
            "--input",
            str(tmp_path / "kaggle_3m"),
            "--output",
            str(tmp_path / "out"),
            "--workers",
            "1",
            "--folds",
            "2",
        ]
    )
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lggseg")]
    assert code == 1 and len(lines) == 1, lines
    assert "no space left" in lines[0] and "patient" not in lines[0] and "NoSpaceLeftError" not in lines[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_innermost_error_of_a_cyclic_chain_ends():
    from pipeline.engines import innermost_error

    a, b = ValueError("a"), ValueError("b")
    a.__cause__, b.__cause__ = b, a
    assert innermost_error(a) is b
