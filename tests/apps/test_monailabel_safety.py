"""MONAI Label app: what nobody who can reach the server may do (issue 20, "Safety round 2").

One real MONAI Label server serves ``apps/lggseg`` on synthetic studies (no shared data needed), with small
upload limits (``--conf max_upload_mb 1 --conf max_voxels 300000``) and its own temporary folder
(``TMPDIR``), so that every test can check what is left there. The requests are the raw REST calls a
client could send. Each test asserts a property of the files (outside the studies folder intact, nothing
left in the temporary folder, file modes) as well as the status code.
"""

from __future__ import annotations

import gzip
import json
import os
import stat
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import app_on_path, file_digest, require_monailabel
from test_monailabel import Server, _write_model

from pipeline.cli import main as lggseg
from pipeline.ingestion.synthetic import write_synthetic_kaggle

START_DEADLINE_S = 240
TIMEOUT_S = 300
MAX_UPLOAD_MB = 1
MAX_VOXELS = 300_000


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _nifti_bytes(data: np.ndarray, affine: np.ndarray | None = None) -> bytes:
    """A ``.nii.gz`` file's bytes."""
    image = nib.Nifti1Image(data, np.eye(4) if affine is None else affine)
    return gzip.compress(image.to_bytes(), compresslevel=1)


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory):
    """The server and its folders: ``{"server", "url", "studies", "tmp", "outside", "ids", "model_dir"}``.

    The studies folder holds three synthetic studies with final labels, plus what a careless or hostile
    setup may hold: ``linked_file`` (a symlink to a study outside the folder), ``linked_folder.nii.gz`` (a
    symlink to a folder outside), a study whose final label is a symlink to a file outside, and a float
    study with a NaN voxel inside the brain.
    """
    require_monailabel()
    root = tmp_path_factory.mktemp("safety")
    kaggle = write_synthetic_kaggle(root / "kaggle_3m", num_patients=3, seed=5, size=64, slices=(8, 9))
    studies = root / "studies"
    assert lggseg(["studies", "--input", str(kaggle), "--output", str(studies), "--with-labels"]) == 0
    ids = sorted(p.name[: -len(".nii.gz")] for p in studies.glob("*.nii.gz"))
    outside = root / "outside"
    (outside / "folder").mkdir(parents=True)
    (outside / "folder" / "precious.txt").write_text("never deleted by the server\n")
    (outside / "study.nii.gz").write_bytes((studies / f"{ids[0]}.nii.gz").read_bytes())
    (outside / "label.nii.gz").write_bytes((studies / "labels" / "final" / f"{ids[0]}.nii.gz").read_bytes())
    (studies / "linked_file.nii.gz").symlink_to(outside / "study.nii.gz")
    (studies / "linked_folder.nii.gz").symlink_to(outside / "folder", target_is_directory=True)
    label = studies / "labels" / "final" / f"{ids[1]}.nii.gz"
    label.unlink()
    label.symlink_to(outside / "label.nii.gz")
    # a float study with one NaN voxel in the middle of the brain
    study = nib.load(studies / f"{ids[2]}.nii.gz")
    data = np.asanyarray(study.dataobj).astype(np.float32)
    data[32, 32, data.shape[2] // 2, :] = np.nan
    nib.save(nib.Nifti1Image(data, study.affine), studies / "nan_study.nii.gz")

    base = _write_model(root / "base" / "model.pt")
    model_dir = root / "finetuned"
    tmp = root / "tmp"
    tmp.mkdir()
    conf = {
        "model": str(base),
        "model_dir": str(model_dir),
        "device": "cpu",
        "epochs": "1",
        "max_upload_mb": str(MAX_UPLOAD_MB),
        "max_voxels": str(MAX_VOXELS),
    }
    server = Server(studies, conf, root / "server.log", tmp=tmp)  # tmp: the server's temporary folder
    try:
        server.wait_ready(START_DEADLINE_S)
        yield {
            "server": server,
            "url": server.url,
            "studies": studies,
            "tmp": tmp,
            "outside": outside,
            "ids": ids,
            "model_dir": model_dir,
            "root": root,
        }
    finally:
        server.stop()


def _request(guarded: dict, method: str, path: str, **kwargs):
    import requests

    return requests.request(method, guarded["url"] + path, timeout=TIMEOUT_S, **kwargs)


def _upload(guarded: dict, path: str, name: str, content: bytes, field: str = "file", params: str = "{}"):
    return _request(
        guarded,
        "PUT" if "datastore" in path else "POST",
        path,
        files={field: (name, content)},
        data={"params": params},
    )


def _infer(guarded: dict, query: str = "", params: dict | str | None = None, file: bytes | None = None):
    files = {"file": ("upload.nii.gz", file)} if file is not None else None
    params = params if isinstance(params, str) else json.dumps(params or {})
    return _request(guarded, "POST", f"/infer/lggseg{query}", files=files, data={"params": params})


def _wait_for_training(guarded: dict, deadline_s: float = 600) -> dict:
    deadline = time.monotonic() + deadline_s
    while True:
        answer = _request(guarded, "GET", "/train/")
        status = answer.json() if answer.status_code == 200 else {"status": "NONE"}
        if status.get("status") not in ("SUBMITTED", "RUNNING") or time.monotonic() > deadline:
            return status
        time.sleep(2.0)


# ------------------------------------------------------------------------------------------- item 1
@pytest.mark.slow
def test_delete_never_reaches_outside_the_studies_folder(guarded) -> None:
    outside, studies, ids = guarded["outside"], guarded["studies"], guarded["ids"]
    before = {p: file_digest(p) for p in _files(outside)}
    answers = {
        "study linked to a file": _request(guarded, "DELETE", "/datastore/image?id=linked_file").status_code,
        "study linked to a folder": _request(
            guarded, "DELETE", "/datastore/image?id=linked_folder"
        ).status_code,
        "label linked to a file": _request(
            guarded, "DELETE", f"/datastore/label?id={ids[1]}&tag=final"
        ).status_code,
    }
    assert {p: file_digest(p) for p in _files(outside)} == before, answers
    assert (outside / "folder" / "precious.txt").is_file()
    # the entries in the studies folder (the links) are what was removed
    assert answers == dict.fromkeys(answers, 200), answers
    for link in ("linked_file.nii.gz", "linked_folder.nii.gz", f"labels/final/{ids[1]}.nii.gz"):
        assert not (studies / link).is_symlink() and not (studies / link).exists(), link
    assert (studies / f"{ids[1]}.nii.gz").is_file(), "removing a label keeps its image"


# ------------------------------------------------------------------------------------------- item 6
@pytest.mark.slow
def test_infer_refuses_any_server_path(guarded) -> None:
    ids = guarded["ids"]
    planted = guarded["tmp"] / "x.nii.gz"  # a valid study in the server's temporary folder
    planted.write_bytes((guarded["studies"] / f"{ids[0]}.nii.gz").read_bytes())
    try:
        answers = {
            "query": _infer(guarded, f"?image={planted}").status_code,
            "params": _infer(guarded, f"?image={ids[0]}", {"image": str(planted)}).status_code,
            "params with an upload": _infer(
                guarded, "", {"image": str(planted)}, (guarded["studies"] / f"{ids[0]}.nii.gz").read_bytes()
            ).status_code,
            "a study file by path": _infer(
                guarded, f"?image={guarded['studies'] / (ids[0] + '.nii.gz')}"
            ).status_code,
        }
        assert answers == dict.fromkeys(answers, 404), answers
        assert _infer(guarded, f"?image={ids[0]}").status_code == 200  # a study id is served
        # a file sent with the request is segmented, whatever name the client gives it (the file replaces it)
        study = (guarded["studies"] / f"{ids[0]}.nii.gz").read_bytes()
        assert _infer(guarded, "?image=my_scan", {}, study).status_code == 200
    finally:
        planted.unlink()


# ------------------------------------------------------------------------------------------- item 7
@pytest.mark.slow
def test_rejected_uploads_leave_nothing_in_the_temporary_folder(guarded) -> None:
    tmp, ids, studies = guarded["tmp"], guarded["ids"], guarded["studies"]
    before = _files(tmp)
    image = (studies / f"{ids[0]}.nii.gz").read_bytes()
    pair = _nifti_bytes(np.zeros((8, 8, 8, 2), np.uint8))
    bad_label = _nifti_bytes(np.zeros((4, 4, 4), np.uint8))
    answers = {
        "not NIfTI": (_upload(guarded, "/datastore/?image=notnifti", "x.png", image).status_code, 415),
        "corrupt": (_upload(guarded, "/datastore/?image=corrupt", "c.nii.gz", image[:3000]).status_code, 422),
        "two channels": (_upload(guarded, "/datastore/?image=pair", "p.nii.gz", pair).status_code, 422),
        "existing id": (_upload(guarded, f"/datastore/?image={ids[0]}", "e.nii.gz", image).status_code, 409),
        "label shape": (
            _upload(
                guarded, f"/datastore/label?image={ids[0]}&tag=final", "l.nii.gz", bad_label, "label"
            ).status_code,
            422,
        ),
        "label not NIfTI": (
            _upload(
                guarded, f"/datastore/label?image={ids[0]}&tag=final", "l.png", bad_label, "label"
            ).status_code,
            415,
        ),
        "infer corrupt": (_infer(guarded, "", {}, image[:3000]).status_code, 422),
        "infer two channels": (_infer(guarded, "", {}, pair).status_code, 422),
    }
    assert {k: got for k, (got, _) in answers.items()} == {k: want for k, (_, want) in answers.items()}
    left = _files(tmp) - before
    assert not left, f"rejected uploads left {sorted(map(str, left))}"


# ------------------------------------------------------------------------------------------- item 8
@pytest.mark.slow
def test_uploads_over_the_size_or_voxel_limit_get_413(guarded) -> None:
    tmp, ids, studies = guarded["tmp"], guarded["ids"], guarded["studies"]
    before_tmp, before_studies = _files(tmp), _files(studies)
    big = os.urandom(int((MAX_UPLOAD_MB + 0.25) * 2**20))

    def chunks():
        boundary = b"--lggsegboundary\r\n"
        yield boundary + b'Content-Disposition: form-data; name="file"; filename="big.nii.gz"\r\n\r\n'
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]
        yield b"\r\n--lggsegboundary--\r\n"

    # a gzip bomb: a small file that decompresses to more voxels than the budget (a 3D FLAIR otherwise)
    bomb = _nifti_bytes(np.zeros((80, 80, 80), np.uint8))
    assert len(bomb) < 100_000 and 80**3 > MAX_VOXELS
    answers = {
        "big upload": _upload(guarded, "/datastore/?image=big", "big.nii.gz", big),
        "big upload, chunked": _request(
            guarded,
            "PUT",
            "/datastore/?image=chunked",
            data=chunks(),
            headers={"Content-Type": "multipart/form-data; boundary=lggsegboundary"},
        ),
        "big infer upload": _infer(guarded, "", {}, big),
        "big label": _upload(guarded, f"/datastore/label?image={ids[0]}&tag=final", "l.nii.gz", big, "label"),
        "bomb upload": _upload(guarded, "/datastore/?image=bomb", "bomb.nii.gz", bomb),
        "bomb infer": _infer(guarded, "", {}, bomb),
        "bomb label": _upload(
            guarded, f"/datastore/label?image={ids[0]}&tag=final", "b.nii.gz", bomb, "label"
        ),
    }
    codes = {what: answer.status_code for what, answer in answers.items()}
    assert codes == dict.fromkeys(answers, 413), codes
    # a body over the limit is refused while it arrives (never stored whole), a bomb before it is unpacked
    details = {what: answer.json()["detail"] for what, answer in answers.items()}
    assert all("request body" in details[w] for w in answers if w.startswith("big")), details
    assert all("voxels" in details[w] for w in answers if w.startswith("bomb")), details
    assert _files(tmp) - before_tmp == set() and _files(studies) == before_studies


# ------------------------------------------------------------------------------------------- item 9
@pytest.mark.slow
def test_nan_input_is_422_and_nan_weights_503(guarded) -> None:
    ids, studies, model_dir = guarded["ids"], guarded["studies"], guarded["model_dir"]
    study = nib.load(studies / f"{ids[0]}.nii.gz")
    data = np.asanyarray(study.dataobj).astype(np.float32)
    data[32, 32, data.shape[2] // 2, 1] = np.inf
    with_inf = _nifti_bytes(data, study.affine)
    assert _infer(guarded, "?image=nan_study").status_code == 422
    assert _infer(guarded, "", {}, with_inf).status_code == 422
    assert _upload(guarded, "/datastore/?image=with_inf", "i.nii.gz", with_inf).status_code == 422

    bad = _write_model(guarded["root"] / "nan_model.pt", seed=1)
    checkpoint = torch.load(bad, weights_only=True)
    first = sorted(k for k, v in checkpoint["model"].items() if v.is_floating_point())[0]
    checkpoint["model"][first].view(-1)[0] = float("nan")
    model_dir.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, model_dir / "model.pt")
    try:
        answer = _infer(guarded, f"?image={ids[0]}")
        assert answer.status_code == 503, answer.text[:500]
        assert "NaN" in answer.json()["detail"] or "finite" in answer.json()["detail"]
    finally:
        (model_dir / "model.pt").unlink()
    assert _infer(guarded, f"?image={ids[0]}").status_code == 200


# ------------------------------------------------------------------------------------------ item 16
@pytest.mark.slow
def test_bad_parameters_get_4xx(guarded) -> None:
    ids = guarded["ids"]
    image = (guarded["studies"] / f"{ids[0]}.nii.gz").read_bytes()
    info = {"info": "{}"}
    answers = {
        "infer params not JSON": (_infer(guarded, f"?image={ids[0]}", "{not json").status_code, 422),
        "infer params a list": (_infer(guarded, f"?image={ids[0]}", "[1]").status_code, 422),
        "infer params a string": (_infer(guarded, f"?image={ids[0]}", '"ab"').status_code, 422),
        "result_extension": (
            _infer(guarded, f"?image={ids[0]}", {"result_extension": "/../x"}).status_code,
            422,
        ),
        "result_dtype": (_infer(guarded, f"?image={ids[0]}", {"result_dtype": "nonsense"}).status_code, 422),
        "upload params not JSON": (
            _upload(guarded, "/datastore/?image=fresh", "f.nii.gz", image, params="{nope").status_code,
            422,
        ),
        "upload params a list": (
            _upload(guarded, "/datastore/?image=fresh", "f.nii.gz", image, params="[2]").status_code,
            422,
        ),
        "image info of an unknown id": (
            _request(guarded, "PUT", "/datastore/image/info?image=nobody", data=info).status_code,
            404,
        ),
        "label info of an unknown id": (
            _request(guarded, "PUT", "/datastore/label/info?label=nobody&tag=final", data=info).status_code,
            404,
        ),
        "image info not JSON": (
            _request(
                guarded, "PUT", f"/datastore/image/info?image={ids[0]}", data={"info": "{x"}
            ).status_code,
            422,
        ),
        "unknown strategy": (_request(guarded, "POST", "/activelearning/nosuch", json={}).status_code, 404),
        "train max_epochs=-1": (
            _request(guarded, "POST", "/train/lggseg", json={"max_epochs": -1}).status_code,
            422,
        ),
        "train learning_rate=abc": (
            _request(guarded, "POST", "/train/lggseg", json={"learning_rate": "abc"}).status_code,
            422,
        ),
        "train bundle_path": (
            _request(guarded, "POST", "/train/lggseg", json={"bundle_path": "/tmp"}).status_code,
            422,
        ),
    }
    _wait_for_training(guarded)  # a request accepted by mistake must not outlive the test
    assert {k: got for k, (got, _) in answers.items()} == {k: want for k, (_, want) in answers.items()}
    assert not (guarded["studies"] / "fresh.nii.gz").exists()
    assert _request(guarded, "GET", "/info/").status_code == 200


# ------------------------------------------------------------------------------------------ item 21
@pytest.mark.slow
def test_uploaded_files_keep_the_usual_permissions(guarded) -> None:
    studies, ids = guarded["studies"], guarded["ids"]
    image = (studies / f"{ids[0]}.nii.gz").read_bytes()
    label = (studies / "labels" / "final" / f"{ids[0]}.nii.gz").read_bytes()
    assert _upload(guarded, "/datastore/?image=permissions", "p.nii.gz", image).status_code == 200
    answer = _upload(guarded, "/datastore/label?image=permissions&tag=final", "p.nii.gz", label, "label")
    assert answer.status_code == 200
    want = 0o666 & ~_umask()
    for path in (studies / "permissions.nii.gz", studies / "labels" / "final" / "permissions.nii.gz"):
        assert stat.S_IMODE(path.stat().st_mode) == want, (path, oct(path.stat().st_mode))
    assert _request(guarded, "DELETE", "/datastore/image?id=permissions").status_code == 200


# ------------------------------------------------------------------------------------------ item 20
@pytest.mark.slow
def test_a_damaged_study_is_skipped_and_the_failure_names_each_cause(guarded) -> None:
    """Last: it damages studies (the training's data) on disk. A study the training cannot read is skipped
    with one line naming it and its cause (a truncated gzip stream), and the others train; when no study is
    left, the training fails and its status names each one's cause, not MONAI's wrapper."""
    studies, ids = guarded["studies"], guarded["ids"]
    _wait_for_training(guarded)
    damaged = studies / f"{ids[2]}.nii.gz"
    damaged.write_bytes(damaged.read_bytes()[:2000])  # truncated: the training cannot read it
    answer = _request(guarded, "POST", "/train/lggseg", json={"max_epochs": 1, "volume_repeats": 1})
    assert answer.status_code == 200, answer.text
    status = _wait_for_training(guarded)
    assert status["status"] == "DONE", status
    stats = _request(guarded, "GET", "/info/").json()["train_stats"]["lggseg"]
    lines = [line for line in stats["skipped"] if line.startswith(f"{ids[2]}: ")]
    assert len(lines) == 1 and "Compressed file ended" in lines[0] and "\n" not in lines[0], stats
    assert stats["studies"] >= 1 and stats["epochs"] == 1

    # every labelled study unusable: the training fails, naming each one
    objects = _request(guarded, "GET", "/datastore/?output=all").json()["objects"]
    labelled = [i for i, obj in objects.items() if "final" in obj.get("labels", {})]
    for image_id in labelled:
        study = studies / f"{image_id}.nii.gz"
        if study.is_file() and not study.is_symlink():
            study.write_bytes(study.read_bytes()[:2000])
    answer = _request(guarded, "POST", "/train/lggseg", json={"max_epochs": 1})
    assert answer.status_code == 200, answer.text
    status = _wait_for_training(guarded)
    assert status["status"] == "ERROR", status
    # the training process's last error line (the status shows the last 20 lines of its output; a warning
    # at interpreter exit may follow)
    errors = [line for line in status["details"] if line.startswith("monailabel.interfaces.exception.")]
    assert errors, status["details"]
    assert "no study could be used for fine-tuning" in errors[-1] and "Compressed file ended" in errors[-1]
    assert all(f"{image_id}: " in errors[-1] for image_id in labelled), errors[-1]
    assert "Failed to instantiate" not in errors[-1]


def test_limits_come_from_the_conf(tmp_path: Path) -> None:
    require_monailabel()
    with app_on_path():
        from lib.server import ServerLimits
    default = ServerLimits.from_conf({})
    assert default.max_upload_bytes == 512 * 2**20 and default.max_voxels == 512**3 * 4
    limits = ServerLimits.from_conf({"max_upload_mb": "1.5", "max_voxels": "1000"})
    assert limits.max_upload_bytes == int(1.5 * 2**20) and limits.max_voxels == 1000
    for conf in ({"max_upload_mb": "0"}, {"max_voxels": "-1"}, {"max_upload_mb": "many"}):
        with pytest.raises(ValueError, match=next(iter(conf))):
            ServerLimits.from_conf(conf)
