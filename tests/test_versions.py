"""Two versions, never mixed up: the package's (``pipeline.__version__``, what ``pip`` installs) and the
model's (the bundle's ``metadata.json`` ``version``, written into the shipped model file as
``model_version``); the DICOM SEG names the model's as its algorithm version and the package's as its
software version."""

from __future__ import annotations

import json
import re

import pydicom
import pytest
import torch
from helpers import REPO_ROOT, blob_mask, write_flair_series
from monai.bundle import ConfigParser
from monai.data import MetaTensor

import pipeline
from pipeline.inference import case_report, dicom_seg
from pipeline.inference.case_outputs_handler import CaseOutputsHandler
from pipeline.inference.dicom_seg import write_dicom_seg
from pipeline.model_files import MODEL_VERSION_KEY, SHIPPED_MODEL, load_checkpoint, model_version
from pipeline.preprocessing.scan_chain import SCAN_META

METADATA = json.loads((REPO_ROOT / "bundle" / "configs" / "metadata.json").read_text())


def test_the_shipped_model_says_the_bundles_version():
    assert model_version(SHIPPED_MODEL) == METADATA["version"]
    assert isinstance(load_checkpoint(SHIPPED_MODEL)[MODEL_VERSION_KEY], str)  # plain, weights_only reads it
    assert METADATA["required_packages_version"]["lggseg"] == pipeline.__version__
    assert METADATA["version"] in METADATA["changelog"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", pipeline.__version__)
    assert "pipeline.__version__" in (REPO_ROOT / "setup.cfg").read_text()  # pip installs the package's


def test_model_version_of_a_file(tmp_path):
    weights = {"w": torch.zeros(2)}
    torch.save({"model": weights, "config": {}}, tmp_path / "none.pt")
    torch.save({"model": weights, "config": {}, MODEL_VERSION_KEY: "1.2.3"}, tmp_path / "one.pt")
    torch.save({"model": weights, MODEL_VERSION_KEY: 7}, tmp_path / "odd.pt")
    assert model_version(tmp_path / "none.pt") is None
    assert model_version(tmp_path / "one.pt") == "1.2.3"
    assert model_version(tmp_path / "odd.pt") is None
    with pytest.raises(FileNotFoundError):
        model_version(tmp_path / "missing.pt")


def test_the_dicom_seg_names_the_models_and_the_packages_version(tmp_path):
    files, _, _ = write_flair_series(tmp_path / "flair")
    out = write_dicom_seg(blob_mask(), files, tmp_path / "seg.dcm", algorithm_version="0.3.0")
    seg = pydicom.dcmread(out)
    (algorithm,) = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence
    assert algorithm.AlgorithmVersion == "0.3.0" and algorithm.AlgorithmName == "lggseg"
    assert seg.SoftwareVersions == pipeline.__version__
    plain = pydicom.dcmread(write_dicom_seg(blob_mask(), files, tmp_path / "plain.dcm"))
    assert plain.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion == (
        pipeline.__version__
    )  # no model version known: the package's, as before


def test_the_case_outputs_pass_the_model_version_to_the_seg(tmp_path, monkeypatch):
    seen = {}

    def record(mask, files, path, **kwargs):
        seen.update(kwargs, files=files)
        return None, "recorded"

    monkeypatch.setattr(dicom_seg, "try_write_dicom_seg", record)  # imported when a case has DICOM files
    pred = MetaTensor(torch.zeros(1, 4, 4, 2), affine=torch.eye(4), meta={SCAN_META["source_files"]: "a\nb"})
    case = {"case": "c", "image": "c.nii.gz", "kind": "volume"}
    case_report.write_case_outputs(case, pred, tmp_path, algorithm_version="0.3.0")
    assert seen["algorithm_version"] == "0.3.0" and seen["files"] == ["a", "b"]
    seen.clear()
    case_report.write_case_outputs(case, pred, tmp_path)
    assert "algorithm_version" not in seen  # the writer's default: the package's
    handler = CaseOutputsHandler(tmp_path / "out", [case], algorithm_version="0.3.0")
    assert handler.algorithm_version == "0.3.0"


def test_inference_json_gives_the_seg_the_models_version():
    parser = ConfigParser()
    parser.read_config(str(REPO_ROOT / "bundle" / "configs" / "inference.json"))
    parser["bundle_root"] = str(REPO_ROOT / "bundle")
    assert parser.get_parsed_content("case_outputs#algorithm_version") == METADATA["version"]


def test_install_model_writes_the_version_once(tmp_path, load_script):
    """A model file gets the bundle's version when installed; one that says it already is copied byte for
    byte, and the installed file loads strictly into the bundle's network."""
    import shutil

    from pipeline.model_files import load_model

    install_model = load_script("install_model")
    bundle = tmp_path / "bundle"
    shutil.copytree(REPO_ROOT / "bundle" / "configs", bundle / "configs")
    source = tmp_path / "model.pt"
    shipped = torch.load(SHIPPED_MODEL, weights_only=True)
    torch.save({k: v for k, v in shipped.items() if k != MODEL_VERSION_KEY}, source)
    assert model_version(source) is None
    install_model.install(source, bundle)
    installed = bundle / "models" / "model.pt"
    assert model_version(installed) == METADATA["version"]
    again = tmp_path / "again.pt"
    shutil.copyfile(installed, again)
    install_model.install(again, bundle, overwrite=True)
    assert installed.read_bytes() == again.read_bytes()
    load_model(installed, device="cpu")


def test_the_app_says_the_version_of_the_weights_in_use(tmp_path, monkeypatch):
    """The MONAI Label app's model info names the current weight file's model version (the app's own
    ``version`` is the package's)."""
    monkeypatch.syspath_prepend(str(REPO_ROOT / "apps" / "lggseg"))
    from lib.model_files import AppPaths, CachedNetwork

    paths = AppPaths(bundle=REPO_ROOT / "bundle", base_model=SHIPPED_MODEL, model_dir=tmp_path / "m")
    cached = CachedNetwork(lambda: None, paths)
    assert cached.version() == METADATA["version"]
    finetuned = paths.finetuned_model
    finetuned.parent.mkdir()
    torch.save({"model": {"w": torch.zeros(1)}, MODEL_VERSION_KEY: "0.3.0+finetuned"}, finetuned)
    assert cached.version() == "0.3.0+finetuned"  # the file in use now
    finetuned.unlink()
    assert cached.version() == METADATA["version"]
