"""Engines: losses, schedules, the volume inferer, training/validation runs, resume, determinism, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Events
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pipeline.config import RunConfig
from pipeline.engines import KEY_METRIC
from pipeline.inference.inferers import VolumeInferer
from pipeline.inference.postprocessing import build_postprocessing
from pipeline.ingestion.errors import LGGDataError
from pipeline.ingestion.prepare import prepare_dataset
from pipeline.model_files import load_checkpoint
from pipeline.training.losses import LOSSES, build_loss
from pipeline.training.optim import build_optimizer, build_scheduler
from pipeline.workflows.cross_validation import cross_validate
from pipeline.workflows.prediction import evaluate, infer
from pipeline.workflows.training import prepare_run, train

# tiny runs: 64x64 synthetic slices, a few iterations per epoch
ARCH = "unext"  # the project's default network: small, fast, and it learns within a few iterations
TINY = {"epochs": 2, "batch_size": 8, "num_samples": 8, "progress": False, "overlay_images": 2, "lr": 3e-3}


def _tiny(data: Path, output: Path | None = None, **options) -> dict:
    """A tiny run's configuration on ``data`` (UNeXt at 32x32), with ``options`` on top."""
    where = {"output": str(output)} if output is not None else {}
    return {**TINY, "data": str(data), **where, "arch": ARCH, "input_size": (32, 32), **options}


def _weights(run_dir: Path, name: str) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoints" / name)["model"]


# ----------------------------------------------------------------------------- losses and schedules


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("num_classes", [1, 2])
def test_losses_are_small_for_a_perfect_prediction(name, num_classes):
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, 2:6, 2:6] = 1
    if num_classes == 1:
        good, bad = (target * 20 - 10), (10 - target * 20)
    else:
        good = torch.cat([10 - target * 20, target * 20 - 10], 1)
        bad = -good
    loss = build_loss(name, num_classes)
    assert float(loss(good, target)) < 0.05 < float(loss(bad, target))


def test_deep_supervision_loss_takes_lower_resolution_heads():
    target = torch.zeros(1, 1, 8, 8)
    target[..., 2:6, 2:6] = 1
    loss = build_loss("dice_ce", 1, deep_supervision=True)
    main = target * 20 - 10
    aux = torch.nn.functional.interpolate(main, size=(4, 4))
    assert float(loss([main, aux], target)) < 0.1
    assert float(loss(main, target)) == pytest.approx(float(build_loss("dice_ce")(main, target)))
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss("hinge")


def _lrs(name, epochs=6, **kwargs):
    opt = build_optimizer("sgd", [torch.nn.Parameter(torch.zeros(1))], lr=1.0, nesterov=True)
    sched = build_scheduler(name, opt, epochs, **kwargs)
    out = []
    for _ in range(epochs):
        opt.step()
        sched.step()
        out.append(round(opt.param_groups[0]["lr"], 6))
    return out


def test_schedules():
    assert _lrs("cosine", min_lr=0.1)[-1] == pytest.approx(0.1)
    assert _lrs("multistep", milestones=(2, 4), gamma=0.5) == [1.0, 0.5, 0.5, 0.25, 0.25, 0.25]
    assert _lrs("constant") == [1.0] * 6
    warm = _lrs("cosine", warmup_epochs=2, min_lr=0.0)
    assert warm[0] < warm[1] == 1.0 and warm[-1] == pytest.approx(0.0)
    opt = build_optimizer("adamw", [torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    plateau = build_scheduler("plateau", opt, 10, factor=0.5, patience=1, min_lr=0.1)
    for metric in (0.5, 0.5, 0.5, 0.5):
        plateau.step(metric)
    assert opt.param_groups[0]["lr"] == 0.5
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer("lbfgs", [torch.nn.Parameter(torch.zeros(1))])
    with pytest.raises(ValueError, match="unknown scheduler"):
        build_scheduler("step", opt, 3)


# ----------------------------------------------------------------------------- inferer and post-processing


class _FlairThreshold(torch.nn.Module):
    """A fake 2D 'network': logit = FLAIR - 1 of the centre slice (channel 1 of each 3-channel group)."""

    def __init__(self, context: int = 0) -> None:
        super().__init__()
        self.channel = (2 * context + 1) + context  # channel-major: the FLAIR block, its centre slice
        self.scale = torch.nn.Parameter(torch.ones(1))

    def forward(self, x):
        assert x.shape[-1] % 16 == 0 and x.shape[-2] % 16 == 0, "input not padded to the stride"
        return (x[:, self.channel : self.channel + 1] - 1.0) * 10 * self.scale


@pytest.mark.parametrize("context", [0, 1])
@pytest.mark.parametrize("tta", ["none", "flip", "flip+scale"])
def test_volume_inferer_pads_crops_and_averages(context, tta):
    volume = torch.zeros(1, 3, 30, 21, 5)
    volume[:, 1, 10:20, 5:15, 1:4] = 3.0  # a bright FLAIR box
    inferer = VolumeInferer(spatial_dims=2, context=context, divisible=16, tta=tta, scales=(1.0, 2.0))
    prob = inferer(volume, _FlairThreshold(context))
    assert prob.shape == (1, 1, 30, 21, 5)
    mask = build_postprocessing(0.5)({"pred": prob[0]})["pred"]
    truth = (volume[0, 1:2] > 0).float()
    assert float((mask * truth).sum() * 2 / (mask.sum() + truth.sum())) > 0.9


def test_volume_inferer_3d_and_bad_options():
    volume = torch.zeros(1, 3, 16, 16, 8)
    net = torch.nn.Conv3d(3, 1, 1)
    assert VolumeInferer(spatial_dims=3, patch_size=(8, 8, 4))(volume, net).shape == (1, 1, 16, 16, 8)
    with pytest.raises(ValueError):
        VolumeInferer(tta="rotate")
    with pytest.raises(ValueError):
        build_postprocessing(threshold=1.5)


# ----------------------------------------------------------------------------- training runs


@pytest.mark.slow
def test_two_epoch_run_writes_checkpoints_tensorboard_and_a_report(synthetic_data, tmp_path):
    cfg = _tiny(synthetic_data, tmp_path)
    result = train(cfg)
    run_dir = Path(result["run_dir"])
    assert result["epochs"] == 2 and 0.0 <= result["best_metric"] <= 1.0
    names = {p.name for p in (run_dir / "checkpoints").iterdir()}
    assert {"best_model.pt", "checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt"} <= names
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert "val/overlay" in events.Tags()["images"]
    assert {"train/loss", "train/epoch_loss", "train/lr", KEY_METRIC} <= set(events.Tags()["scalars"])
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["arch"] == ARCH and saved["input_size"] == [32, 32]
    last = load_checkpoint(run_dir / "checkpoints" / "checkpoint_epoch=2.pt")
    assert {"optimizer", "lr_scheduler", "trainer", "rng", "best_checkpointer"} <= set(last)
    assert last["trainer"]["iteration"] == 2 * last["trainer"]["epoch_length"]

    report = evaluate(
        run_dir / "checkpoints" / "best_model.pt",
        output=tmp_path / "eval",
        overrides={"keep_largest": 1},
        save_predictions=True,
    )
    test_patients = [
        e for e in json.loads((synthetic_data / "datalist.json").read_text())["training"] if e["fold"] == 0
    ]
    assert len(report["records"]) == len(test_patients)
    for record in report["records"]:
        assert 0.0 <= record["dice"] <= 1.0 and record["eval_s"] > 0 and record["load_s"] >= 0
    # each patient's datalist fields reach the report (MONAI leaves the decollated batch in the state)
    truth = {e["patient"]: (e["fold"], e["institution"]) for e in test_patients}
    assert {r["patient_id"]: (r["fold"], r["institution"]) for r in report["records"]} == truth
    for name in ("metrics_per_patient.csv", "metrics.json", "dice_per_institution.png", "overlay_worst.png"):
        assert (tmp_path / "eval" / name).is_file()
    pid = report["records"][0]["patient_id"]
    pred = nib.load(tmp_path / "eval" / "predictions" / pid / f"{pid}_seg.nii.gz")
    image = nib.load(synthetic_data / pid / "image.nii.gz")
    assert pred.shape == image.shape[:3] and np.allclose(pred.affine, image.affine)

    written = infer(
        run_dir / "checkpoints" / "best_model.pt",
        [synthetic_data.parent / "kaggle_3m" / pid],
        tmp_path / "infer",
        kaggle_masks=True,
    )
    assert len(written) == 1
    assert np.array_equal(nib.load(written[0]).get_fdata(), pred.get_fdata())  # raw folder == NIfTI path
    assert len(list((tmp_path / "infer" / pid / "kaggle_masks").glob("*_mask.tif"))) == image.shape[2]


def _interrupt_in_epoch(epoch: int):
    class Interrupted(Exception):
        pass

    def hook(run):
        def boom(engine):
            if (
                engine.state.epoch == epoch
                and engine.state.iteration > (epoch - 1) * engine.state.epoch_length
            ):
                raise Interrupted(f"simulated crash in epoch {epoch}")

        run["trainer"].add_event_handler(Events.ITERATION_STARTED, boom)

    return hook, Interrupted


@pytest.mark.slow
@pytest.mark.parametrize("num_workers", [0, 1])
def test_resume_after_interruption_gives_the_same_weights(synthetic_data, tmp_path, num_workers):
    base = _tiny(synthetic_data, epochs=3, num_workers=num_workers, scheduler="cosine")
    straight = Path(train({**base, "output": str(tmp_path / "a")})["run_dir"])
    hook, interrupted = _interrupt_in_epoch(2)
    with pytest.raises(interrupted):
        train({**base, "output": str(tmp_path / "b")}, on_built=hook)
    resumed_dir = tmp_path / "b" / "lggseg" / "fold0" / "checkpoints"
    assert not (resumed_dir / "checkpoint_epoch=2.pt").exists()
    result = train({**base, "output": str(tmp_path / "b"), "resume": True})
    assert result["epochs"] == 3
    a, b = (
        _weights(straight, "checkpoint_epoch=3.pt"),
        _weights(Path(result["run_dir"]), "checkpoint_epoch=3.pt"),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)
    again = train({**base, "output": str(tmp_path / "b"), "resume": True})  # finished: nothing to do
    assert again["epochs"] == 3 and again["best_metric"] == result["best_metric"]
    c = _weights(Path(result["run_dir"]), "checkpoint_epoch=3.pt")
    assert all(torch.equal(b[k], c[k]) for k in b)
    best_a = load_checkpoint(straight / "checkpoints" / "best_model.pt")["model"]
    best_b = load_checkpoint(Path(result["run_dir"]) / "checkpoints" / "best_model.pt")["model"]
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_a)


@pytest.mark.slow
def test_same_seed_same_metrics(synthetic_data, tmp_path):
    cfg = _tiny(synthetic_data, epochs=1, context=1)
    first = train({**cfg, "output": str(tmp_path / "1")})
    second = train({**cfg, "output": str(tmp_path / "2")})
    assert first["best_metric"] == second["best_metric"]
    a = _weights(Path(first["run_dir"]), "checkpoint_epoch=1.pt")
    b = _weights(Path(second["run_dir"]), "checkpoint_epoch=1.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = train({**cfg, "output": str(tmp_path / "3"), "seed": 1})
    c = _weights(Path(other["run_dir"]), "checkpoint_epoch=1.pt")
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.slow
def test_cross_validation_pools_every_patient(synthetic_data, tmp_path):
    cfg = _tiny(synthetic_data, tmp_path, epochs=1, overlay_images=0)
    result = cross_validate(cfg)
    datalist = json.loads((synthetic_data / "datalist.json").read_text())["training"]
    assert sorted(r["patient_id"] for r in result["records"]) == sorted(e["patient"] for e in datalist)
    # the pooled report says which fold's model tested each patient (the model card groups by it)
    tested_by = {r["patient_id"]: r["fold"] for r in result["records"]}
    assert tested_by == {e["patient"]: e["fold"] for e in datalist}
    assert (tmp_path / "lggseg" / "cv" / "metrics.json").is_file()
    # finished folds are not trained again
    stamp = (tmp_path / "lggseg" / "fold0" / "checkpoints" / "checkpoint_epoch=1.pt").stat().st_mtime_ns
    cross_validate(cfg, folds=[0])
    assert (
        tmp_path / "lggseg" / "fold0" / "checkpoints" / "checkpoint_epoch=1.pt"
    ).stat().st_mtime_ns == stamp


@pytest.mark.slow
@pytest.mark.parametrize(
    "options",
    [
        {
            "deep_supervision": True,
            "loss": "bce_dice",
            "optimizer": "sgd",
            "nesterov": True,
            "grad_clip": 1.0,
            "scheduler": "plateau",
            "early_stopping": 1,
            "context": 1,
            "input_channels": 9,
        },
        {
            "loss": "tversky",
            "optimizer": "adamw",
            "scheduler": "multistep",
            "milestones": (1,),
            "warmup_epochs": 1,
            "num_classes": 2,
            "cache": "disk",
            "tta": "flip",
        },
        {
            "spatial_dims": 3,
            "arch": "segresnet",
            "patch_size": (32, 32, 8),
            "num_samples": 2,
            "batch_size": 2,
            "loss": "dice_focal",
            "input_size": None,
            "scheduler": "constant",
        },
    ],
    ids=["deep-supervision-2.5d", "softmax-disk-cache", "3d-patches"],
)
def test_training_options(synthetic_data, tmp_path, options):
    cfg = _tiny(synthetic_data, tmp_path, **options)
    result = train(cfg)
    assert result["epochs"] >= 1 and 0.0 <= result["best_metric"] <= 1.0
    assert (Path(result["run_dir"]) / "checkpoints" / "best_model.pt").is_file()
    if options.get("cache") == "disk":
        assert list((tmp_path / "lggseg" / "cache").glob("train-*/*.pt"))


@pytest.mark.slow
def test_early_stopping_and_validation_interval(synthetic_data, tmp_path):
    cfg = {
        **_tiny(synthetic_data, tmp_path),
        "epochs": 6,
        "lr": 0.0,
        "scheduler": "constant",
        "early_stopping": 2,
        "volume_repeats": 1,
        "threshold": 0.999,
    }
    # untrained, threshold 0.999: empty predictions and validation Dice 0 every time; patience 2 stops at 3
    assert train(cfg)["epochs"] == 3
    validated: list[int] = []

    def record(run):
        run["evaluator"].add_event_handler(
            Events.COMPLETED, lambda e: validated.append(run["trainer"].state.epoch)
        )

    train(
        {**cfg, "output": str(tmp_path / "interval"), "early_stopping": -1, "epochs": 5, "val_interval": 2},
        on_built=record,
    )
    assert validated == [2, 4, 5]  # every second epoch, and after the last


# ----------------------------------------------------------------------------- bad input


def test_bad_inputs_give_clear_errors(synthetic_data, tmp_path):
    base = {**TINY, "data": str(synthetic_data), "output": str(tmp_path), "arch": ARCH}
    with pytest.raises(ValueError, match="input_channels=3, but the data gives 9"):
        prepare_run(RunConfig.from_dict({**base, "context": 1, "input_channels": 3}))
    with pytest.raises(ValueError, match="unknown configuration keys: learning_rate"):
        RunConfig.from_dict({**base, "learning_rate": 1.0})
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        evaluate(tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match="no checkpoint_epoch"):
        train({**base, "resume": True})
    broken = tmp_path / "broken"
    shutil.copytree(synthetic_data, broken)
    victim = next(p for p in broken.iterdir() if p.is_dir())
    (victim / "image.nii.gz").unlink()
    with pytest.raises(LGGDataError, match=f"{victim.name} names missing files"):
        train({**base, "data": str(broken)})
    not_a_checkpoint = tmp_path / "weights.pt"
    torch.save({"weights": torch.zeros(1)}, not_a_checkpoint)
    with pytest.raises(ValueError, match="not an lggseg checkpoint"):
        evaluate(not_a_checkpoint)


@pytest.mark.slow
@pytest.mark.realdata
def test_two_epochs_on_real_patients_raise_validation_dice(kaggle_root, tmp_path):
    """Four real patients at 64x64 (two train, one validates): two epochs beat the untrained network."""
    raw = tmp_path / "kaggle_3m"
    raw.mkdir()
    for name in (
        "TCGA_CS_4941_19960909",
        "TCGA_CS_4942_19970222",
        "TCGA_CS_5393_19990606",
        "TCGA_CS_5395_19981004",
    ):
        (raw / name).symlink_to(kaggle_root / name)
    prepare_dataset(raw, tmp_path / "prepared", num_folds=4, seed=0, workers=1)
    cfg = {
        **TINY,
        "data": str(tmp_path / "prepared"),
        "output": str(tmp_path / "runs"),
        "arch": ARCH,
        "input_size": (64, 64),
        "num_samples": 16,
        "volume_repeats": 8,
        "batch_size": 16,
        "pos": 3,
        "neg": 1,
    }
    untrained: dict[str, float] = {}

    def before(run):
        run["evaluator"].run()
        untrained["dice"] = run["evaluator"].state.metrics[KEY_METRIC]
        run["evaluator"].state.best_metric = -1

    result = train(cfg, on_built=before)
    assert result["best_metric"] > untrained["dice"] + 0.05
    run_dir = Path(result["run_dir"])
    assert (run_dir / "checkpoints" / "best_model.pt").is_file()
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
