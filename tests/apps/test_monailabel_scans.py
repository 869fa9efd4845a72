"""MONAI Label app: a user's own scans as a folder study (issue 18, "MONAI Label and 3D Slicer").

A scan case folder (one NIfTI file or DICOM series per sequence) copied into the studies folder is one study,
id = the folder's name: listed by the datastore, segmented by the app's inference task through the
pipeline's own chain (the label on the FLAIR's grid), its submitted label checked against that grid and
saved as ``labels/final/<id>.nii.gz``; the server never writes into or removes the folder. Fine-tuning trains
on folder studies and on a FLAIR alone with the input the inference uses (issue "Slicer: Train fails after
the walkthrough"). The in-process tests use the app's ``lib`` (as ``tests/apps/test_monailabel.py`` does); one
slow test makes the REST calls of 3D Slicer against a real server.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from helpers import REPO_ROOT, require_monailabel, tree_digests, write_dicom_series
from test_monailabel import SHIPPED_MODEL, Server, _write_model

CASE = "TCGA_XX_0001_20200101"  # a folder study of NIfTI sequences
DICOM_CASE = "CASE_DICOM"  # a folder study whose FLAIR is a DICOM series
FILE_STUDY = "flair_alone"  # a study file: a FLAIR alone
DU_7294 = "TCGA_DU_7294_19890104"
START_DEADLINE_S = 240
TIMEOUT_S = 600


_digests = functools.partial(tree_digests, links=True)  # every file under a folder, links as links


def _oblique_affine() -> np.ndarray:
    """1.1 x 1.0 x 4 mm voxels, rotated 20 degrees about z and 10 about x, origin off-centre."""
    a, b = np.deg2rad(20.0), np.deg2rad(10.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag([1.1, -1.0, 4.0])
    affine[:3, 3] = (-30.0, 40.0, -12.0)
    return affine


def _phantom(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """An int16 head-like volume (an ellipsoid with a bright blob), scanner-like values (negative too)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    head = (grid**2).sum(0) < 0.8
    blob = ((grid - np.array([0.3, 0.2, 0.0])[:, None, None, None]) ** 2).sum(0) < 0.05
    data = 400.0 * head + 900.0 * blob + rng.normal(0, 20, shape) - 100.0
    return data.astype(np.int16)


def write_scan_case(folder: Path, shape: tuple[int, int, int] = (40, 48, 12)) -> nib.Nifti1Image:
    """A scan case folder of ``*_fla``, ``*_t1``, ``*_t1c`` int16 NIfTI files on one oblique grid, plus a
    note (ignored by recognition).

    Returns:
        the FLAIR image.
    """
    folder.mkdir(parents=True)
    affine = _oblique_affine()
    flair = None
    for seed, sequence in enumerate(("fla", "t1", "t1c")):
        image = nib.Nifti1Image(_phantom(shape, seed), affine)
        image.set_qform(affine, code=1)
        image.set_sform(affine, code=1)
        nib.save(image, folder / f"{folder.name}_{sequence}.nii.gz")
        flair = flair or image
    (folder / "notes.txt").write_text("scanned on a Tuesday\n")
    return flair


@pytest.fixture
def studies(tmp_path: Path) -> Path:
    """A studies folder: a folder study of NIfTI sequences, a FLAIR alone as a file, and folders that are
    not studies (notes only; a link to a case folder outside; a case whose FLAIR is a link outside)."""
    root = tmp_path / "studies"
    write_scan_case(root / CASE)
    flair = nib.load(root / CASE / f"{CASE}_fla.nii.gz")
    nib.save(flair, root / f"{FILE_STUDY}.nii.gz")
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("not a study\n")
    outside = tmp_path / "outside"
    write_scan_case(outside / "OTHER_CASE")
    (root / "linked_case").symlink_to(outside / "OTHER_CASE", target_is_directory=True)
    (root / "LINKED_FLAIR").mkdir()
    (root / "LINKED_FLAIR" / "x_fla.nii.gz").symlink_to(outside / "OTHER_CASE" / "OTHER_CASE_fla.nii.gz")
    return root


def _store(app_lib, root: Path, auto_reload: bool = False):
    return app_lib.datastore.CheckedDatastore(
        str(root), extensions=("*.nii.gz", "*.nii"), auto_reload=auto_reload
    )


def _label_file(path: Path, shape: tuple[int, ...], affine: np.ndarray, value: int = 1) -> Path:
    data = np.zeros(shape, np.uint8)
    data[tuple(slice(n // 3, n // 2 + 1) for n in shape)] = value
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def test_a_scan_case_folder_is_one_study(app_lib, studies: Path, tmp_path: Path) -> None:
    from fastapi import HTTPException

    outside_before = _digests(tmp_path / "outside")
    store = _store(app_lib, studies)
    assert sorted(store.list_images()) == sorted([CASE, FILE_STUDY])  # not notes/, nor the links out
    listed = store.json()["objects"]
    assert listed[CASE]["image"]["ext"] == "" and listed[CASE]["image"]["info"]["kind"] == "scans"
    assert Path(store.get_image_uri(CASE)) == (studies / CASE).resolve()
    assert store.is_folder_study(CASE) and not store.is_folder_study(FILE_STUDY)
    before = _digests(studies / CASE)

    # a label is checked against the FLAIR's grid, then saved in the usual labels folder
    flair = nib.load(studies / CASE / f"{CASE}_fla.nii.gz")
    good = _label_file(tmp_path / "good.nii.gz", flair.shape, flair.affine)
    assert store.save_label(CASE, str(good), "final", {}) == CASE
    saved = studies / "labels" / "final" / f"{CASE}.nii.gz"
    assert np.array_equal(np.asarray(nib.load(saved).dataobj), np.asarray(nib.load(good).dataobj))
    assert store.datalist() == [{"image": str((studies / CASE).resolve()), "label": str(saved.resolve())}]
    shifted = flair.affine.copy()
    shifted[:3, 3] += 2.0
    for wrong in (
        _label_file(tmp_path / "shape.nii.gz", (40, 48, 11), flair.affine),
        _label_file(tmp_path / "grid.nii.gz", flair.shape, shifted),
        _label_file(tmp_path / "values.nii.gz", flair.shape, flair.affine, value=2),
    ):
        with pytest.raises(HTTPException) as caught:
            store.save_label(CASE, str(wrong), "final", {})
        assert caught.value.status_code == 422, wrong.name

    # removing the study is refused (the server did not write the folder); its label can be removed
    with pytest.raises(HTTPException) as caught:
        store.remove_image(CASE)
    assert caught.value.status_code == 409 and CASE in store.list_images() and saved.is_file()
    store.remove_label(CASE, "final")
    assert not saved.exists() and CASE in store.list_images()
    assert _digests(studies / CASE) == before
    assert _digests(tmp_path / "outside") == outside_before

    # a folder that loses its FLAIR-like files, or gains a link out, is no longer a study (files kept)
    (studies / CASE / f"{CASE}_fla.nii.gz").rename(tmp_path / "moved_fla.nii.gz")
    for name in ("t1", "t1c"):
        (studies / CASE / f"{CASE}_{name}.nii.gz").rename(tmp_path / f"moved_{name}.nii.gz")
    store.refresh()
    assert CASE not in store.list_images() and (studies / CASE / "notes.txt").is_file()


def test_a_folder_copied_in_while_serving_is_listed(app_lib, studies: Path, tmp_path: Path) -> None:
    store = _store(app_lib, studies, auto_reload=True)
    assert "LATE_CASE" not in store.list_images()
    write_scan_case(tmp_path / "LATE_CASE")
    shutil.copytree(tmp_path / "LATE_CASE", studies / "LATE_CASE")
    assert "LATE_CASE" in store.json()["objects"]  # GET /datastore/?output=all looks again
    (studies / "LATE_CASE" / "evil").symlink_to(tmp_path / "outside")
    assert "LATE_CASE" not in store.json()["objects"]
    assert (studies / "LATE_CASE" / "LATE_CASE_fla.nii.gz").is_file()


def test_a_file_study_keeps_its_id_over_a_folder_of_the_same_name(app_lib, tmp_path: Path) -> None:
    root = tmp_path / "studies"
    flair = write_scan_case(root / CASE)
    nib.save(flair, root / f"{CASE}.nii.gz")
    store = _store(app_lib, root)
    assert store.list_images() == [CASE] and not store.is_folder_study(CASE)


def _corners(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The world positions of a grid's 8 corner voxels, sorted (independent of the axes' directions)."""
    corners = np.array(
        [[i, j, k, 1] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)]
    )
    return np.array(sorted(map(tuple, np.round((affine @ corners.T).T[:, :3], 3))))


def _infer(app_lib, store, image_id: str, model: Path, tmp_path: Path) -> nib.Nifti1Image:
    """What ``POST /infer/lggseg?image=<id>`` runs: the datastore's image path into the app's task."""
    paths = app_lib.model_files.AppPaths(REPO_ROOT / "bundle", model, tmp_path / "finetuned")
    task = app_lib.infers.LGGSegInfer(paths, "cpu")
    result, _ = task({"image": store.get_image_uri(image_id)})
    label = nib.load(result)
    label = nib.Nifti1Image(np.asarray(label.dataobj), label.affine)
    os.unlink(result)
    return label


@pytest.mark.slow
def test_folder_studies_are_segmented_on_their_flair_grid(app_lib, studies: Path, tmp_path: Path) -> None:
    dicom = studies / DICOM_CASE
    flair = sitk.ReadImage(str(studies / CASE / f"{CASE}_fla.nii.gz"))
    write_dicom_series(flair, dicom / "flair", "AX FLAIR")
    before = [_digests(studies / CASE), _digests(dicom)]
    store = _store(app_lib, studies)
    assert {CASE, DICOM_CASE} <= set(store.list_images())
    model = _write_model(tmp_path / "model.pt")
    nifti_flair = nib.load(studies / CASE / f"{CASE}_fla.nii.gz")
    label = _infer(app_lib, store, CASE, model, tmp_path)
    assert label.shape == nifti_flair.shape
    assert np.allclose(label.affine, nifti_flair.affine, atol=1e-4)
    assert set(np.unique(np.asarray(label.dataobj)).tolist()) <= {0, 1}
    # a DICOM FLAIR: the label on the series' grid, as the pipeline reads it (and as it is checked)
    shape, affine = app_lib.scan_studies.flair_grid(dicom)
    label = _infer(app_lib, store, DICOM_CASE, model, tmp_path)
    assert label.shape == shape == nifti_flair.shape
    assert np.allclose(label.affine, affine, atol=1e-4)
    # the same voxels in space as the NIfTI FLAIR (DICOM orders the slices along its own normal)
    assert np.allclose(_corners(affine, shape), _corners(nifti_flair.affine, shape), atol=1e-3)
    label_path = tmp_path / "dicom_label.nii.gz"
    nib.save(label, label_path)
    assert store.save_label(DICOM_CASE, str(label_path), "final", {}) == DICOM_CASE
    assert (studies / "labels" / "final" / f"{DICOM_CASE}.nii.gz").is_file()
    # a viewer gets the FLAIR as NIfTI in its scratch folder: a copy of the file, or of the DICOM series
    (tmp_path / "v1").mkdir()
    copy = store.viewable_image(CASE, tmp_path / "v1")
    assert tmp_path / "v1" in copy.parents
    assert copy.read_bytes() == (studies / CASE / f"{CASE}_fla.nii.gz").read_bytes()
    (tmp_path / "v2").mkdir()
    copy = store.viewable_image(DICOM_CASE, tmp_path / "v2")
    assert tmp_path / "v2" in copy.parents and nib.load(copy).shape == shape
    assert [_digests(studies / CASE), _digests(dicom)] == before  # the scans are never written


def _labelled_studies(app_lib, studies: Path, tmp_path: Path):
    """The ``studies`` fixture's folder study and FLAIR alone with a final label, plus ``BROKEN``: a folder
    study whose FLAIR is truncated (listed: its name says FLAIR), labelled too."""
    broken = studies / "BROKEN"
    write_scan_case(broken)
    fla = broken / "BROKEN_fla.nii.gz"
    fla.write_bytes(fla.read_bytes()[:3000])
    store = _store(app_lib, studies)
    assert {CASE, FILE_STUDY, "BROKEN"} <= set(store.list_images())
    flair = nib.load(studies / CASE / f"{CASE}_fla.nii.gz")
    for image_id in (CASE, FILE_STUDY):
        label = _label_file(tmp_path / f"{image_id}_label.nii.gz", flair.shape, flair.affine)
        assert store.save_label(image_id, str(label), "final", {}) == image_id
    label = _label_file(tmp_path / "broken_label.nii.gz", flair.shape, flair.affine)
    (studies / "labels" / "final" / "BROKEN.nii.gz").write_bytes(label.read_bytes())
    store.refresh()
    assert sorted(store.get_labeled_images()) == sorted([CASE, FILE_STUDY, "BROKEN"])
    return store


def test_training_inputs_are_the_inference_inputs(app_lib, studies: Path, tmp_path: Path) -> None:
    """A FLAIR alone and a folder study give the input the inference builds (the FLAIR standing in for T1
    and T1c), on the model's grid, with the label on that grid; an unusable study is skipped in one line."""
    store = _labelled_studies(app_lib, studies, tmp_path)
    before = _digests(studies)
    inputs = app_lib.training_inputs.training_inputs(store, tmp_path / "scratch")
    assert len(inputs.skipped) == 1 and inputs.skipped[0].startswith("BROKEN: ")
    assert "BROKEN_fla.nii.gz" in inputs.skipped[0] and "\n" not in inputs.skipped[0]
    assert sorted(d["case"] for d in inputs.datalist) == sorted([CASE, FILE_STUDY])
    paths = app_lib.model_files.AppPaths(REPO_ROOT / "bundle", tmp_path / "none.pt", tmp_path / "finetuned")
    preprocessing = app_lib.infers.LGGSegInfer(paths, "cpu").bundle_item("preprocessing")
    from pipeline.ingestion.cases import find_cases

    for entry in inputs.datalist:
        image, label = nib.load(entry["image"]), nib.load(entry["label"])
        data = np.asarray(image.dataobj)
        mask = np.asarray(label.dataobj)
        assert data.ndim == 4 and data.shape[-1] == 3 and data.dtype == np.float32
        assert mask.shape == data.shape[:3] and set(np.unique(mask).tolist()) == {0, 1}
        assert np.allclose(label.affine, image.affine)
        # the inference's own input of that study: same grid (shape and affine)
        source = studies / CASE if entry["case"] == CASE else studies / f"{FILE_STUDY}.nii.gz"
        seen = preprocessing(find_cases(source)[0])["image"]
        assert tuple(seen.shape) == (3, *data.shape[:3])
        assert np.allclose(np.asarray(seen.affine), image.affine, atol=1e-4)
        if entry["case"] == FILE_STUDY:  # a FLAIR alone: the FLAIR stands in for T1 and T1c
            assert np.array_equal(data[..., 0], data[..., 1]) and np.array_equal(data[..., 2], data[..., 1])
        else:  # a folder study: its own T1 and T1c
            assert not np.array_equal(data[..., 0], data[..., 1])
    assert _digests(studies) == before  # the studies are read, never written


@pytest.mark.slow
def test_training_uses_a_flair_alone_and_a_folder_study(app_lib, studies: Path, tmp_path: Path) -> None:
    """The walkthrough's Train after Submit on one's own FLAIR: training finishes, both studies used, the
    unusable one skipped with its line in the figures."""
    store = _labelled_studies(app_lib, studies, tmp_path)
    model = _write_model(tmp_path / "base.pt")
    paths = app_lib.model_files.AppPaths(REPO_ROOT / "bundle", model, tmp_path / "finetuned")
    request = {"max_epochs": 1, "volume_repeats": 1, "batch_size": 4, "num_samples": 2}
    stats = app_lib.trainers.LGGSegTrain(paths, "cpu")(request, store)
    assert stats["studies"] == 2 and stats["epochs"] == 1
    assert len(stats["skipped"]) == 1 and stats["skipped"][0].startswith("BROKEN: ")
    published = tmp_path / "finetuned" / "model.pt"
    assert published.is_file()
    assert (
        json.loads((tmp_path / "finetuned" / "train_stats.json").read_text())["skipped"] == stats["skipped"]
    )
    assert not [p for p in (tmp_path / "finetuned").iterdir() if p.name.startswith(".")], "scratch removed"


def test_training_with_no_usable_study_names_each_cause(app_lib, studies: Path, tmp_path: Path) -> None:
    from monailabel.interfaces.exception import MONAILabelException

    store = _labelled_studies(app_lib, studies, tmp_path)
    for image_id in (CASE, FILE_STUDY):
        (studies / "labels" / "final" / f"{image_id}.nii.gz").unlink()
    store.refresh()
    model = _write_model(tmp_path / "base.pt")
    paths = app_lib.model_files.AppPaths(REPO_ROOT / "bundle", model, tmp_path / "finetuned")
    with pytest.raises(MONAILabelException) as caught:
        app_lib.trainers.LGGSegTrain(paths, "cpu")({"max_epochs": 1}, store)
    message = caught.value.msg
    assert message.startswith("no study could be used for fine-tuning: BROKEN: ") and "\n" not in message
    assert "BROKEN_fla.nii.gz" in message
    assert not (tmp_path / "finetuned" / "model.pt").exists()


@pytest.mark.slow
@pytest.mark.skipif(not SHIPPED_MODEL.is_file(), reason="bundle/models/model.pt is not there yet")
def test_a_real_case_folder_gets_its_tumour(app_lib, tmp_path: Path, external_root: Path) -> None:
    """TCGA_DU_7294 as BraTS delivers it (240 x 240 x 155, LPS, skull-stripped) copied into the studies."""
    source = external_root / "brats_style" / DU_7294
    root = tmp_path / "studies"
    shutil.copytree(source, root / DU_7294)
    before = _digests(root / DU_7294)
    store = _store(app_lib, root)
    assert store.list_images() == [DU_7294]
    label = _infer(app_lib, store, DU_7294, SHIPPED_MODEL, tmp_path)
    flair = nib.load(next(source.glob("*_fla*.nii.gz")))
    assert label.shape == flair.shape == (240, 240, 155)
    assert np.allclose(label.affine, flair.affine, atol=1e-4)
    mask = np.asarray(label.dataobj) > 0
    reference = np.asarray(
        nib.load(external_root / "brats_style_reference" / f"{DU_7294}_fusion.nii.gz").dataobj
    )
    whole = reference > 0
    dice = 2 * float((mask & whole).sum()) / float(mask.sum() + whole.sum())
    print(f"{DU_7294}: {int(mask.sum())} voxels, whole-tumour Dice {dice:.3f} against the BraTS fusion")
    assert mask.sum() > 1000 and dice > 0.3
    assert _digests(root / DU_7294) == before


# ------------------------------------------------------------------------------------------- real server
@pytest.mark.slow
def test_slicer_calls_on_a_folder_study(tmp_path: Path) -> None:
    """The REST calls of 3D Slicer's MONAI Label panel on a folder study, through MONAI Label's client:
    listed, Next Sample (the FLAIR file's path), image download, Run, Submit; DELETE refused (409) with the
    folder intact."""
    require_monailabel()
    import requests
    from monailabel.client import MONAILabelClient

    studies = tmp_path / "studies"
    flair = write_scan_case(studies / CASE)
    flair_path = studies / CASE / f"{CASE}_fla.nii.gz"
    write_dicom_series(sitk.ReadImage(str(flair_path)), studies / DICOM_CASE / "flair", "AX FLAIR")
    before = _digests(studies / CASE)
    model = _write_model(tmp_path / "model.pt")
    conf = {"model": str(model), "model_dir": str(tmp_path / "finetuned"), "device": "cpu"}
    server = Server(studies, conf, tmp_path / "server.log")
    try:
        server.wait_ready(START_DEADLINE_S)
        client = MONAILabelClient(server.url, tmpdir=str(tmp_path / "client"))
        (tmp_path / "client").mkdir()
        assert {CASE, DICOM_CASE} <= set(client.datastore()["objects"]), server.log_tail()
        # a DICOM FLAIR: no file to open, Slicer downloads it (a NIfTI copy on the series' grid)
        sample = client.next_sample("first", {})
        assert (
            sample["id"] == DICOM_CASE and sample["path"] == "" and sample["name"] == f"{DICOM_CASE}.nii.gz"
        )
        answer = requests.get(
            f"{server.url}/datastore/image", params={"image": DICOM_CASE}, timeout=TIMEOUT_S
        )
        assert answer.status_code == 200, answer.text
        (tmp_path / "downloaded.nii.gz").write_bytes(answer.content)
        downloaded = nib.load(tmp_path / "downloaded.nii.gz")
        assert downloaded.shape == flair.shape
        dicom_label = _label_file(tmp_path / "dicom_label.nii.gz", downloaded.shape, downloaded.affine)
        assert client.save_label(DICOM_CASE, str(dicom_label), tag="final")["image"] == DICOM_CASE
        # a NIfTI FLAIR: Slicer opens the file itself (the server is on its machine)
        sample = client.next_sample("first", {})
        assert sample["id"] == CASE and Path(sample["path"]) == flair_path.resolve()
        answer = requests.get(f"{server.url}/datastore/image", params={"image": CASE}, timeout=TIMEOUT_S)
        assert answer.status_code == 200 and answer.content == flair_path.read_bytes()
        result, _ = client.infer("lggseg", CASE, {})
        label = nib.load(result)
        assert label.shape == flair.shape and np.allclose(label.affine, flair.affine, atol=1e-4)
        submitted = _label_file(tmp_path / "submitted.nii.gz", flair.shape, flair.affine)
        assert client.save_label(CASE, str(submitted), tag="final")["image"] == CASE
        saved = studies / "labels" / "final" / f"{CASE}.nii.gz"
        assert np.array_equal(np.asarray(nib.load(saved).dataobj), np.asarray(nib.load(submitted).dataobj))
        answer = requests.delete(f"{server.url}/datastore/", params={"id": CASE}, timeout=TIMEOUT_S)
        assert answer.status_code == 409, answer.text
        assert CASE in client.datastore()["objects"]
        assert _digests(studies / CASE) == before and saved.is_file()
    finally:
        server.stop()
