"""Fault injection for `train`, `evaluate` and `infer`: exit codes, one-line messages, files left intact."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers import tree_digests as _tree

from pipeline.cli import main
from pipeline.engines import build_dataset
from pipeline.ingestion.prepare import prepare_dataset
from pipeline.ingestion.synthetic import write_synthetic_kaggle
from pipeline.transforms import build_transforms

TRAIN = ["--epochs", "1", "--batch-size", "4", "--num-samples", "2", "--volume-repeats", "1"]
TRAIN += ["--device", "cpu", "--no-progress", "--arch", "unext"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """Synthetic raw patients, their prepared volumes and one trained model."""
    root = tmp_path_factory.mktemp("safety-runs")
    write_synthetic_kaggle(root / "kaggle_3m", num_patients=6, seed=0, size=64, slices=(10, 12))
    prepare_dataset(root / "kaggle_3m", root / "prepared", num_folds=3, seed=0, workers=1)
    assert main(["train", "--data", str(root / "prepared"), "--output", str(root / "runs"), *TRAIN]) == 0
    model = root / "runs" / "lggseg" / "fold0" / "checkpoints" / "best_model.pt"
    return {"root": root, "raw": root / "kaggle_3m", "prepared": root / "prepared", "model": model}


def test_train_refuses_a_folder_that_holds_a_run(trained, capsys):
    runs = trained["root"] / "runs"
    before = _tree(runs)
    assert main(["train", "--data", str(trained["prepared"]), "--output", str(runs), *TRAIN]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds a training run" in err and "--resume" in err
    assert _tree(runs) == before
    both = ["--resume", "--overwrite"]
    assert main(["train", "--data", str(trained["prepared"]), "--output", str(runs), *TRAIN, *both]) == 2
    assert "exclude each other" in capsys.readouterr().err and _tree(runs) == before


@pytest.mark.slow
def test_train_overwrite_removes_only_that_runs_files(trained, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(trained["root"] / "runs", runs)
    fold = runs / "lggseg" / "fold0"
    (fold / "my_notes.txt").write_text("mine")
    (fold / "checkpoints" / "my_model.pt").write_bytes(b"mine")
    old_best = (fold / "checkpoints" / "best_model.pt").read_bytes()
    args = [
        "train",
        "--data",
        str(trained["prepared"]),
        "--output",
        str(runs),
        *TRAIN,
        "--overwrite",
        "--seed",
        "3",
    ]
    assert main(args) == 0
    assert (fold / "my_notes.txt").read_text() == "mine"
    assert (fold / "checkpoints" / "my_model.pt").read_bytes() == b"mine"
    assert (fold / "checkpoints" / "best_model.pt").read_bytes() != old_best
    assert json.loads((fold / "config.json").read_text())["seed"] == 3


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--fold", "1", "--val-fold", "1"], "equals fold=1"),
        (["--fold", "7"], "empty"),
        (["--input-size", "64"], "argument --input-size: expected 2 arguments"),
        (["--threshold", "1.5"], "threshold must be in (0, 1)"),
        (["--arch", "nope"], "invalid choice"),
        (["--spatial-dims", "3", "--arch", "unet3d", "--input-size", "64", "64"], "input_size applies to 2D"),
    ],
)
def test_train_checks_options_before_any_work(trained, tmp_path, capsys, extra, message):
    runs = tmp_path / "runs"
    argv = ["train", "--data", str(trained["prepared"]), "--output", str(runs), *TRAIN, *extra]
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own usage errors
        code = exit_.code
    assert code == 2 and message in capsys.readouterr().err
    assert not runs.exists() or not any(runs.rglob("*.pt"))


def test_train_refuses_an_output_inside_the_data(trained, capsys):
    prepared = trained["prepared"]
    before = _tree(prepared)
    args = ["train", "--data", str(prepared), "--output", str(prepared / "runs"), *TRAIN]
    assert main(args) == 2
    assert "inside the input" in capsys.readouterr().err
    assert _tree(prepared) == before


def test_infer_refuses_two_cases_with_one_name(trained, tmp_path, capsys):
    for side in ("a", "b"):
        (tmp_path / side).mkdir()
        patient = sorted(p for p in trained["prepared"].iterdir() if p.is_dir())[0]
        shutil.copy(patient / "image.nii.gz", tmp_path / side / "patient.nii.gz")
    args = ["infer", "--checkpoint", str(trained["model"]), "--output", str(tmp_path / "out")]
    assert (
        main(
            [*args, "--input", str(tmp_path / "a" / "patient.nii.gz"), str(tmp_path / "b" / "patient.nii.gz")]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "'patient'" in err and str(tmp_path / "a") in err and not (tmp_path / "out").exists()


def test_infer_goes_on_after_an_unreadable_case(trained, tmp_path, capsys):
    raw = tmp_path / "kaggle_3m"
    shutil.copytree(trained["raw"], raw)
    victim = sorted(p for p in raw.iterdir() if p.is_dir())[1]
    slice_file = sorted(victim.glob("*[0-9].tif"))[0]
    slice_file.write_bytes(slice_file.read_bytes()[:100])  # truncated TIFF
    before = _tree(raw)
    out = tmp_path / "out"
    args = ["infer", "--checkpoint", str(trained["model"]), "--input", str(raw), "--output", str(out)]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "1 of 6 cases failed" in err and victim.name in err
    written = sorted(p.parent.name for p in out.glob("*/*_seg.nii.gz"))
    assert len(written) == 5 and victim.name not in written
    assert [f["case"] for f in json.loads((out / "failures.json").read_text())] == [victim.name]
    assert _tree(raw) == before
    assert not list(out.rglob("*partial*"))
    # existing predictions are replaced only with --overwrite; files of the user's are never touched
    (out / "my_notes.txt").write_text("mine")
    kept = _tree(out)
    good = [p for p in sorted(raw.iterdir()) if p.is_dir() and p != victim]
    again = ["infer", "--checkpoint", str(trained["model"]), "--input", str(good[0]), "--output", str(out)]
    assert main(again) == 2 and "exists" in capsys.readouterr().err and _tree(out) == kept
    assert main([*again, "--overwrite"]) == 0
    assert (out / "my_notes.txt").read_text() == "mine"


def test_infer_refuses_an_output_inside_the_input(trained, capsys):
    before = _tree(trained["prepared"])
    args = ["infer", "--checkpoint", str(trained["model"]), "--input", str(trained["prepared"])]
    assert main([*args, "--output", str(trained["prepared"] / "predictions")]) == 2
    assert "inside the input" in capsys.readouterr().err and _tree(trained["prepared"]) == before


def test_evaluate_reports_the_others_when_one_patient_is_broken(trained, tmp_path, capsys):
    prepared = tmp_path / "prepared"
    shutil.copytree(trained["prepared"], prepared)
    test_patients = [e["patient"] for e in json.loads((prepared / "datalist.json").read_text())["training"]]
    test_patients = [p for p in test_patients if (prepared / p).is_dir()]
    datalist = json.loads((prepared / "datalist.json").read_text())
    fold0 = [e["patient"] for e in datalist["training"] if e["fold"] == 0]
    (prepared / fold0[0] / "image.nii.gz").write_bytes(b"broken")
    out = tmp_path / "eval"
    args = ["evaluate", "--checkpoint", str(trained["model"]), "--data", str(prepared), "--output", str(out)]
    assert main(args) == 1
    assert fold0[0] in capsys.readouterr().err
    report = json.loads((out / "metrics.json").read_text())
    assert {p["patient_id"] for p in report["patients"]} == set(fold0[1:])
    assert [f["case"] for f in json.loads((out / "failures.json").read_text())] == [fold0[0]]


def test_disk_cache_follows_the_files_content(trained, tmp_path):
    prepared = tmp_path / "prepared"
    shutil.copytree(trained["prepared"], prepared)
    patient = sorted(p for p in prepared.iterdir() if p.is_dir())[0]
    entry = {"image": str(patient / "image.nii.gz"), "label": str(patient / "label.nii.gz")}
    chain = build_transforms("val")
    first = build_dataset([entry], chain, cache="disk", cache_dir=tmp_path / "cache")[0]
    label = nib.load(patient / "label.nii.gz")
    flipped = 1 - np.asarray(label.dataobj)
    nib.save(nib.Nifti1Image(flipped.astype(np.uint8), label.affine), patient / "label.nii.gz")
    second = build_dataset([entry], chain, cache="disk", cache_dir=tmp_path / "cache")[0]
    assert not np.array_equal(np.asarray(first["label"]), np.asarray(second["label"]))
    assert np.array_equal(np.asarray(second["label"])[0], flipped)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2


def test_evaluate_says_which_patients_the_model_trained_on(trained, tmp_path, caplog):
    """The model of fold 0 trained on fold 2 (fold 1 validated it): evaluated on its test fold none was seen;
    on fold 2 every patient was, said in one log line and in metrics.json, pointing to an unbiased figure."""
    datalist = json.loads((trained["prepared"] / "datalist.json").read_text())["training"]
    folds = {fold: sorted(e["patient"] for e in datalist if e["fold"] == fold) for fold in (0, 1, 2)}
    caplog.set_level("INFO")
    base = ["evaluate", "--checkpoint", str(trained["model"]), "--device", "cpu"]
    for fold, seen in ((0, []), (1, []), (2, folds[2])):
        out = tmp_path / f"fold{fold}"
        caplog.clear()
        assert main([*base, "--folds", str(fold), "--output", str(out)]) == 0
        report = json.loads((out / "metrics.json").read_text())
        assert report["seen_in_training"] == f"{len(seen)} of {len(folds[fold])} patients"
        assert report["seen_in_training_detail"]["patients"] == seen
        said = [r.getMessage() for r in caplog.records if "training patient" in r.getMessage()]
        assert len(said) == 1 and "\n" not in said[0]
        if seen:
            assert said[0].startswith(f"{len(seen)} of {len(seen)} patients evaluated were training patients")
            assert "optimistic" in said[0] and "lggseg cv" in said[0]
        assert report["patients"] and {p["patient_id"] for p in report["patients"]} == set(folds[fold])


def test_the_shipped_ensemble_trained_each_patient_in_four_of_its_five_networks():
    from pipeline.cli.seen_in_training import training_patients
    from pipeline.model_files import SHIPPED_MODEL, load_checkpoint

    saved = load_checkpoint(SHIPPED_MODEL)
    member_folds = [m["fold"] for m in saved["members"]]
    assert sorted(member_folds) == [0, 1, 2, 3, 4]
    entries = [{"patient": f"p{i}", "fold": i % 5} for i in range(20)]
    assert training_patients(saved["config"], member_folds, entries) == {f"p{i}": 4 for i in range(20)}
    # one network of fold 0 with a validation fold: only the other three folds trained it
    single = {"fold": 0, "val_fold": None, "train_on_all": False}
    assert set(training_patients(single, None, entries)) == {f"p{i}" for i in range(20) if i % 5 in (2, 3, 4)}
