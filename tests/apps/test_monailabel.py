"""MONAI Label: ``lggseg studies`` and the app ``apps/lggseg`` served by the real MONAI Label server.

The server tests start ``python -m monailabel.main start_server --app apps/lggseg`` on a free loopback port
with a weight file made here (the shipped ``bundle/models/model.pt`` is not needed), then make the REST calls
3D Slicer makes, through MONAI Label's own client: info, upload, inference (geometry), label submission,
two inferences at once, bad requests (4xx, the server still serves), fine-tuning (new weights used by the
next inference), and a clean stop. They need MONAI Label (``scripts/install_monailabel.sh``): without it they
skip, or fail when ``CI=true``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import APP_DIR, REPO_ROOT, dice, file_digest, require_monailabel, run_lggseg

from pipeline.cli import main as lggseg
from pipeline.ingestion.studies import CONTENT_RECORD
from pipeline.ingestion.synthetic import write_synthetic_kaggle
from pipeline.safety import MANIFEST_FILENAME, owned_files

SHIPPED_MODEL = REPO_ROOT / "bundle" / "models" / "model.pt"
# three real patients with 20 slices each: A labelled in the studies, B unlabelled, C uploaded then labelled
A, B, C = "TCGA_CS_4942_19970222", "TCGA_HT_7692_19960724", "TCGA_CS_5393_19990606"
# a fold-0 test patient (lggseg prepare --seed 0 --folds 5): unseen by the ensemble's fold-0 member, in the
# training or validation set of the other four, so the test checks loading and a sane mask, not accuracy
HELD_OUT = "TCGA_HT_7694_19950404"
START_DEADLINE_S = 240
REQUEST_TIMEOUT_S = 300
TRAIN_DEADLINE_S = 600
FORBIDDEN_MODULES = ("torchvision", "monailabel.transform.post", "monailabel.tasks.infer.bundle")


def _linked_kaggle(kaggle_root: Path, folder: Path, patients: tuple[str, ...]) -> Path:
    """A kaggle_3m-like folder in ``folder`` holding links to some real patients (read, never written)."""
    folder.mkdir(parents=True, exist_ok=True)
    for patient in patients:
        (folder / patient).symlink_to(kaggle_root / patient, target_is_directory=True)
    return folder


# ------------------------------------------------------------------------------------------ lggseg studies
def test_studies_from_raw_and_prepared(tmp_path: Path, capsys) -> None:
    kaggle = write_synthetic_kaggle(tmp_path / "kaggle_3m", num_patients=3, seed=1, size=32, slices=(4, 6))
    names = sorted(p.name for p in kaggle.iterdir() if p.is_dir())
    code, errors, _ = run_lggseg(
        capsys, "studies", "--input", kaggle, "--output", tmp_path / "raw", "--with-labels"
    )
    assert code == 0 and not errors
    raw = tmp_path / "raw"
    for name in names:
        image, label = nib.load(raw / f"{name}.nii.gz"), nib.load(raw / "labels" / "final" / f"{name}.nii.gz")
        assert image.shape[-1] == 3 and image.ndim == 4 and label.shape == image.shape[:3]
        assert image.get_data_dtype() == np.uint8 and set(np.unique(label.get_fdata())) <= {0.0, 1.0}
        assert np.allclose(image.affine, label.affine)
    studies = {f"{n}.nii.gz" for n in names} | {f"labels/final/{n}.nii.gz" for n in names}
    assert owned_files(raw) == studies | {CONTENT_RECORD}  # the studies and what they hold

    # a prepared folder gives the same bytes as the raw folders (the image lggseg prepare writes)
    assert (
        lggseg(["prepare", "--input", str(kaggle), "--output", str(tmp_path / "prep"), "--folds", "2"]) == 0
    )
    code, _, _ = run_lggseg(
        capsys, "studies", "--input", tmp_path / "prep", "--output", tmp_path / "p", "--patients", names[0]
    )
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == sorted(
        [MANIFEST_FILENAME, CONTENT_RECORD, f"{names[0]}.nii.gz"]
    )
    assert file_digest(tmp_path / "p" / f"{names[0]}.nii.gz") == file_digest(raw / f"{names[0]}.nii.gz")


def test_studies_keeps_other_files_and_refuses_bad_output(tmp_path: Path, capsys) -> None:
    kaggle = write_synthetic_kaggle(tmp_path / "kaggle_3m", num_patients=2, seed=2, size=32, slices=(4, 5))
    out = tmp_path / "studies"
    assert run_lggseg(capsys, "studies", "--input", kaggle, "--output", out)[0] == 0
    # what a MONAI Label server and a Slicer user add to the folder is not lggseg's
    (out / "datastore_v2.json").write_text("{}")
    saved = out / "labels" / "final" / f"{sorted(p.name for p in kaggle.iterdir() if p.is_dir())[0]}.nii.gz"
    saved.parent.mkdir(parents=True)
    saved.write_bytes(b"a label drawn in Slicer")
    before = {p: file_digest(p) for p in (out / "datastore_v2.json", saved)}

    code, errors, _ = run_lggseg(capsys, "studies", "--input", kaggle, "--output", out)
    assert code == 2 and len(errors) == 1 and "--overwrite" in errors[0] and str(out) in errors[0]
    code, errors, _ = run_lggseg(capsys, "studies", "--input", kaggle, "--output", out, "--overwrite")
    assert code == 0 and not errors
    code, errors, _ = run_lggseg(
        capsys, "studies", "--input", kaggle, "--output", out, "--overwrite", "--with-labels"
    )
    assert code == 2 and str(saved) in errors[0] and "never replaced" in errors[0]
    assert {p: file_digest(p) for p in before} == before

    code, errors, _ = run_lggseg(capsys, "studies", "--input", kaggle, "--output", kaggle / "studies")
    assert code == 2 and "inside the input" in errors[0]
    code, errors, _ = run_lggseg(
        capsys, "studies", "--input", tmp_path / "missing", "--output", tmp_path / "x"
    )
    assert code == 2 and "missing" in errors[0] and not (tmp_path / "x").exists()
    code, errors, _ = run_lggseg(
        capsys, "studies", "--input", kaggle, "--output", tmp_path / "y", "--patients", "nobody"
    )
    assert code == 2 and "nobody" in errors[0] and not (tmp_path / "y").exists()


def test_studies_one_bad_patient_never_stops_the_others(tmp_path: Path, capsys) -> None:
    kaggle = write_synthetic_kaggle(tmp_path / "kaggle_3m", num_patients=3, seed=3, size=32, slices=(4, 5))
    names = sorted(p.name for p in kaggle.iterdir() if p.is_dir())
    broken = kaggle / names[1]
    next(broken.glob("*_1.tif")).write_bytes(b"not a tiff")
    code, errors, _ = run_lggseg(capsys, "studies", "--input", kaggle, "--output", tmp_path / "out")
    assert code == 1 and len(errors) == 1 and names[1] in errors[0] and "skipped" in errors[0]
    written = sorted(p.name for p in (tmp_path / "out").glob("*.nii.gz"))
    assert written == [f"{names[0]}.nii.gz", f"{names[2]}.nii.gz"]
    assert not list(tmp_path.glob(".out.lggseg-staging-*")), "the staging folder is removed"


# ----------------------------------------------------------------------------------------- app, in-process
@pytest.mark.slow
def test_app_imports_without_torchvision(tmp_path: Path) -> None:
    require_monailabel()
    studies, conf = str(tmp_path / "studies"), {"model_dir": str(tmp_path / "m")}
    code = f"""
import sys
sys.path.insert(0, {str(APP_DIR)!r})
import main
app = main.LGGSegApp({str(APP_DIR)!r}, {studies!r}, {conf!r})
info = app.info()
assert info["labels"] == {{"flair_abnormality": 1}}, info
assert sorted(info["strategies"]) == ["first", "random"], info
task = app._infers["lggseg"]
task.bundle_item("preprocessing"), task.bundle_item("inferer"), task.bundle_item("network_def")
bad = [m for m in {FORBIDDEN_MODULES!r} if m in sys.modules]
assert not bad, bad
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def _write_model(path: Path, seed: int = 0) -> Path:
    from pipeline.config import RunConfig
    from pipeline.model_files import MODEL_KEYS, create_network

    inference = json.loads((REPO_ROOT / "bundle" / "configs" / "inference.json").read_text())
    cfg = RunConfig.from_dict({k: inference[k] for k in MODEL_KEYS if k in inference})  # the shipped network
    torch.manual_seed(seed)
    network = create_network(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = json.loads(json.dumps(asdict(cfg), default=list))
    torch.save({"model": network.state_dict(), "config": config}, path)
    return path


@pytest.mark.slow
def test_missing_or_mismatched_weights_are_errors(app_lib, tmp_path: Path, kaggle_root: Path, capsys) -> None:
    from fastapi import HTTPException

    studies = tmp_path / "studies"
    assert run_lggseg(capsys, "studies", "--input", kaggle_root / A, "--output", studies)[0] == 0
    image = str(studies / f"{A}.nii.gz")

    def infer_with(model: Path) -> HTTPException:
        paths = app_lib.model_files.AppPaths(REPO_ROOT / "bundle", model, tmp_path / "finetuned")
        task = app_lib.infers.LGGSegInfer(paths, "cpu")
        with pytest.raises(HTTPException) as caught:
            task({"image": image})
        return caught.value

    assert infer_with(tmp_path / "none.pt").status_code == 503
    good = _write_model(tmp_path / "good.pt")
    weights = torch.load(good, weights_only=True)
    torch.save({"network_weights": weights["model"]}, tmp_path / "key.pt")
    error = infer_with(tmp_path / "key.pt")
    assert error.status_code == 503 and "'model'" in error.detail
    wrong = dict(weights["model"])
    wrong.pop(sorted(wrong)[0])
    torch.save({"model": wrong}, tmp_path / "missing_key.pt")
    error = infer_with(tmp_path / "missing_key.pt")
    assert error.status_code == 503 and "do not fit" in error.detail


def test_fine_tuning_never_targets_the_shipped_or_base_weights(app_lib, tmp_path: Path) -> None:
    from_conf = app_lib.model_files.AppPaths.from_conf
    default = from_conf(APP_DIR, {})
    assert default.finetuned_model == APP_DIR / "model" / "model.pt"
    assert default.base_model == SHIPPED_MODEL
    for conf in (
        {"model_dir": str(SHIPPED_MODEL.parent)},
        {"model": str(tmp_path / "a.pt"), "model_dir": str(tmp_path)},
    ):
        with pytest.raises(ValueError, match="would overwrite"):
            from_conf(APP_DIR, conf)


@pytest.mark.slow
@pytest.mark.skipif(not SHIPPED_MODEL.is_file(), reason="bundle/models/model.pt is not there yet")
def test_shipped_model_loads_strictly_and_segments(
    app_lib, tmp_path: Path, kaggle_root: Path, capsys
) -> None:
    studies = tmp_path / "studies"
    code, _, _ = run_lggseg(
        capsys, "studies", "--input", kaggle_root / HELD_OUT, "--output", studies, "--with-labels"
    )
    assert code == 0
    paths = app_lib.model_files.AppPaths(REPO_ROOT / "bundle", SHIPPED_MODEL, tmp_path / "finetuned")
    app_lib.model_files.load_weights(
        app_lib.infers.LGGSegInfer(paths, "cpu").bundle_item("network_def", lazy=False), SHIPPED_MODEL
    )
    task = app_lib.infers.LGGSegInfer(paths, "cpu")
    result, params = task({"image": str(studies / f"{HELD_OUT}.nii.gz")})
    assert params["model_file"] == str(SHIPPED_MODEL)
    assert 0.0 <= params["qc_score"] <= 1.0 and params["review"] in ("yes", "no")  # shown by Slicer
    assert isinstance(params["qc_flags"], str)
    truth = np.asanyarray(nib.load(studies / "labels" / "final" / f"{HELD_OUT}.nii.gz").dataobj)
    predicted = np.asanyarray(nib.load(result).dataobj)
    os.unlink(result)
    assert dice(predicted, truth) > 0.5


@pytest.mark.slow
def test_a_flair_alone_is_segmented_on_its_own_grid(app_lib, tmp_path: Path, external_root: Path) -> None:
    """What 3D Slicer uploads when a user loads their own scan: one FLAIR volume, any geometry."""
    flair = next((external_root / "tcia_raw" / "TCGA_FG_6692_20020606").glob("*_fla.nii.gz"))
    study = tmp_path / "TCGA_FG_6692.nii.gz"
    study.write_bytes(flair.read_bytes())
    assert app_lib.datastore.check_image_file(study)[0] == nib.load(flair).shape
    paths = app_lib.model_files.AppPaths(REPO_ROOT / "bundle", SHIPPED_MODEL, tmp_path / "finetuned")
    task = app_lib.infers.LGGSegInfer(paths, "cpu")
    result, _ = task({"image": str(study)})
    label = nib.load(result)
    voxels = int(np.asanyarray(label.dataobj).sum())
    os.unlink(result)
    assert label.shape == nib.load(flair).shape
    assert np.allclose(label.affine, nib.load(flair).affine, atol=1e-4)
    assert 500 < voxels < 20000  # the tumour (about 4,400 voxels)


# ------------------------------------------------------------------------------------------- real server
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """A MONAI Label server process serving ``apps/lggseg`` on 127.0.0.1."""

    def __init__(self, studies: Path, conf: dict[str, str], log: Path, tmp: Path | None = None) -> None:
        """Args: ``tmp``, the server's ``TMPDIR`` (default: ``server-tmp`` beside ``log``), so that nothing
        it writes there (MONAI Label's uploads, its logging config) is left in the machine's ``/tmp``."""
        self.port = _free_port()
        self.tmp = tmp or log.parent / "server-tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.url = f"http://127.0.0.1:{self.port}"
        self.studies, self.conf, self.log = studies, conf, log
        command = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(APP_DIR)]
        command += ["--studies", str(studies), "--host", "127.0.0.1", "--port", str(self.port)]
        for key, value in conf.items():
            command += ["--conf", key, value]
        self._log_handle = open(log, "wb")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TMPDIR": str(self.tmp)}
        self.process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=self._log_handle, stderr=subprocess.STDOUT
        )

    def log_tail(self, chars: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def wait_ready(self, deadline_s: float) -> None:
        import requests

        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the server exited with {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.url}/info/", timeout=10).status_code == 200:
                    return
            time.sleep(1.0)
        self.stop()
        pytest.fail(f"the server did not answer GET /info/ within {deadline_s} s:\n{self.log_tail()}")

    def stop(self, sig: int = signal.SIGINT, wait_s: float = 60) -> tuple[int | None, list]:
        """Stop the server (``sig``, then SIGKILL after ``wait_s``); returns its exit code and the child
        processes that outlived it (killed here)."""
        import psutil

        if self.process.poll() is not None:
            self._log_handle.close()
            return self.process.returncode, []
        children = psutil.Process(self.process.pid).children(recursive=True)
        self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(timeout=30)
            code = None if code is None else -9
        _, alive = psutil.wait_procs(children, timeout=10)
        for child in alive:
            with contextlib.suppress(psutil.Error):
                child.kill()
        self._log_handle.close()
        return code, alive


@pytest.fixture(scope="module")
def served(kaggle_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """The running server and its files: ``{"server", "made", "studies", "base", "model_dir"}``."""
    require_monailabel()
    root = tmp_path_factory.mktemp("monailabel")
    kaggle = _linked_kaggle(kaggle_root, root / "kaggle_3m", (A, B, C))
    made, studies = root / "made", root / "studies"
    assert lggseg(["studies", "--input", str(kaggle), "--output", str(made), "--with-labels"]) == 0
    # the served folder: A with its final label, B without (written beside A with --overwrite)
    common = ["studies", "--input", str(kaggle), "--output", str(studies), "--patients"]
    assert lggseg([*common, A, "--with-labels"]) == 0
    assert lggseg([*common, B, "--overwrite"]) == 0
    base = _write_model(root / "base" / "model.pt")
    model_dir = root / "finetuned"
    conf = {"model": str(base), "model_dir": str(model_dir), "device": "cpu", "epochs": "1"}
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(REQUEST_TIMEOUT_S)  # MONAI Label's client sets none
    server = Server(studies, conf, root / "server.log")
    try:
        server.wait_ready(START_DEADLINE_S)
        yield {"server": server, "made": made, "studies": studies, "base": base, "model_dir": model_dir}
    finally:
        server.stop()
        socket.setdefaulttimeout(previous_timeout)


@pytest.fixture(scope="module")
def client(served, tmp_path_factory: pytest.TempPathFactory):
    from monailabel.client import MONAILabelClient

    return MONAILabelClient(served["server"].url, tmpdir=str(tmp_path_factory.mktemp("client")))


@pytest.fixture(scope="module")
def uploaded(served, client) -> str:
    """Patient C uploaded as a new study (what Slicer's upload does)."""
    response = client.upload_image(str(served["made"] / f"{C}.nii.gz"), C)
    assert response["image"] == C
    return C


@pytest.fixture(scope="module")
def submitted(served, client, uploaded) -> Path:
    """C's ground truth submitted as its final label (Slicer's Submit Label)."""
    label = served["made"] / "labels" / "final" / f"{C}.nii.gz"
    response = client.save_label(C, str(label), tag="final")
    assert response["image"] == C and response["label"] == C
    return label


def _infer(client, image_id: str, params: dict | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    result, params = client.infer("lggseg", image_id, params or {})
    try:
        loaded = nib.load(result)
        return np.asanyarray(loaded.dataobj), loaded.affine, params
    finally:
        os.unlink(result)


@pytest.mark.slow
def test_info_lists_model_trainer_and_strategies(served, client) -> None:
    info = client.info()
    assert info["labels"] == {"flair_abnormality": 1}
    assert info["models"]["lggseg"]["dimension"] == 3 and info["models"]["lggseg"]["type"] == "segmentation"
    assert "lggseg" in info["trainers"] and sorted(info["strategies"]) == ["first", "random"]
    assert info["datastore"]["total"] == 2 and info["datastore"]["completed"] == 1


@pytest.mark.slow
def test_upload_then_infer_keeps_geometry(served, client, uploaded) -> None:
    image = nib.load(served["studies"] / f"{C}.nii.gz")
    label, affine, params = _infer(client, C)
    assert label.shape == image.shape[:3] and label.dtype == np.uint8
    assert np.allclose(affine, image.affine, atol=1e-5)
    assert set(np.unique(label).tolist()) <= {0, 1}
    assert Path(params["model_file"]) == served["base"].resolve()
    # what the Slicer plugin asks for: NRRD, uint8, same grid
    import SimpleITK as sitk

    result, _ = client.infer("lggseg", C, {"result_extension": ".nrrd", "result_dtype": "uint8"})
    nrrd, reference = sitk.ReadImage(result), sitk.ReadImage(str(served["studies"] / f"{C}.nii.gz"))
    os.unlink(result)
    assert nrrd.GetSize() == reference.GetSize()[:3] and nrrd.GetPixelID() == sitk.sitkUInt8
    assert np.allclose(nrrd.GetOrigin(), reference.GetOrigin()[:3])
    assert np.allclose(
        np.reshape(nrrd.GetDirection(), (3, 3)), np.reshape(reference.GetDirection(), (4, 4))[:3, :3]
    )
    assert np.array_equal(sitk.GetArrayFromImage(nrrd).transpose(2, 1, 0), label)


@pytest.mark.slow
def test_submitted_label_reads_back(served, client, submitted) -> None:
    stored = served["studies"] / "labels" / "final" / f"{C}.nii.gz"
    assert file_digest(stored) == file_digest(submitted)
    downloaded = client.download_label(C, "final")
    assert np.array_equal(
        np.asanyarray(nib.load(downloaded).dataobj), np.asanyarray(nib.load(submitted).dataobj)
    )
    os.unlink(downloaded)
    assert client.info()["datastore"]["completed"] == 2
    assert not [p for p in served["studies"].rglob("*") if ".partial" in p.name or ".tmp-" in p.name]


@pytest.mark.slow
def test_two_inferences_at_once(served, client, uploaded) -> None:
    from monailabel.client import MONAILabelClient

    expected = {image_id: _infer(client, image_id)[0] for image_id in (A, C)}
    results: dict[str, np.ndarray] = {}
    errors: list[BaseException] = []

    def run(image_id: str, tmpdir: Path) -> None:
        try:
            tmpdir.mkdir(exist_ok=True)
            results[image_id] = _infer(MONAILabelClient(served["server"].url, tmpdir=str(tmpdir)), image_id)[
                0
            ]
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i, served["studies"].parent / f"t{i}")) for i in (A, C)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=REQUEST_TIMEOUT_S)
    assert not errors and not any(t.is_alive() for t in threads), errors
    for image_id, label in expected.items():
        assert np.array_equal(results[image_id], label)


@pytest.mark.slow
def test_bad_requests_get_4xx_and_the_server_keeps_serving(served, uploaded, tmp_path: Path) -> None:
    import requests

    url, studies = served["server"].url, served["studies"]
    image = served["made"] / f"{B}.nii.gz"
    truth_a = studies / "labels" / "final" / f"{A}.nii.gz"
    kept = {p: file_digest(p) for p in (truth_a, studies / f"{A}.nii.gz", studies / f"{C}.nii.gz")}
    reference = nib.load(image)
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(image.read_bytes()[:4000])
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.uint8), reference.affine), tmp_path / "shape.nii.gz")
    pair = np.zeros((8, 8, 8, 2), np.uint8)  # neither a FLAIR alone (3D) nor a prepared study (3 channels)
    nib.save(nib.Nifti1Image(pair, reference.affine), tmp_path / "pair.nii.gz")
    nib.save(
        nib.Nifti1Image(np.full(reference.shape[:3], 2, np.uint8), reference.affine), tmp_path / "two.nii.gz"
    )
    nib.save(nib.Nifti1Image(np.zeros(reference.shape[:3], np.uint8), np.eye(4)), tmp_path / "moved.nii.gz")

    def send(method: str, path: str, field: str = "", file: Path | None = None, name: str = "") -> int:
        if file is None:  # the train endpoint reads a JSON body; the others read forms
            answer = requests.request(method, url + path, json={}, timeout=REQUEST_TIMEOUT_S)
        else:
            files = {field: (name or file.name, file.read_bytes())}
            answer = requests.request(
                method, url + path, files=files, data={"params": "{}"}, timeout=REQUEST_TIMEOUT_S
            )
        return answer.status_code

    label_url = f"/datastore/label?image={A}&tag=final"
    cases = {
        "unknown model": (send("POST", f"/infer/nosuchmodel?image={A}"), 404),
        "unknown image": (send("POST", "/infer/lggseg?image=nosuchimage"), 404),
        "a server path as image": (send("POST", "/infer/lggseg?image=/etc/hostname"), 404),
        "corrupt uploaded image": (send("PUT", "/datastore/?image=corrupt", "file", corrupt), 422),
        "corrupt image sent to infer": (send("POST", "/infer/lggseg", "file", corrupt), 422),
        "two-channel image upload": (
            send("PUT", "/datastore/?image=pair", "file", tmp_path / "pair.nii.gz"),
            422,
        ),
        "not NIfTI": (send("PUT", "/datastore/?image=notnifti", "file", image, "x.png"), 415),
        "unsafe name": (send("PUT", "/datastore/?image=../escaped", "file", image), 400),
        "unsafe name, encoded": (send("PUT", "/datastore/?image=..%2Fescaped2", "file", image), 400),
        "upload over a study": (send("PUT", f"/datastore/?image={A}", "file", image), 409),
        "label of the wrong shape": (send("PUT", label_url, "label", tmp_path / "shape.nii.gz"), 422),
        "label with value 2": (send("PUT", label_url, "label", tmp_path / "two.nii.gz"), 422),
        "label on another grid": (send("PUT", label_url, "label", tmp_path / "moved.nii.gz"), 422),
        "corrupt label": (send("PUT", label_url, "label", corrupt), 422),
        "unsafe label tag": (send("PUT", f"/datastore/label?image={A}&tag=../../x", "label", truth_a), 400),
        "label for an unknown image": (
            send("PUT", "/datastore/label?image=nobody&tag=final", "label", truth_a),
            404,
        ),
        "train an unknown model": (send("POST", "/train/nosuchmodel"), 404),
        "remove an unknown image": (send("DELETE", "/datastore/image?id=nobody"), 404),
    }
    wrong = {what: got for what, (got, want) in cases.items() if got != want}
    assert not wrong, wrong
    assert requests.get(f"{url}/info/", timeout=60).status_code == 200
    assert {p: file_digest(p) for p in kept} == kept, "a bad request changed a study or a label"
    assert not list(studies.parent.glob("escaped*")) and not (studies / "labels" / "x").exists()
    assert sorted(p.name for p in studies.glob("*.nii.gz")) == sorted(f"{i}.nii.gz" for i in (A, B, C))


@pytest.mark.slow
def test_next_sample_is_the_unlabelled_study(served, client, submitted) -> None:
    assert client.next_sample("first", {})["id"] == B
    assert client.next_sample("random", {})["id"] == B


@pytest.mark.slow
def test_training_publishes_weights_the_next_inference_uses(served, client, submitted) -> None:
    import requests

    url, model_dir, base = served["server"].url, served["model_dir"], served["base"]
    base_digest = file_digest(base)
    started = requests.post(f"{url}/train/lggseg", json={"max_epochs": 1, "volume_repeats": 1}, timeout=60)
    assert started.status_code == 200, started.text
    deadline = time.monotonic() + TRAIN_DEADLINE_S
    while True:
        status = requests.get(f"{url}/train/", timeout=60).json()
        if status["status"] not in ("SUBMITTED", "RUNNING") or time.monotonic() > deadline:
            break
        time.sleep(2.0)
    assert status["status"] == "DONE", (status, served["server"].log_tail())
    published = model_dir / "model.pt"
    assert published.is_file() and file_digest(base) == base_digest, "the base model is never written"
    new, old = torch.load(published, weights_only=True), torch.load(base, weights_only=True)
    assert new["model"].keys() == old["model"].keys()
    assert any(not torch.equal(new["model"][k], old["model"][k]) for k in old["model"])
    assert new["finetune"]["studies"] == 2 and new["finetune"]["epochs"] == 1
    assert not [p for p in model_dir.iterdir() if p.name.startswith(".")], "no temporary file is left"
    stats = client.info()["train_stats"]["lggseg"]
    assert stats["studies"] == 2 and Path(stats["model_file"]) == published.resolve()
    _, _, params = _infer(client, C)
    assert Path(params["model_file"]) == published.resolve()
    assert params["model_mtime"] == pytest.approx(published.stat().st_mtime)


@pytest.mark.slow
def test_server_stops_cleanly(served) -> None:
    server = served["server"]
    code, orphans = server.stop(signal.SIGINT)
    assert code == 0, server.log_tail()
    assert not orphans, f"processes outlived the server: {orphans}"
