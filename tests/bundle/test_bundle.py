"""The MONAI Bundle in ``bundle/``: metadata, the configs against the CLI, inference, export, torchrun."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import REPO_ROOT
from monai.bundle import ConfigWorkflow, verify_metadata

from pipeline.config import BUNDLE_NAMES, RunConfig
from pipeline.ingestion.prepare import prepare_dataset
from pipeline.model_files import MODEL_KEYS, create_network, load_checkpoint

CONFIGS = REPO_ROOT / "bundle" / "configs"
SCHEMA = REPO_ROOT.parent / "shared" / "schemas" / "meta_schema_20240725.json"
SCHEMA_MD5 = "06954cad2cc5d3784e72077ac76f0fc8"
# bundle scalars named as the Model Zoo names them -> RunConfig field
ZOO_NAMES = {zoo: name for name, zoo in BUNDLE_NAMES.items()}
SHORT = {"epochs": 1, "batch_size": 4, "num_samples": 2, "volume_repeats": 1, "device": "cpu"}


def _bundle(*configs: str) -> str:
    return str([str(CONFIGS / c) for c in configs])


def _bundle_cmd(configs: str, **overrides) -> list[str]:
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", configs]
    cmd += ["--logging_file", str(CONFIGS / "logging.conf"), "--meta_file", str(CONFIGS / "metadata.json")]
    for key, value in overrides.items():
        cmd += [f"--{key}", str(value)]
    return cmd


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}


def _run(configs: str, **overrides) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run`` from the repository root, output captured."""
    return subprocess.run(
        _bundle_cmd(configs, **overrides), env=_env(), capture_output=True, text=True, cwd=REPO_ROOT
    )


def _run_inference(
    bundle_root: Path, model: Path, dataset_dir: Path, output_dir: Path, **overrides
) -> subprocess.CompletedProcess:
    """``inference.json`` of the bundle in ``bundle_root`` with the weights ``model``: the cases of
    ``dataset_dir`` segmented on the CPU into ``output_dir``."""
    return _run(
        _bundle("inference.json"),
        bundle_root=bundle_root,
        ckpt_path=model,
        dataset_dir=dataset_dir,
        output_dir=output_dir,
        device="cpu",
        **overrides,
    )


def _inference_network() -> dict:
    """The network options of ``inference.json`` (those of the shipped model)."""
    config = json.loads((CONFIGS / "inference.json").read_text())
    return {k: config[k] for k in MODEL_KEYS if k in config}


def _literal_scalars(name: str = "train.json") -> dict:
    """A config's literal top-level scalars under their RunConfig names (expressions left out)."""
    names = {f.name for f in fields(RunConfig)}
    config = json.loads((CONFIGS / name).read_text())
    return {
        ZOO_NAMES.get(k, k): v
        for k, v in config.items()
        if ZOO_NAMES.get(k, k) in names
        and not isinstance(v, dict)
        and not (isinstance(v, str) and v.startswith(("$", "@")))
    }


def _model_file(folder: Path, **config) -> Path:
    """An untrained lggseg model file of inference.json's network (weights under "model", config beside)."""
    cfg = RunConfig.from_dict({"progress": False, **_inference_network(), **config})
    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.pt"
    torch.save({"model": create_network(cfg).state_dict(), "config": {"arch": cfg.arch}}, path)
    return path


def test_metadata_verifies_against_the_schema():
    verify_metadata(meta_file=str(CONFIGS / "metadata.json"), filepath=str(SCHEMA), hash_val=SCHEMA_MD5)
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert meta["schema"].endswith("meta_schema_20240725.json")
    network = RunConfig.from_dict(_inference_network())
    image = meta["network_data_format"]["inputs"]["image"]
    assert image["num_channels"] == network.in_channels == len(image["channel_def"])  # 3 x (2 context + 1)
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == 1
    assert "monai-label" in meta["supported_apps"]


def test_bundle_scalars_match_the_shipped_model(load_script):
    """train.json = the recipe that trained the shipped model (one network); inference.json = the shipped
    model's network and post-processing (the keys scripts/install_model.py sets); how and where to run
    (device, amp, workers, cache): the defaults."""
    defaults = {f.name: getattr(RunConfig(), f.name) for f in fields(RunConfig)}
    saved = load_checkpoint(REPO_ROOT / "bundle" / "models" / "model.pt")
    runtime = ("device", "amp", "num_workers", "cache", "cache_dir", "progress", "resume", "overwrite")
    trained = {k: v for k, v in saved.get("training_config", saved["config"]).items() if k not in runtime}
    model_keys = load_script("install_model").INFERENCE_KEYS
    expected_by_file = {
        "train.json": {**defaults, **trained, "members": 1},
        "inference.json": {**defaults, **{k: saved["config"][k] for k in model_keys if k in saved["config"]}},
    }
    for name, expected_values in expected_by_file.items():
        shared = _literal_scalars(name)
        assert len(shared) >= (15 if name == "train.json" else 10), sorted(shared)
        for key, value in shared.items():
            expected = expected_values[key]
            expected = list(expected) if isinstance(expected, tuple) else expected
            assert value == expected, f"{name}: {key}={value!r}, expected {expected!r}"
    quality = json.loads((CONFIGS / "inference.json").read_text())["quality"]  # a dict, not a scalar
    assert quality == saved["config"].get("quality", {}), "inference.json's calibration is the model's"


@pytest.mark.slow
def test_configs_have_every_required_property(synthetic_data, tmp_path):
    for configs, kind in ((["train.json"], "train"), (["inference.json"], "infer")):
        workflow = ConfigWorkflow(
            config_file=[str(CONFIGS / c) for c in configs],
            meta_file=str(CONFIGS / "metadata.json"),
            logging_file=str(CONFIGS / "logging.conf"),
            workflow_type=kind,
            init_id="no_initialize",  # parse only: nothing runs
            bundle_root=str(tmp_path),  # what checking builds (a TensorBoard writer) stays in tmp_path
            dataset_dir=str(synthetic_data),
        )
        workflow.initialize()
        assert not workflow.check_properties(), kind
    assert not (REPO_ROOT / "eval").exists()


def _cli_train(data: Path, output: Path, tmp_path: Path, **overrides) -> Path:
    """``lggseg train`` in its own process with the bundle's environment (thread count included: float sums
    differ), given train.json's recipe (and ``overrides``) as a --config file; returns the model file."""
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({**_literal_scalars(), **overrides}))
    cli_args = [
        "train",
        "--data",
        str(data),
        "--output",
        str(output),
        "--no-progress",
        "--config",
        str(recipe),
    ]
    for key, value in SHORT.items():
        if key not in overrides:
            cli_args += [f"--{key.replace('_', '-')}", str(value)]
    cli = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *cli_args],
        env=_env(),
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    assert cli.returncode == 0, cli.stderr[-3000:]
    return output / "lggseg" / "fold0" / "checkpoints" / "best_model.pt"


def _same_weights(first: Path, second: Path) -> bool:
    a, b = (torch.load(p, weights_only=True)["model"] for p in (first, second))
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_bundle_training_equals_cli_training(synthetic_data, tmp_path):
    """One short epoch through `monai.bundle run` and through `lggseg train`: identical weights."""
    result = _run(_bundle("train.json"), bundle_root=tmp_path / "b", dataset_dir=synthetic_data, **SHORT)
    assert result.returncode == 0, result.stderr[-3000:]
    ours = _cli_train(synthetic_data, tmp_path / "cli", tmp_path)
    bundle = torch.load(tmp_path / "b" / "models" / "fold0" / "model.pt", weights_only=True)
    assert set(bundle) >= {"model", "config"}
    assert _same_weights(tmp_path / "b" / "models" / "fold0" / "model.pt", ours)
    # the command-line overrides took effect: one epoch, on the CPU
    assert "Epoch[1] Complete" in result.stdout and "Epoch[2]" not in result.stdout
    assert bundle["config"]["epochs"] == 1
    # evaluate.json on top of train.json writes the CLI's per-patient report for the test fold
    evaluated = _run(
        _bundle("train.json", "evaluate.json"),
        bundle_root=tmp_path / "b",
        dataset_dir=synthetic_data,
        device="cpu",
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    report = json.loads((tmp_path / "b" / "eval" / "fold0" / "metrics.json").read_text())
    datalist = json.loads((synthetic_data / "datalist.json").read_text())["training"]
    assert {p["patient_id"] for p in report["patients"]} == {e["patient"] for e in datalist if e["fold"] == 0}
    # a second training into the same folder refuses to replace the model it wrote
    again = _run(_bundle("train.json"), bundle_root=tmp_path / "b", dataset_dir=synthetic_data, **SHORT)
    assert again.returncode != 0 and "exists and training would replace it" in again.stderr + again.stdout


@pytest.mark.slow
def test_bundle_train_on_all_equals_cli_train_on_all(synthetic_data, tmp_path):
    """``--train_on_all true`` (nnU-Net style, the shipped recipe): the bundle trains on every fold but the
    test fold and keeps the last epoch's model, as ``lggseg train --train-on-all`` does (same weights)."""
    short = {**SHORT, "epochs": 2, "val_interval": 1}
    result = _run(
        _bundle("train.json"),
        bundle_root=tmp_path / "b",
        dataset_dir=synthetic_data,
        train_on_all=True,
        **short,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    model = tmp_path / "b" / "models" / "fold0" / "model.pt"
    assert sorted(p.name for p in model.parent.iterdir()) == ["model.pt"]
    assert load_checkpoint(model)["config"]["train_on_all"] is True
    recipe = {"train_on_all": True, "epochs": 2, "val_interval": 1}
    ours = _cli_train(synthetic_data, tmp_path / "cli", tmp_path, **recipe)
    assert _same_weights(model, ours)
    # and not the weights of the plain split: a different training set gives different weights
    plain = _cli_train(
        synthetic_data, tmp_path / "plain", tmp_path, epochs=2, val_interval=1, train_on_all=False
    )
    assert not _same_weights(model, plain)


def _affine_and_shape(path: Path) -> tuple[np.ndarray, tuple[int, ...]]:
    image = nib.load(path)
    return image.affine, image.shape[:3]


@pytest.mark.slow
@pytest.mark.realdata
def test_bundle_inference_on_real_patients(kaggle_root, tmp_path):
    """NIfTI volumes, single files and raw Kaggle folders: one output per case with the input's geometry."""
    names = ["TCGA_CS_4941_19960909", "TCGA_DU_5849_19950405", "TCGA_HT_7692_19960724"]
    raw = tmp_path / "kaggle_3m"
    raw.mkdir()
    for name in names:
        (raw / name).symlink_to(kaggle_root / name)
    prepare_dataset(raw, tmp_path / "prepared", num_folds=3, seed=0, workers=1)
    model = _model_file(tmp_path / "bundle" / "models")
    outputs = {}
    for kind, dataset_dir in (("nifti", tmp_path / "prepared"), ("raw", raw)):
        out = tmp_path / f"out-{kind}"
        result = _run_inference(tmp_path / "bundle", model, dataset_dir, out)
        assert result.returncode == 0, result.stderr[-3000:]
        assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(names)
        assert len((out / "summary.csv").read_text().splitlines()) == 1 + len(names)  # header, a row per case
        for name in names:
            assert f"{name}" in result.stdout  # a progress line per case
            outputs[kind, name] = out / name / f"{name}_seg.nii.gz"
    for name in names:
        affine, shape = _affine_and_shape(tmp_path / "prepared" / name / "image.nii.gz")
        for kind in ("nifti", "raw"):
            pred = nib.load(outputs[kind, name])
            assert pred.shape == shape and np.allclose(pred.affine, affine), (kind, name)
            assert pred.get_data_dtype() == np.uint8 and set(np.unique(pred.get_fdata())) <= {0.0, 1.0}
            assert int(pred.header["sform_code"]) > 0 and int(pred.header["qform_code"]) > 0
        assert np.array_equal(
            nib.load(outputs["nifti", name]).get_fdata(), nib.load(outputs["raw", name]).get_fdata()
        )


@pytest.mark.slow
def test_bundle_inference_reports_a_bad_case_and_writes_the_others(synthetic_data, tmp_path):
    cases = tmp_path / "studies"
    cases.mkdir()
    prepared = synthetic_data
    good = sorted(p.name for p in prepared.iterdir() if (p / "image.nii.gz").is_file())[:2]
    for name in good:
        (cases / f"{name}.nii.gz").write_bytes((prepared / name / "image.nii.gz").read_bytes())
    (cases / "broken.nii.gz").write_bytes(b"not a nifti file")
    model = _model_file(tmp_path / "bundle" / "models")
    before = {p: p.read_bytes() for p in cases.iterdir()}
    result = _run_inference(tmp_path / "bundle", model, cases, tmp_path / "out")
    assert result.returncode != 0
    assert "broken: failed" in result.stdout + result.stderr
    for name in good:
        pred = tmp_path / "out" / name / f"{name}_seg.nii.gz"
        assert pred.is_file() and nib.load(pred).shape == nib.load(cases / f"{name}.nii.gz").shape[:3]
    failures = json.loads((tmp_path / "out" / "failures.json").read_text())
    assert [f["case"] for f in failures] == ["broken"]
    assert not list((tmp_path / "out").rglob("*.partial*"))
    assert {p: p.read_bytes() for p in cases.iterdir()} == before  # inputs untouched
    # a second run refuses to replace the predictions it wrote unless asked
    again = _run_inference(tmp_path / "bundle", model, cases, tmp_path / "out")
    assert again.returncode != 0 and "exists" in again.stdout + again.stderr


@pytest.mark.slow
def test_verify_net_in_out_and_torchscript_export(tmp_path):
    meta, infer = str(CONFIGS / "metadata.json"), str(CONFIGS / "inference.json")
    checked = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "verify_net_in_out", "network_def"]
        + ["--meta_file", meta, "--config_file", infer, "--n", "4", "--device", "cpu"],
        env=_env(),
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    assert checked.returncode == 0 and "verified with no error" in checked.stdout + checked.stderr
    model = _model_file(tmp_path / "models")
    exported = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def"]
        + ["--filepath", str(tmp_path / "model.ts"), "--ckpt_file", str(model), "--key_in_ckpt", "model"]
        + ["--meta_file", meta, "--config_file", infer],
        env=_env(),
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    assert exported.returncode == 0, exported.stderr[-3000:]
    scripted = torch.jit.load(str(tmp_path / "model.ts")).eval()
    cfg = RunConfig.from_dict(_inference_network())
    eager = create_network(cfg).eval()
    eager.load_state_dict(torch.load(model, weights_only=True)["model"])
    x = torch.randn(2, cfg.in_channels, 96, 128)
    with torch.no_grad():
        assert torch.allclose(scripted(x), eager(x), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("train_on_all", [True, False])
def test_torchrun_two_processes_gloo(synthetic_data, tmp_path, train_on_all):
    """DDP on two CPU processes: different samples per rank, identical weights, one checkpoint (the final
    model with ``train_on_all``, the shipped recipe; the best one by validation otherwise)."""
    probe = tmp_path / "probe.json"
    probe.write_text(
        json.dumps(
            {
                "finalize": [
                    "$torch.save({'weights': @network.module.state_dict(), "
                    "'samples': list(iter(@train#dataloader.sampler))}, "
                    "@bundle_root + '/rank' + str(dist.get_rank()) + '.pt')",
                    "$dist.is_initialized() and dist.destroy_process_group()",
                ]
            }
        )
    )
    configs = str([str(CONFIGS / "train.json"), str(CONFIGS / "multi_gpu_train.json"), str(probe)])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}"]
    cmd += ["--master_addr=127.0.0.1"]
    cmd += ["-m", "monai.bundle", "run", "--config_file", configs]
    for key, value in {
        "bundle_root": tmp_path / "ddp",
        "dataset_dir": synthetic_data,
        "epochs": 2,
        "batch_size": 4,
        "num_samples": 2,
        "volume_repeats": 2,
        "train_on_all": train_on_all,
    }.items():
        cmd += [f"--{key}", str(value)]
    result = subprocess.run(cmd, env=_env(), capture_output=True, text=True, cwd=REPO_ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [torch.load(tmp_path / "ddp" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["samples"] != ranks[1]["samples"]  # each rank its own share of one permutation
    # training volumes (train_on_all: every fold but test fold 0, 4; else 2) x 2 visits / 2 ranks
    volumes = 4 if train_on_all else 2
    assert len(ranks[0]["samples"]) == len(ranks[1]["samples"]) == volumes
    assert sorted(ranks[0]["samples"] + ranks[1]["samples"]) == sorted(2 * list(range(volumes)))
    assert all(torch.equal(ranks[0]["weights"][k], ranks[1]["weights"][k]) for k in ranks[0]["weights"])
    models = list((tmp_path / "ddp").rglob("model.pt"))
    assert len(models) == 1
    saved = torch.load(models[0], weights_only=True)["model"]
    assert not any(k.startswith("module.") for k in saved)
    # evaluation on two ranks: each a share of the test patients, one merged report
    configs = str([str(CONFIGS / c) for c in ("train.json", "evaluate.json", "multi_gpu_evaluate.json")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}"]
    cmd += ["--master_addr=127.0.0.1", "-m", "monai.bundle", "run", "--config_file", configs]
    cmd += ["--bundle_root", str(tmp_path / "ddp"), "--dataset_dir", str(synthetic_data)]
    result = subprocess.run(cmd, env=_env(), capture_output=True, text=True, cwd=REPO_ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((tmp_path / "ddp" / "eval" / "fold0" / "metrics.json").read_text())
    datalist = json.loads((synthetic_data / "datalist.json").read_text())["training"]
    expected = sorted(e["patient"] for e in datalist if e["fold"] == 0)
    assert sorted(p["patient_id"] for p in report["patients"]) == expected


def test_shipped_weights_load_strictly_into_the_inference_network():
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser["device"] = "cpu"
    network = parser.get_parsed_content("network_def")
    shipped = torch.load(REPO_ROOT / "bundle" / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert set(shipped) >= {"model", "config"}
    network.load_state_dict(shipped["model"], strict=True)
    for key in ("arch", "spatial_dims", "context", "num_classes", "deep_supervision"):
        assert shipped["config"][key] == parser[key], key
    assert shipped["config"].get("members", 1) == parser["members"]
