"""Fault injection for the user's input data (issue 20, items 4, 9, 10, 14 and 17).

- a label corrected in MONAI Label / 3D Slicer and saved under lggseg's name is the user's: ``studies
  --overwrite`` keeps it byte for byte;
- NaN or Inf voxels, one-slice volumes, wrong channel counts, truncated, empty and non-gzip NIfTI files
  fail that case in one line naming the file (``failures.json``), while the other cases still run;
- a named pipe among the inputs is never opened (it would block the reader forever): the tests release a
  blocked reader after a while, so that they fail instead of hanging.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
from helpers import REPO_ROOT
from helpers import prepare_args as _prepare
from helpers import run_lggseg as _run
from helpers import tree_digests as _digest
from monai.data import DataLoader, Dataset
from monai.transforms import Compose

from pipeline.engines import error_line
from pipeline.ingestion.cases import find_cases
from pipeline.ingestion.errors import LGGDataError
from pipeline.ingestion.kaggle import read_patient_folder
from pipeline.ingestion.nifti import load_label_volume
from pipeline.ingestion.scan_cases import make_scan_case
from pipeline.safety import MANIFEST_FILENAME, owned_files, write_manifest
from pipeline.transforms import LoadVolumed

SMALL_REAL_PATIENT = "TCGA_HT_A616_19991226"
MODEL_CHANNELS = "3 (pre-contrast, FLAIR, post-contrast)"


# ------------------------------------------------------------------------------------------------ helpers


@contextlib.contextmanager
def fifo_guard(*fifos: Path, after: float = 20.0) -> Iterator[dict[str, bool]]:
    """Fail rather than hang: from ``after`` seconds on, open each FIFO for writing without blocking and close
    it at once, so a reader blocked on it gets end-of-file; ``state["hung"]`` tells it happened."""
    state = {"hung": False}
    stop = threading.Event()

    def release() -> None:
        if stop.wait(after):
            return
        while not stop.is_set():
            for fifo in fifos:
                try:
                    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                except OSError:  # ENXIO: nobody reads it
                    continue
                state["hung"] = True
                os.close(fd)
            stop.wait(0.2)

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        stop.set()
        thread.join()


def _brain(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """A float32 (H, W, D, 3) volume: a noisy bright ellipsoid (the brain) on a zero background."""
    h, w, d = shape
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    inside = (yy**2 / 0.7 + xx**2 / 0.5) < 1
    rng = np.random.default_rng(seed)
    volume = np.zeros((h, w, d, 3), np.float32)
    volume[inside] = 100 + 20 * rng.standard_normal((int(inside.sum()), d, 3))
    return volume


def _nifti(path: Path, array: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(array, np.diag([-1.0, -1.0, 1.0, 1.0])), path)
    return path


def _bad_volumes(folder: Path) -> dict[str, tuple[Path, str]]:
    """Bad NIfTI images in ``folder``: ``{case: (path, what its one-line error says)}``."""
    folder.mkdir(parents=True, exist_ok=True)
    good = _brain((32, 32, 6))
    nan, inf = good.copy(), good.copy()
    nan[16, 16, 3, 1] = np.nan  # one voxel, inside the brain
    inf[12:20, 12:20, 2:4, :] = np.inf
    _nifti(folder / "nan.nii.gz", nan)
    _nifti(folder / "inf.nii.gz", inf)
    _nifti(folder / "oneslice.nii.gz", good[:, :, 2:3].copy())
    _nifti(folder / "twochannels.nii.gz", good[..., :2].copy())
    data = _nifti(folder / "whole.nii.gz", good).read_bytes()
    (folder / "truncated.nii.gz").write_bytes(data[: len(data) // 2])
    (folder / "empty.nii.gz").write_bytes(b"")
    (folder / "notgzip.nii.gz").write_bytes(gzip.decompress(data))
    (folder / "whole.nii.gz").unlink()
    return {
        "nan": (folder / "nan.nii.gz", "1 voxels are NaN or Inf"),
        "inf": (folder / "inf.nii.gz", "384 voxels are NaN or Inf"),
        "oneslice": (folder / "oneslice.nii.gz", "1 slice of 32x32; a volume needs at least 2 slices"),
        "twochannels": (folder / "twochannels.nii.gz", f"2 channels, the model needs {MODEL_CHANNELS}"),
        "truncated": (folder / "truncated.nii.gz", "truncated or corrupt file"),
        "empty": (folder / "empty.nii.gz", "empty file (0 bytes)"),
        "notgzip": (folder / "notgzip.nii.gz", "not gzip-compressed although named .gz"),
    }


def _one_slice_patient(root: Path) -> Path:
    """A raw Kaggle patient folder of one slice."""
    patient = root / "TCGA_CS_ONE1_20000101"
    patient.mkdir(parents=True)
    image = np.clip(_brain((32, 32, 1))[:, :, 0], 0, 255).astype(np.uint8)
    tifffile.imwrite(patient / f"{patient.name}_1.tif", image)
    tifffile.imwrite(patient / f"{patient.name}_1_mask.tif", np.zeros((32, 32), np.uint8))
    return patient


def _one_line_naming(error: BaseException | str, path: Path, fragment: str) -> str:
    text = error if isinstance(error, str) else str(error)
    assert "\n" not in text and "applying transform" not in text and "Traceback" not in text, text
    assert str(path) in text and fragment in text, (fragment, text)
    return text


# ------------------------------------------------------------------ item 4: studies keep a user's label


def _correct_label(path: Path) -> None:
    """What MONAI Label / 3D Slicer do: save a corrected label under the same name."""
    image = nib.load(path)
    label = np.asarray(image.dataobj).copy()
    label[4:12, 4:12, 1] = 1 - label[4:12, 4:12, 1]
    nib.save(nib.Nifti1Image(label, image.affine, image.header), path)


def _studies(kaggle: Path, output: Path, *extra: object) -> list[object]:
    return ["studies", "--input", kaggle, "--output", output, "--with-labels", *extra]


def test_studies_overwrite_keeps_a_label_corrected_by_the_user(kaggle: Path, tmp_path: Path, capsys) -> None:
    output = tmp_path / "studies"
    assert _run(capsys, *_studies(kaggle, output))[0] == 0
    code, lines, err = _run(capsys, *_studies(kaggle, output, "--overwrite"))  # unchanged: replaced
    assert code == 0 and not lines, err
    patients = sorted(p.name for p in kaggle.iterdir() if p.is_dir())
    corrected = output / "labels" / "final" / f"{patients[0]}.nii.gz"
    _correct_label(corrected)
    before = _digest(tmp_path)

    code, lines, err = _run(capsys, *_studies(kaggle, output, "--overwrite"))
    assert code == 2, err
    assert len(lines) == 1 and str(corrected) in lines[0] and "changed since lggseg wrote it" in lines[0], err
    assert _digest(tmp_path) == before, "nothing written, the corrected label kept byte for byte"

    # the other patients can still be written; the corrected label stays the user's
    code, lines, err = _run(capsys, *_studies(kaggle, output, "--overwrite", "--patients", *patients[1:]))
    assert code == 0 and not lines, err
    key = str(corrected.relative_to(tmp_path))
    assert _digest(tmp_path)[key] == before[key]
    code, lines, err = _run(capsys, *_studies(kaggle, output, "--overwrite"))
    assert code == 2 and str(corrected) in lines[0], err


def test_studies_written_before_the_content_record_keep_a_corrected_label(
    kaggle: Path, tmp_path: Path, capsys
) -> None:
    """A studies folder of an earlier version (its manifest lists names only): a file that differs from what
    the run would write is the user's; identical files are replaced."""
    output = tmp_path / "studies"
    assert _run(capsys, *_studies(kaggle, output))[0] == 0
    ours = sorted(rel for rel in owned_files(output) if rel.endswith(".nii.gz"))
    for extra in set(p.name for p in output.iterdir() if p.is_file()) - {MANIFEST_FILENAME, *ours}:
        (output / extra).unlink()  # what an earlier version wrote: the studies and the manifest
    write_manifest(output, ours, command="studies", replace=True)
    code, lines, err = _run(capsys, *_studies(kaggle, output, "--overwrite"))
    assert code == 0 and not lines, err

    for extra in set(p.name for p in output.iterdir() if p.is_file()) - {MANIFEST_FILENAME, *ours}:
        (output / extra).unlink()
    write_manifest(output, ours, command="studies", replace=True)
    corrected = output / ours[-1]
    _correct_label(corrected)
    before = _digest(tmp_path)
    code, lines, err = _run(capsys, *_studies(kaggle, output, "--overwrite"))
    assert code == 2 and len(lines) == 1 and str(corrected) in lines[0], err
    assert _digest(tmp_path) == before


# ------------------------------------------------- items 9, 10, 17: bad volumes fail in one line at load
@pytest.mark.parametrize("case", ["nan", "inf", "oneslice", "twochannels", "truncated", "empty", "notgzip"])
def test_bad_volume_is_one_line_naming_the_file(tmp_path: Path, case: str) -> None:
    path, fragment = _bad_volumes(tmp_path / "bad")[case]
    before = _digest(tmp_path)
    with pytest.raises(LGGDataError) as caught:
        LoadVolumed(["image"])({"image": str(path), "case": case})
    _one_line_naming(caught.value, path, fragment)
    assert _digest(tmp_path) == before


def test_one_slice_kaggle_folder_is_refused_at_load(tmp_path: Path) -> None:
    patient = _one_slice_patient(tmp_path / "kaggle_3m")
    with pytest.raises(LGGDataError) as caught:
        LoadVolumed(["image"])({"image": str(patient)})
    _one_line_naming(caught.value, patient, "1 slice of 32x32; a volume needs at least 2 slices")


def test_nan_voxel_in_the_brain_of_a_real_patient(kaggle_root: Path, tmp_path: Path) -> None:
    volume = read_patient_folder(kaggle_root / SMALL_REAL_PATIENT)
    image = volume.image.transpose(1, 2, 3, 0).astype(np.float32)  # (H, W, D, 3), as prepare writes it
    brain = np.argwhere(image[..., 1] > 0)
    i, j, k = brain[len(brain) // 2]
    image[i, j, k, 1] = np.nan
    path = tmp_path / f"{SMALL_REAL_PATIENT}.nii.gz"
    nib.save(nib.Nifti1Image(image, volume.affine), path)
    with pytest.raises(LGGDataError) as caught:
        LoadVolumed(["image"])({"image": str(path)})
    _one_line_naming(caught.value, path, "1 voxels are NaN or Inf")


def test_error_line_of_a_loader_worker_names_the_file(tmp_path: Path) -> None:
    """With loader worker processes the error comes back as the worker's traceback text."""
    path, fragment = _bad_volumes(tmp_path / "bad")["truncated"]
    loader = DataLoader(Dataset([{"image": str(path)}], Compose([LoadVolumed(["image"])])), num_workers=1)
    with pytest.raises(Exception) as caught:
        next(iter(loader))
    line = _one_line_naming(error_line(caught.value), path, fragment)
    assert line.startswith(str(path)), line


@pytest.mark.slow
def test_infer_fails_each_bad_case_in_one_line_and_writes_the_others(tmp_path: Path) -> None:
    cases = tmp_path / "cases"
    bad = _bad_volumes(cases)
    _nifti(cases / "good.nii.gz", np.clip(_brain((32, 32, 6), seed=3), 0, 255).astype(np.uint8))
    one_slice = _one_slice_patient(tmp_path / "kaggle_3m")
    bad[one_slice.name] = (one_slice, "1 slice of 32x32")
    before = _digest(tmp_path)
    output = tmp_path / "out"
    command = [sys.executable, "-m", "pipeline.cli", "infer", "--input", str(cases), str(one_slice)]
    command += ["--output", str(output), "--device", "cpu", "--num-workers", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 1, run.stderr
    assert (output / "good" / "good_seg.nii.gz").is_file(), run.stderr
    failures = {f["case"]: f for f in json.loads((output / "failures.json").read_text())}
    assert sorted(failures) == sorted(bad), failures
    for case, (path, fragment) in bad.items():
        _one_line_naming(failures[case]["error"], path, fragment)
        mentions = [line for line in run.stderr.splitlines() if str(path) in line]
        assert len(mentions) == 1, mentions  # one log line per failed case
    for noise in ("Traceback", "terminating due to exception", "unable to load", "applying transform"):
        assert noise not in run.stderr, run.stderr
    folders = [p for p in output.rglob("*") if p.is_dir()]
    assert all(any(p.iterdir()) for p in folders), "an empty case folder was left"
    assert {p.name for p in folders} == {"good"}, folders
    assert {k: v for k, v in _digest(tmp_path).items() if not k.startswith("out")} == before


# --------------------------------------------------------------------- item 14: named pipes are not read
def test_prepare_with_a_fifo_slice_does_not_hang(kaggle: Path, tmp_path: Path, capsys) -> None:
    patient = sorted(p for p in kaggle.iterdir() if p.is_dir())[0]
    fifo = patient / f"{patient.name}_5.tif"
    fifo.unlink(missing_ok=True)
    os.mkfifo(fifo)
    with fifo_guard(fifo) as state:
        code, lines, err = _run(capsys, *_prepare(kaggle, tmp_path / "out"))
    assert not state["hung"], "prepare opened the named pipe"
    assert code == 1 and any(f"{fifo.name}: not a regular file" in line for line in lines), err


def test_studies_with_a_fifo_does_not_hang(kaggle: Path, tmp_path: Path, capsys) -> None:
    patient = sorted(p for p in kaggle.iterdir() if p.is_dir())[0]
    fifo = patient / f"{patient.name}_1_mask.tif"
    fifo.unlink()
    os.mkfifo(fifo)
    with fifo_guard(fifo) as state:
        code, lines, err = _run(capsys, "studies", "--input", kaggle, "--output", tmp_path / "studies")
    assert not state["hung"], "studies opened the named pipe"
    assert code == 1 and f"{fifo.name}: not a regular file" in err, err


def test_fifo_prepared_image_data_csv_label_and_case(kaggle: Path, tmp_path: Path, capsys) -> None:
    prepared = tmp_path / "prepared"
    assert _run(capsys, *_prepare(kaggle, prepared))[0] == 0
    patient = sorted(p for p in prepared.iterdir() if p.is_dir())[0]
    image, label = patient / "image.nii.gz", patient / "label.nii.gz"
    image.unlink()
    os.mkfifo(image)
    with fifo_guard(image) as state:
        code, lines, err = _run(capsys, "studies", "--input", prepared, "--output", tmp_path / "studies")
        assert code == 1 and f"{image}: not a regular file" in err, err
        with pytest.raises(LGGDataError, match="not a regular file"):
            LoadVolumed(["image"])({"image": str(image)})
    assert not state["hung"], "the prepared image (a named pipe) was opened"

    label.unlink()
    os.mkfifo(label)
    with fifo_guard(label) as state:
        with pytest.raises(LGGDataError, match="not a regular file"):
            load_label_volume(label)
    assert not state["hung"], "the label (a named pipe) was opened"

    csv = kaggle / "data.csv"
    csv.unlink()
    os.mkfifo(csv)
    with fifo_guard(csv) as state:
        code, lines, err = _run(capsys, *_prepare(kaggle, tmp_path / "out2"))
    assert not state["hung"], "data.csv (a named pipe) was opened"
    assert code == 2 and len(lines) == 1 and str(csv) in lines[0] and "not a regular file" in lines[0], err

    fifo = tmp_path / "scan.nii.gz"
    os.mkfifo(fifo)
    with fifo_guard(fifo) as state:
        with pytest.raises(ValueError, match="not a regular file"):
            find_cases(fifo)
    assert not state["hung"]


def test_fifo_given_as_a_scan_sequence_does_not_hang(tmp_path: Path) -> None:
    """``lggseg infer --flair PIPE`` (a scan case named explicitly) blocked in SimpleITK's reader."""
    flair = tmp_path / "flair.nii.gz"
    os.mkfifo(flair)
    with fifo_guard(flair) as state:
        with pytest.raises(LGGDataError) as caught:
            LoadVolumed(["image"])(make_scan_case("patient", flair))
    assert not state["hung"], "the FLAIR (a named pipe) was opened"
    _one_line_naming(caught.value, flair, "not a regular file")


@pytest.mark.parametrize(
    "datalist",
    [
        {"test": [{"patient": "p"}]},
        {"test": [{"image": 5}]},
        {"test": [{"image": "a.nii.gz", "patient": 3}]},
        {"test": "a.nii.gz"},
        [1, 2],
    ],
    ids=["no-image", "image-number", "patient-number", "test-not-a-list", "not-an-object"],
)
def test_inference_datalist_of_a_wrong_shape_is_one_line(tmp_path, datalist):
    """An inference datalist (decathlon 'training'/'test' entries) with wrong keys or types: one CaseError
    line naming the file (was a KeyError, a TypeError, or 'str' object has no attribute 'get')."""
    from pipeline.ingestion.cases import CaseError, find_cases

    path = tmp_path / "datalist.json"
    path.write_text(json.dumps(datalist))
    with pytest.raises(CaseError) as raised:
        find_cases(path)
    assert str(path) in str(raised.value) and "\n" not in str(raised.value)


def test_inference_datalist_of_plain_paths_and_entries(tmp_path):
    from pipeline.ingestion.cases import find_cases

    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"test": ["x/a.nii.gz", {"image": "y/b.nii.gz", "patient": "p2"}]}))
    cases = find_cases(path)
    assert [c["case"] for c in cases] == ["a", "p2"]
    assert cases[0]["image"] == str(tmp_path / "x" / "a.nii.gz")
