"""Fold ensembles (``ModelEnsemble``, ``combine_models``, ``lggseg ensemble``) and the post-processing chosen
on validation folds (``lggseg choose-postprocessing``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import REPO_ROOT, save_untrained_model
from torch import nn

from pipeline.cli import main
from pipeline.ingestion.prepare import prepare_dataset
from pipeline.ingestion.synthetic import write_synthetic_kaggle
from pipeline.model_files import load_checkpoint, load_model
from pipeline.nets.ensemble import ModelEnsemble
from pipeline.networks import build_network, count_gmacs
from pipeline.workflows.model_selection import POSTPROCESSING_CANDIDATES, combine_models, finished_folds

TINY = ["--epochs", "4", "--batch-size", "8", "--num-samples", "8", "--lr", "0.005"]
TINY += ["--arch", "unext", "--no-progress", "--overlay-images", "0", "--cache", "none"]


class _Constant(nn.Module):
    """A 'network' whose output is a fixed logit map, whatever the input."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], *self.logits.shape[1:])


def test_ensemble_averages_probabilities_not_logits():
    a = torch.tensor([[[[4.0, -2.0]]]])
    b = torch.tensor([[[[0.0, -2.0]]]])
    out = ModelEnsemble([_Constant(a), _Constant(b)])(torch.zeros(2, 3, 1, 2))
    expected = (torch.sigmoid(a) + torch.sigmoid(b)) / 2  # (0.98201 + 0.5) / 2, not sigmoid(2) = 0.8808
    assert out.shape == (2, 1, 1, 2)
    assert torch.allclose(torch.sigmoid(out[0]), expected[0], atol=1e-5)
    assert abs(torch.sigmoid(out[0, 0, 0, 0]).item() - 0.74101) < 1e-4


def test_ensemble_of_softmax_members_returns_log_mean_probabilities():
    a = torch.tensor([[[[2.0]], [[0.0]]]])
    b = torch.tensor([[[[0.0]], [[2.0]]]])
    out = ModelEnsemble([_Constant(a), _Constant(b)], num_classes=2)(torch.zeros(1, 3, 1, 1))
    assert torch.allclose(torch.softmax(out, dim=1), torch.full((1, 2, 1, 1), 0.5), atol=1e-6)


def test_build_network_members_and_bad_counts():
    single = build_network("unext", 2, 3, 1)
    ensemble = build_network("unext", 2, 3, 1, members=3)
    assert isinstance(ensemble, ModelEnsemble) and len(ensemble.members) == 3
    assert len(ensemble.state_dict()) == 3 * len(single.state_dict())
    with pytest.raises(ValueError, match="members must be >= 1"):
        build_network("unext", 2, 3, 1, members=0)


def test_combine_models_refuses_what_it_must(tmp_path):
    a = save_untrained_model(tmp_path / "a.pt")
    b = save_untrained_model(tmp_path / "b.pt", seed=1)
    other = save_untrained_model(tmp_path / "c.pt", arch="unet")
    with pytest.raises(ValueError, match="at least two"):
        combine_models([a], tmp_path / "e.pt")
    with pytest.raises(ValueError, match="other network options"):
        combine_models([a, other], tmp_path / "e.pt")
    existing = tmp_path / "existing.pt"
    existing.write_bytes(b"user file")
    with pytest.raises(ValueError, match="exists"):
        combine_models([a, b], existing)
    assert existing.read_bytes() == b"user file"
    combine_models([a, b], tmp_path / "e.pt")
    with pytest.raises(ValueError, match="already an ensemble"):
        combine_models([tmp_path / "e.pt", a], tmp_path / "f.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "b.pt", "c.pt", "e.pt", "existing.pt"]


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory) -> Path:
    """A finished 3-fold CV run on 6 synthetic patients."""
    root = tmp_path_factory.mktemp("cv")
    write_synthetic_kaggle(root / "kaggle_3m", num_patients=6, seed=1, size=64, slices=(10, 12))
    prepare_dataset(root / "kaggle_3m", root / "prepared", num_folds=3, seed=0, workers=1)
    argv = ["cv", "--data", str(root / "prepared"), "--output", str(root / "runs"), "--name", "r", *TINY]
    assert main(argv) == 0
    return root / "runs" / "r"


@pytest.mark.slow
def test_choose_postprocessing_uses_validation_folds_only(cv_run, capsys):
    assert main(["choose-postprocessing", "--run", str(cv_run)]) == 0
    out = capsys.readouterr().out
    choice = json.loads((cv_run / "postprocessing.json").read_text())
    assert [c["options"] for c in choice["candidates"]] == list(POSTPROCESSING_CANDIDATES)
    # every fold validates on the next fold: each of the 6 patients is a validation patient exactly once
    assert choice["folds"] == {"0": 1, "1": 2, "2": 0}
    assert all(c["patients"] == 6 for c in choice["candidates"])
    means = [c["mean_dice"] for c in choice["candidates"]]
    best = means.index(max(means))  # the first of equal means: the cheaper candidate
    assert choice["chosen"] == POSTPROCESSING_CANDIDATES[best]
    assert f"chosen {json.dumps(choice['chosen'])}" in out
    report = json.loads((cv_run / "cv_postprocessed" / "metrics.json").read_text())
    assert len(report["patients"]) == 6
    for key, value in choice["chosen"].items():
        assert report["run"][key] == value
    for kind in ("best", "median", "worst"):
        assert (cv_run / "cv_postprocessed" / f"overlay_{kind}.png").stat().st_size > 1000
    for fold in range(3):
        assert (cv_run / f"fold{fold}" / "evaluation_postprocessed" / "metrics.json").is_file()
    # the validation figures are kept per fold: a second choice reuses them and chooses the same
    cached = cv_run / "fold0" / "validation_postprocessing.json"
    stamp = cached.stat().st_mtime_ns
    assert main(["choose-postprocessing", "--run", str(cv_run)]) == 0
    assert cached.stat().st_mtime_ns == stamp
    assert json.loads((cv_run / "postprocessing.json").read_text()) == choice


@pytest.mark.slow
def test_ensemble_command_makes_one_model_of_the_folds(cv_run, tmp_path, capsys):
    if not (cv_run / "postprocessing.json").is_file():
        assert main(["choose-postprocessing", "--run", str(cv_run)]) == 0
    chosen = json.loads((cv_run / "postprocessing.json").read_text())["chosen"]
    output = tmp_path / "model.pt"
    assert main(["ensemble", "--run", str(cv_run), "--output", str(output)]) == 0
    assert "ensemble of 3 models" in capsys.readouterr().out
    saved = load_checkpoint(output)
    assert saved["config"]["members"] == 3
    assert {k: saved["config"][k] for k in chosen} == chosen
    assert saved["training_config"] == load_checkpoint(finished_folds(cv_run)[0])["config"]
    assert [m["fold"] for m in saved["members"]] == [0, 1, 2]
    network, cfg, _ = load_model(output)
    assert cfg.members == 3 and cfg.keep_largest == chosen["keep_largest"]
    # the ensemble's probability is the mean of the fold models' probabilities
    x = torch.rand(2, 3, 32, 32)
    folds = [load_model(p)[0] for p in finished_folds(cv_run).values()]
    with torch.no_grad():
        expected = torch.stack([torch.sigmoid(f(x)) for f in folds]).mean(0)
        assert torch.allclose(torch.sigmoid(network(x)), expected, atol=1e-5)
    assert main(["ensemble", "--run", str(cv_run), "--output", str(output)]) == 2  # exists: refused
    assert main(["ensemble", "--run", str(cv_run), "--output", str(output), "--overwrite"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # no temporary file left
    assert load_checkpoint(output)["config"]["members"] == 3
    assert main(["evaluate", "--checkpoint", str(output), "--output", str(tmp_path / "eval")]) == 0
    # float16 storage: half the file, loads into the float32 network, nearly the same probabilities
    half = tmp_path / "half.pt"
    assert main(["ensemble", "--run", str(cv_run), "--output", str(half), "--half"]) == 0
    assert half.stat().st_size < 0.6 * output.stat().st_size
    half_network, _, _ = load_model(half)
    assert next(half_network.parameters()).dtype == torch.float32
    with torch.no_grad():
        assert torch.allclose(torch.sigmoid(half_network(x)), expected, atol=2e-3)
    assert len(json.loads((tmp_path / "eval" / "metrics.json").read_text())["patients"]) == 2


def test_training_refuses_members(tmp_path):
    with pytest.raises(SystemExit):
        main(["train", "--data", str(tmp_path), "--members", "2"])


@pytest.mark.slow
def test_model_card_takes_every_figure_from_the_cross_validation(cv_run, tmp_path, load_script):
    import shutil
    import statistics

    if not (cv_run / "postprocessing.json").is_file():
        assert main(["choose-postprocessing", "--run", str(cv_run)]) == 0
    model = tmp_path / "model.pt"
    assert main(["ensemble", "--run", str(cv_run), "--output", str(model)]) == 0
    bundle = tmp_path / "bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "docs").mkdir()
    shutil.copy(REPO_ROOT / "bundle" / "configs" / "metadata.json", bundle / "configs")
    card = bundle / "docs" / "README.md"
    card.write_text("# card\n\nbefore\n<!-- cv-results:start -->\nold\n<!-- cv-results:end -->\nafter\n")
    log = tmp_path / "cv.log"
    log.write_text(
        "x fold 0: 4 training, 2 validation, 2 test patients\n"
        "x epoch 1/2 | loss 0.5 | lr 0.001 | val_mean_dice 0.7000 (best 0.7000 @ epoch 1) | 60.0 s\n"
        "x epoch 2/2 | loss 0.4 | lr 0.001 | val_mean_dice 0.8100 (best 0.8100 @ epoch 2) | 120.0 s\n"
    )
    module = load_script("model_card")
    argv = ["--run", str(cv_run), "--model", str(model), "--log", str(log), "--bundle", str(bundle)]
    assert module.main(argv) == 0
    report = json.loads((cv_run / "cv_postprocessed" / "metrics.json").read_text())
    dice = [p["dice"] for p in report["patients"]]
    metrics = json.loads((bundle / "configs" / "metadata.json").read_text())["eval_metrics"]
    assert metrics["cv_patients"] == 6 and metrics["cv_folds"] == 3
    assert metrics["cv_patient_mean_dice"] == round(statistics.fmean(dice), 4)
    assert metrics["cv_patient_median_dice"] == round(statistics.median(dice), 4)
    text = card.read_text()
    assert text.startswith("# card\n\nbefore\n<!-- cv-results:start -->") and text.endswith(
        "end -->\nafter\n"
    )
    assert "\nold\n" not in text and module.file_sha256(model) in text and "(chosen)" in text
    assert "| 0 | 2 | 0.810 (2) | 3 | 3 (epoch 2) | not reached |" in text  # 180 s = 3 min to 0.8
    for name in module.FIGURES.values():
        assert (bundle / "docs" / "images" / name).stat().st_size > 1000
        assert f"](images/{name})" in text or "volume" in name


@pytest.mark.slow
def test_compare_runs_reads_every_figure_from_the_run(cv_run, tmp_path, capsys, load_script):
    module = load_script("compare_runs")
    log = tmp_path / f"{cv_run.name}.log"
    log.write_text(
        "x fold 0: 4 training, 2 validation, 2 test patients\n"
        "x epoch 1/1 | loss 0.5 | lr 0.001 | val_mean_dice 0.7000 (best 0.7000 @ epoch 1) | 60.0 s\n"
        "x fold 1: 4 training, 2 validation, 2 test patients\n"
        "x epoch 1/1 | loss 0.5 | lr 0.001 | 180.0 s\n"
    )
    other = tmp_path / f"{cv_run.name}_25d.log"  # another run whose name starts alike: not this run's log
    other.write_text("x fold 0: 4 training\nx epoch 1/1 | loss 0.5 | lr 0.001 | 6000.0 s\n")
    output = tmp_path / "table.json"
    argv = [str(cv_run), str(tmp_path / "missing"), "--log", str(log), str(other), "--output", str(output)]
    assert module.main(argv) == 0
    captured = capsys.readouterr()
    assert "missing: skipped" in captured.err and "| r | unext | 2D, 3 ch, 256x256 (native) |" in captured.out
    row = json.loads(output.read_text())["rows"][0]
    report = json.loads((cv_run / "cv" / "metrics.json").read_text())
    dice = [p["dice"] for p in report["patients"]]
    assert row["folds"] == 3 and row["epochs"] == 4
    config = json.loads((cv_run / "fold0" / "config.json").read_text())
    assert row["samples_per_volume_epoch"] == config["volume_repeats"] * config["num_samples"]
    network = build_network("unext", 2, 3, 1)
    assert row["gmacs_per_slice"] == pytest.approx(count_gmacs(network, (1, 3, 256, 256)))
    assert row["dice_mean"] == pytest.approx(sum(dice) / len(dice))
    assert row["parameters_m"] == pytest.approx(
        sum(p.numel() for p in build_network("unext", 2, 3, 1).parameters()) / 1e6
    )
    assert row["train_min_per_fold"] == pytest.approx(2.0)  # folds 0 and 1 logged: (1 + 3) / 2 minutes
    # a run taken apart from an ensemble (scripts/ensemble_members.py) has no best_metric: left empty
    members = tmp_path / "members"
    shutil.copytree(cv_run, members)
    for done in members.glob("fold*/training_done.json"):
        done.write_text(json.dumps({"from_ensemble": "model.pt", "fold": int(done.parent.name[4:])}))
    member_row = module.run_row(members, [])
    assert member_row["best_val_dice"] is None and member_row["dice_mean"] == pytest.approx(row["dice_mean"])
    # the table goes into the marked section of each --markdown file; a file without one stops it first
    readme, plain = tmp_path / "README.md", tmp_path / "plain.md"
    readme.write_text(f"# x\n{module.START}\nold\n{module.END}\nend\n")
    plain.write_text("no section\n")
    argv = [str(cv_run), "--markdown", str(readme), str(plain), "--caption", "Fold 0 only."]
    with pytest.raises(SystemExit, match="plain.md: no '<!-- network-ranking:start -->'"):
        module.main(argv)
    assert "old" in readme.read_text() and plain.read_text() == "no section\n"
    assert module.main(argv[:-3] + argv[-2:]) == 0
    text = readme.read_text()
    assert text.startswith(f"# x\n{module.START}\n\nFold 0 only.\n\n| run |") and text.endswith(
        f"{module.END}\nend\n"
    )
    assert "\nold\n" not in text and "| r | unext |" in text and "Hardware: " in text


def test_compare_runs_pairs_patients_with_the_reference(tmp_path, load_script):
    module = load_script("compare_runs")

    def run(name: str, dice: dict[str, float]) -> Path:
        (tmp_path / name / "cv").mkdir(parents=True)
        patients = [{"patient_id": p, "dice": d} for p, d in dice.items()]
        (tmp_path / name / "cv" / "metrics.json").write_text(json.dumps({"patients": patients}))
        return tmp_path / name

    reference = run("ref", {f"p{i}": 0.5 for i in range(6)})
    better = run("better", {**{f"p{i}": 0.5 + 0.02 * (i + 1) for i in range(6)}, "other": 0.0})
    row: dict = {}
    module.paired_with(row, better, reference)
    # the common six patients only; all six differences positive: exact two-sided p = 2 / 2**6
    assert row["dice_diff_vs_ref"] == pytest.approx(0.07)
    assert row["wilcoxon_p_vs_ref"] == pytest.approx(2 / 64)
    module.paired_with(row, reference, reference)
    assert row["dice_diff_vs_ref"] is None and row["wilcoxon_p_vs_ref"] is None


def test_train_on_all_runs_choose_on_the_cv_with_a_nested_choice_per_fold(tmp_path, monkeypatch):
    """Fold k is evaluated with the candidate best on the other folds: its own labels never choose."""
    from pipeline.workflows import model_selection as ms

    folds = {f: tmp_path / f"fold{f}" / "checkpoints" / "best_model.pt" for f in (0, 1, 2)}
    # pooled: candidate 0 0.733, candidate 1 0.767; without fold 2, candidate 0 is the better one
    table = {
        0: {0: [0.9, 0.9], 1: [0.8, 0.8], 2: [0.5, 0.5]},
        1: {0: [0.7, 0.7], 1: [0.7, 0.7], 2: [0.9, 0.9]},
    }
    candidates = ({"keep_largest": 0}, {"keep_largest": 1})
    monkeypatch.setattr(ms, "finished_folds", lambda root: folds)
    monkeypatch.setattr(ms, "load_checkpoint", lambda path: {"config": {"train_on_all": True, "fold": 0}})
    monkeypatch.setattr(ms, "file_sha256", lambda path: "digest")
    seen = []

    def fake_dice(model, fold, options, overrides=None, digest=None):
        seen.append((model, fold))
        return table[candidates.index(dict(options))][fold]

    monkeypatch.setattr(ms, "validation_dice", fake_dice)
    choice = ms.choose_postprocessing(tmp_path, candidates)
    assert all(model == folds[fold] for model, fold in seen)  # each model judged on its own test fold only
    assert choice["chosen"] == {"keep_largest": 1}
    assert choice["per_fold_choice"] == {
        0: {"keep_largest": 1},
        1: {"keep_largest": 1},
        2: {"keep_largest": 0},
    }
    assert choice["chosen_on"].startswith("test folds, nested")
    assert json.loads((tmp_path / "postprocessing.json").read_text())["per_fold_choice"]["2"] == {
        "keep_largest": 0
    }


def test_evaluate_folds_gives_each_fold_its_own_options(tmp_path, monkeypatch):
    from pipeline.workflows import cross_validation as cv

    seen = {}

    def fake_evaluate(checkpoint, output, folds, overrides, extra_slices, overwrite):
        seen[folds[0]] = dict(overrides)
        return {"records": [], "cases": None}

    monkeypatch.setattr(cv, "evaluate", fake_evaluate)
    monkeypatch.setattr("pipeline.evaluation.report.write_report", lambda *a, **k: {})
    models = {0: tmp_path / "f0" / "checkpoints" / "m.pt", 1: tmp_path / "f1" / "checkpoints" / "m.pt"}
    cv.evaluate_folds(models, tmp_path / "cv", {"num_workers": 0}, fold_overrides={1: {"tta": "flip"}})
    assert seen == {0: {"num_workers": 0}, 1: {"num_workers": 0, "tta": "flip"}}


def test_combine_models_itself_refuses_members_of_other_input_sizes(tmp_path):
    """Not only the CLI: the library function checks the members agree on their input (issue 20, item 11)."""
    a = save_untrained_model(tmp_path / "fold0" / "a.pt", fold=0)
    b = save_untrained_model(tmp_path / "fold1" / "b.pt", fold=1, seed=1)
    config = torch.load(b, weights_only=False)
    config["config"]["input_size"] = None
    torch.save(config, b)
    with pytest.raises(ValueError, match="input_size"):
        combine_models([a, b], tmp_path / "e.pt")
    assert not (tmp_path / "e.pt").exists()


def test_model_card_knows_a_train_on_all_run(tmp_path, load_script):
    module = load_script("model_card")
    for fold, flag in ((0, False), (1, True)):
        (tmp_path / "run" / f"fold{fold}").mkdir(parents=True)
        (tmp_path / "run" / f"fold{fold}" / "config.json").write_text(json.dumps({"train_on_all": flag}))
    assert module._trained_on_all(tmp_path / "run")
    (tmp_path / "run" / "fold1" / "config.json").write_text(json.dumps({"fold": 1}))
    assert not module._trained_on_all(tmp_path / "run")


def _pooled_report(run: Path, dice: dict[str, tuple[float, int]]) -> Path:
    (run / "cv").mkdir(parents=True)
    patients = [{"patient_id": p, "dice": d, "fold": k} for p, (d, k) in dice.items()]
    (run / "cv" / "metrics.json").write_text(json.dumps({"patients": patients}))
    return run


def test_model_card_pairs_the_run_with_a_reference_pooled_and_per_fold(tmp_path, load_script):
    module = load_script("model_card")
    ours = _pooled_report(tmp_path / "new", {"a": (0.8, 0), "b": (0.6, 0), "c": (0.9, 1), "d": (0.5, 1)})
    ref = _pooled_report(
        tmp_path / "old", {"a": (0.7, 0), "b": (0.7, 0), "c": (0.8, 1), "d": (0.4, 1), "e": (1, 2)}
    )
    lines = module.paired_lines(ours, ref)
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in lines
        if "| " in line
    }
    # all: differences +0.1, -0.1, +0.1, +0.1 (patient e is not in the new run)
    assert rows["all"][:5] == ["4", "0.700", "0.650", "+0.050", "3 / 1"]
    assert rows["fold 0"][:5] == ["2", "0.700", "0.700", "+0.000", "1 / 1"]
    assert rows["fold 1"][:5] == ["2", "0.700", "0.600", "+0.100", "2 / 0"]
    assert 0.0 < float(rows["all"][5]) <= 1.0


def test_model_card_says_which_external_patients_were_in_the_development_folds(load_script):
    module = load_script("model_card")
    figures = {
        "checkpoint": "runs/x/model.pt",
        "tta": "flip",
        "cases": [
            {"case": "tcia_raw/TCGA_FG_6692_20020606", "pred_ml": 19.9, "dice": 0.8, "truth_ml": 23.8},
            {"case": "brats_style/TCGA_DU_7294_19890104", "pred_ml": 25.4, "dice": 0.9, "truth_ml": 24.2},
            {"case": "brats2023_example/BraTS-GLI-00001-000", "pred_ml": 127.0},
        ],
    }
    text = "\n".join(module.external_lines(figures, {"TCGA_FG_6692_20020606": 0, "TCGA_DU_7294_19890104": 3}))
    assert "| `tcia_raw/TCGA_FG_6692_20020606` | 0.800 | 19.9 | 23.8 | - | yes: test fold 0," in text
    assert "| `brats_style/TCGA_DU_7294_19890104` | 0.900 | 25.4 | 24.2 | - | yes: test fold 3," in text
    assert "| `brats2023_example/BraTS-GLI-00001-000` | - | 127.0 | no truth | - | no |" in text
    quality = {**figures, "cases": [{**figures["cases"][0], "qc_score": 0.654, "review": "yes"}]}
    assert "| 0.65 (yes) |" in "\n".join(module.external_lines(quality, {}))
    assert "Mean Dice of the 2 scored cases: 0.850." in text and "TTA flip" in text
