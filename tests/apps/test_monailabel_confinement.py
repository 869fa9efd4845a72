"""MONAI Label app: every read stays inside the studies folder, whatever changes there while the server runs.

Listing refuses folder studies with a link leading outside (``tests/apps/test_monailabel_scans.py``); these
tests change the studies folder *after* the datastore listed it (as a user, or another process, may while the
server runs): a study or a label swapped for a symlink, a folder study's FLAIR, sub-folder or DICOM file
turned into a link to a file outside (``/etc/passwd``), a whole folder study replaced by a link. Each read
(inference, download, the grid a label is checked against, fine-tuning's input) must then answer 403 in one
line and read nothing outside; links that stay inside the studies folder are still followed. The in-process
tests use the app's ``lib`` without refreshing the datastore, so the read-time check is what answers; one
slow test makes the REST calls against a real server.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import nibabel as nib
import pytest
import SimpleITK as sitk
from helpers import REPO_ROOT, require_monailabel, tree_digests, write_dicom_series
from test_monailabel import Server, _write_model
from test_monailabel_scans import CASE, DICOM_CASE, FILE_STUDY, _label_file, _store, write_scan_case

START_DEADLINE_S = 240
TIMEOUT_S = 300
SECRET = Path("/etc/passwd")  # a file outside every studies folder


def _studies(tmp_path: Path) -> tuple[Path, Path]:
    """A studies folder (a folder study of NIfTI files, one of a DICOM FLAIR series in ``flair/``, a FLAIR
    alone with its final label) and an ``outside`` folder holding other scans (never to be read)."""
    root, outside = tmp_path / "studies", tmp_path / "outside"
    flair = write_scan_case(root / CASE)
    write_dicom_series(
        sitk.ReadImage(str(root / CASE / f"{CASE}_fla.nii.gz")), root / DICOM_CASE / "flair", "AX FLAIR"
    )
    nib.save(flair, root / f"{FILE_STUDY}.nii.gz")
    (root / "labels" / "final").mkdir(parents=True)
    _label_file(root / "labels" / "final" / f"{FILE_STUDY}.nii.gz", flair.shape, flair.affine)
    other = write_scan_case(outside / "OTHER", shape=(36, 40, 10))
    nib.save(other, outside / "other.nii.gz")
    _label_file(outside / "label.nii.gz", other.shape, other.affine)
    shutil.copytree(root / DICOM_CASE / "flair", outside / "flair_series")
    return root, outside


def _swap(path: Path, target: Path) -> None:
    """Replace ``path`` (a file or a folder) with a symlink to ``target``."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
    path.symlink_to(target, target_is_directory=target.is_dir())


def _refused(call, *args) -> str:
    """The one-line detail of the 403 that ``call(*args)`` must answer."""
    from fastapi import HTTPException

    with pytest.raises(HTTPException) as caught:
        call(*args)
    assert caught.value.status_code == 403, caught.value.detail
    assert "\n" not in caught.value.detail and "outside the studies folder" in caught.value.detail
    return caught.value.detail


def _every_read_refused(app_lib, store, image_id: str, tmp_path: Path) -> None:
    """Copy, download, label grid and inference of ``image_id`` all answer 403; nothing is copied."""
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    _refused(store.readable_study, image_id, scratch)
    _refused(store.viewable_image, image_id, scratch)
    _refused(store.study_grid, image_id)
    paths = app_lib.model_files.AppPaths(REPO_ROOT / "bundle", tmp_path / "none.pt", tmp_path / "finetuned")
    task = app_lib.infers.LGGSegInfer(paths, "cpu", studies=store.root)
    _refused(task, {"image": store.get_image_uri(image_id)})
    assert not [p for p in scratch.rglob("*") if p.is_file()], "nothing was copied"


def test_a_study_file_swapped_for_a_link_is_refused(app_lib, tmp_path: Path) -> None:
    root, outside = _studies(tmp_path)
    store = _store(app_lib, root)  # the server has started: the study is listed
    assert FILE_STUDY in store.list_images()
    _swap(root / f"{FILE_STUDY}.nii.gz", outside / "other.nii.gz")
    _every_read_refused(app_lib, store, FILE_STUDY, tmp_path)
    _refused(store.get_image, FILE_STUDY)
    _refused(store.get_dataset_archive, None)  # GET /datastore/dataset


@pytest.mark.parametrize("change", ["flair file", "sub-folder", "dicom file", "whole folder"])
def test_a_folder_study_changed_into_links_is_refused(app_lib, tmp_path: Path, change: str) -> None:
    root, outside = _studies(tmp_path)
    store = _store(app_lib, root)
    assert {CASE, DICOM_CASE} <= set(store.list_images())
    if change == "whole folder":
        shutil.copytree(root / CASE, outside / CASE)
    before = tree_digests(outside, links=True)
    if change == "flair file":
        image_id = CASE
        _swap(root / CASE / f"{CASE}_fla.nii.gz", outside / "other.nii.gz")
    elif change == "sub-folder":
        image_id = DICOM_CASE
        _swap(root / DICOM_CASE / "flair", outside / "flair_series")
    elif change == "dicom file":
        image_id = DICOM_CASE
        first = sorted((root / DICOM_CASE / "flair").iterdir())[0]
        _swap(first, SECRET)
    else:
        image_id = CASE
        _swap(root / CASE, outside / CASE)
    _every_read_refused(app_lib, store, image_id, tmp_path)
    assert tree_digests(outside, links=True) == before


def test_a_label_swapped_for_a_link_is_refused(app_lib, tmp_path: Path) -> None:
    root, outside = _studies(tmp_path)
    store = _store(app_lib, root)
    assert store.get_labeled_images() == [FILE_STUDY]
    _swap(root / "labels" / "final" / f"{FILE_STUDY}.nii.gz", outside / "label.nii.gz")
    (tmp_path / "scratch").mkdir()
    _refused(store.readable_label, FILE_STUDY, "final", tmp_path / "scratch")
    _refused(store.get_label, FILE_STUDY, "final")
    # fine-tuning skips it with one line, and never fails on it
    inputs = app_lib.training_inputs.training_inputs(store, tmp_path / "train")
    assert inputs.datalist == [] and len(inputs.skipped) == 1
    assert (
        inputs.skipped[0].startswith(f"{FILE_STUDY}: ") and "outside the studies folder" in inputs.skipped[0]
    )


def test_fine_tuning_skips_a_study_swapped_for_a_link(app_lib, tmp_path: Path) -> None:
    root, outside = _studies(tmp_path)
    flair = nib.load(root / CASE / f"{CASE}_fla.nii.gz")
    store = _store(app_lib, root)
    store.save_label(CASE, str(_label_file(tmp_path / "l.nii.gz", flair.shape, flair.affine)), "final", {})
    _swap(root / CASE / f"{CASE}_t1.nii.gz", SECRET)
    inputs = app_lib.training_inputs.training_inputs(store, tmp_path / "train")
    assert [d["case"] for d in inputs.datalist] == [FILE_STUDY]
    assert len(inputs.skipped) == 1 and inputs.skipped[0].startswith(f"{CASE}: ")
    assert "outside the studies folder" in inputs.skipped[0]


def test_links_inside_the_studies_folder_are_still_read(app_lib, tmp_path: Path) -> None:
    root, _ = _studies(tmp_path)
    (root / "again.nii.gz").symlink_to(root / f"{FILE_STUDY}.nii.gz")
    (root / "SERIES").mkdir()
    (root / "SERIES" / "flair").symlink_to(root / DICOM_CASE / "flair", target_is_directory=True)
    store = _store(app_lib, root)
    assert {"again", "SERIES"} <= set(store.list_images())
    (tmp_path / "a").mkdir()
    copy = store.readable_study("again", tmp_path / "a")
    assert copy.read_bytes() == (root / f"{FILE_STUDY}.nii.gz").read_bytes()
    (tmp_path / "b").mkdir()
    copy = store.readable_study("SERIES", tmp_path / "b")
    assert sorted(p.name for p in (copy / "flair").iterdir()) == sorted(
        p.name for p in (root / DICOM_CASE / "flair").iterdir()
    )
    assert store.study_grid("SERIES")[0] == nib.load(root / f"{FILE_STUDY}.nii.gz").shape


def test_a_link_swapped_in_after_the_path_was_checked_is_never_followed(
    app_lib, tmp_path: Path, monkeypatch
) -> None:
    """The race: the path is resolved and found inside, then a component becomes a link before it is opened.
    Opening component by component with ``O_NOFOLLOW`` refuses it (simulated: the check sees the old path)."""
    confined = app_lib.confined
    root, outside = _studies(tmp_path)
    root = root.resolve()

    def resolved_before_the_swap(base: Path, path) -> Path:
        return Path(os.path.abspath(path)).relative_to(base)

    monkeypatch.setattr(confined, "_relative_inside", resolved_before_the_swap)
    _swap(root / f"{FILE_STUDY}.nii.gz", SECRET)
    with pytest.raises(confined.OutsideStudiesError, match="changed into a link"):
        confined.copy_file_inside(root, root / f"{FILE_STUDY}.nii.gz", tmp_path / "copy.nii.gz")
    shutil.copytree(root / CASE, outside / CASE)
    _swap(root / CASE, outside / CASE)
    with pytest.raises(confined.OutsideStudiesError, match="changed into a link"):
        confined.copy_file_inside(root, root / CASE / f"{CASE}_fla.nii.gz", tmp_path / "copy2.nii.gz")
    with pytest.raises(confined.OutsideStudiesError, match="changed into a link"):
        confined.snapshot_folder(root, root / CASE, tmp_path / "snap")
    assert not (tmp_path / "copy.nii.gz").exists() and not (tmp_path / "copy2.nii.gz").exists()


# ------------------------------------------------------------------------------------------- real server
@pytest.mark.slow
def test_the_server_refuses_links_added_after_it_started(tmp_path: Path) -> None:
    """The REST calls that read a study or a label, after the studies folder changed under the running
    server: 403 in one line, nothing from outside in the answer; the server keeps serving the others."""
    require_monailabel()
    import requests

    root, outside = _studies(tmp_path)
    model = _write_model(tmp_path / "model.pt")
    conf = {"model": str(model), "model_dir": str(tmp_path / "finetuned"), "device": "cpu"}
    server = Server(root, conf, tmp_path / "server.log")
    try:
        server.wait_ready(START_DEADLINE_S)
        url = server.url

        def call(method: str, path: str, **params) -> requests.Response:
            return requests.request(method, f"{url}{path}", params=params, timeout=TIMEOUT_S)

        assert call("POST", "/infer/lggseg", image=FILE_STUDY).status_code == 200
        secret, other = SECRET.read_bytes(), (outside / "other.nii.gz").read_bytes()
        digest = hashlib.sha256(other).hexdigest()

        def refused(answers: dict[str, requests.Response], infer_may_be_404: bool = False) -> None:
            for what, answer in answers.items():
                allowed = (403, 404) if infer_may_be_404 and answer.request.method == "POST" else (403,)
                assert answer.status_code in allowed, (what, answer.status_code, server.log_tail())
                assert secret not in answer.content and other not in answer.content, what
                if answer.request.method != "HEAD":
                    detail = answer.json()["detail"]
                    assert "\n" not in detail, (what, detail)
                    if answer.status_code == 403:
                        assert "outside the studies folder" in detail, (what, detail)

        # a DICOM file of a folder study swapped for a link to /etc/passwd: the download reads it (403);
        # inference first refreshes the listing (MONAI Label asks the app's info), which drops the folder
        # study as soon as it holds a link leading out: 404, or 403 at the read
        _swap(sorted((root / DICOM_CASE / "flair").iterdir())[0], SECRET)
        refused(
            {
                "download a DICOM study with a link to /etc": call(
                    "GET", "/datastore/image", image=DICOM_CASE
                ),
                "infer a DICOM study with a link to /etc": call("POST", "/infer/lggseg", image=DICOM_CASE),
            },
            infer_may_be_404=True,
        )
        # a study file and its label swapped for links to files outside: still listed (the files exist)
        _swap(root / f"{FILE_STUDY}.nii.gz", outside / "other.nii.gz")
        _swap(root / "labels" / "final" / f"{FILE_STUDY}.nii.gz", outside / "label.nii.gz")
        refused(
            {
                "infer a swapped study": call("POST", "/infer/lggseg", image=FILE_STUDY),
                "download a swapped study": call("GET", "/datastore/image", image=FILE_STUDY),
                "checksum of a swapped study": call(
                    "HEAD", "/datastore/image", image=FILE_STUDY, check_sum=digest
                ),
                "download a swapped label": call("GET", "/datastore/label", label=FILE_STUDY, tag="final"),
                "the dataset archive": call("GET", "/datastore/dataset"),
            }
        )
        # the others are still served
        assert call("GET", "/info/").status_code == 200
        answer = call("GET", "/datastore/image", image=CASE)
        assert (
            answer.status_code == 200 and answer.content == (root / CASE / f"{CASE}_fla.nii.gz").read_bytes()
        )
        assert call("POST", "/infer/lggseg", image=CASE).status_code == 200
    finally:
        server.stop()
