"""Fault injection for the data commands: "no command deletes or overwrites a file it did not write".

Each test builds a bad input or output in ``tmp_path`` and checks the exit code, the one-line message
(``lggseg: error: <file or folder>: <problem>; <what to do>``, naming the file or folder and the problem)
and that every file that existed before is byte-identical afterwards.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from helpers import REPO_ROOT, tree_digests
from helpers import prepare_args as _prepare
from helpers import run_lggseg as _run

import pipeline.ingestion.prepare
from pipeline.cli import main as lggseg
from pipeline.safety import (
    MANIFEST_FILENAME,
    STAGING_MARKER,
    UnsafeOutputError,
    atomic_path,
    atomic_write_text,
    check_output_location,
    foreign_files,
    is_inside,
    owned_files,
    remove_owned,
    remove_stale_staging,
    staging_folder,
    write_manifest,
)

SMALL_REAL_PATIENTS = ("TCGA_HT_A616_19991226", "TCGA_HT_7860_19960513")  # the two smallest, 1.3 MB each


# ------------------------------------------------------------------------------------------------ helpers
_digest = functools.partial(tree_digests, links=True)  # every file, hidden ones too; links as links


def _assert_kept(before: dict[str, str], root: Path) -> dict[str, str]:
    """Every file in ``before`` still exists under ``root`` with the same bytes; returns the new digest."""
    after = _digest(root)
    changed = sorted(k for k in before if after.get(k) != before[k])
    assert not changed, f"files lost or changed: {changed[:5]}"
    return after


def _expect(capsys, code: int, fragments: list[str], *args: object) -> list[str]:
    """Run and check the exit code and that one error line holds every fragment."""
    got, lines, err = _run(capsys, *args)
    assert got == code, err
    assert any(all(f in line for f in fragments) for line in lines), (fragments, lines)
    return lines


@pytest.fixture
def no_conversion(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the conversion starts: the checks must come before it."""

    def refuse(*args, **kwargs):
        raise AssertionError("the conversion started before the inputs were checked")

    monkeypatch.setattr(pipeline.ingestion.prepare, "_prepare_patients", refuse)


# ------------------------------------------------------------------------------------- the safety module
def test_safety_module_api(tmp_path: Path) -> None:
    (tmp_path / "in" / "sub").mkdir(parents=True)
    assert is_inside(tmp_path / "in" / "sub", tmp_path / "in")
    assert is_inside(tmp_path / "in" / "x" / ".." / "sub", tmp_path / "in")
    assert not is_inside(tmp_path / "in-other", tmp_path / "in")
    (tmp_path / "alias").symlink_to(tmp_path / "in")
    assert is_inside(tmp_path / "alias" / "new", tmp_path / "in")
    with pytest.raises(UnsafeOutputError, match="is inside the input folder"):
        check_output_location(tmp_path / "alias" / "out", [tmp_path / "in"])
    assert check_output_location(tmp_path / "out", [tmp_path / "in"]) == (tmp_path / "out").resolve()
    assert not (tmp_path / "out").exists(), "the check creates nothing"

    out = tmp_path / "out"
    out.mkdir()
    atomic_write_text(out / "ours.txt", "ours")
    write_manifest(out, ["ours.txt"], command="test")
    (out / "theirs.txt").write_text("theirs")
    assert owned_files(out) == {"ours.txt"} and foreign_files(out) == ["theirs.txt"]
    assert remove_owned(out, ["ours.txt", "theirs.txt"]) == ["ours.txt"]
    assert (out / "theirs.txt").read_text() == "theirs" and owned_files(out) == set()
    with pytest.raises(ValueError, match="relative paths inside"):
        write_manifest(out, ["../escape.txt"])

    with pytest.raises(RuntimeError), atomic_path(out / "x.nii.gz") as tmp:
        assert tmp.parent == out and tmp.name.endswith(".nii.gz")
        tmp.write_text("half")
        raise RuntimeError
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_FILENAME, "theirs.txt"], "no temporary left"

    with staging_folder(out) as staging:
        assert json.loads((staging / STAGING_MARKER).read_text())["pid"] == os.getpid()
        assert remove_stale_staging(out) == [], "a live run's staging folder is kept"
    assert not staging.exists()
    look_alike = tmp_path / ".out.lggseg-staging-1-abcd"  # the pattern without our marker: not ours
    look_alike.mkdir()
    assert remove_stale_staging(out) == [] and look_alike.is_dir()


# ---------------------------------------------------------------------------------- where the output goes
def test_output_equal_to_input(kaggle: Path, tmp_path: Path, capsys, no_conversion) -> None:
    before = _digest(tmp_path)
    _expect(capsys, 2, [str(kaggle), "is the input folder"], *_prepare(kaggle, kaggle))
    assert _digest(tmp_path) == before


def test_output_containing_input(kaggle: Path, tmp_path: Path, capsys, no_conversion) -> None:
    before = _digest(tmp_path)
    # the reported bug: prepare --input data/lgg/kaggle_3m --output data/lgg deleted every TIFF
    _expect(capsys, 2, [str(tmp_path), "contains the input"], *_prepare(kaggle, tmp_path))
    assert _digest(tmp_path) == before


def test_output_inside_input(kaggle: Path, tmp_path: Path, capsys, no_conversion) -> None:
    before = _digest(tmp_path)
    _expect(capsys, 2, ["is inside the input folder"], *_prepare(kaggle, kaggle / "prepared"))
    patient = sorted(kaggle.iterdir())[0]
    _expect(capsys, 2, ["is inside the input folder"], *_prepare(kaggle, patient / "prepared"))
    assert _digest(tmp_path) == before


def test_relative_dotted_and_linked_paths(
    kaggle: Path, tmp_path: Path, capsys, monkeypatch, no_conversion
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "link").symlink_to(kaggle)
    elsewhere = tmp_path / "elsewhere"
    shutil.move(sorted(kaggle.iterdir())[0], elsewhere)  # a patient folder that is a symlink
    (kaggle / elsewhere.name).symlink_to(elsewhere)
    before = _digest(tmp_path)
    _expect(
        capsys,
        2,
        ["kaggle_3m/../kaggle_3m", "is the input"],
        *_prepare("kaggle_3m", "./kaggle_3m/../kaggle_3m"),
    )
    _expect(capsys, 2, ["is the input"], *_prepare("./kaggle_3m", "link"))
    _expect(capsys, 2, ["contains the input"], *_prepare("kaggle_3m", "."))
    _expect(capsys, 2, ["contains the input"], *_prepare("link/", "link/.."))
    _expect(capsys, 2, ["is inside the input folder"], *_prepare("kaggle_3m", "link/x/../out"))
    _expect(
        capsys, 2, ["is inside the input folder", elsewhere.name], *_prepare("kaggle_3m", "elsewhere/out")
    )
    assert _digest(tmp_path) == before


def test_output_is_a_file(kaggle: Path, tmp_path: Path, capsys, no_conversion) -> None:
    (tmp_path / "results.txt").write_text("a user's file")
    before = _digest(tmp_path)
    _expect(
        capsys, 2, ["results.txt", "exists and is not a folder"], *_prepare(kaggle, tmp_path / "results.txt")
    )
    _expect(
        capsys,
        2,
        ["results.txt", "is a file, not a folder"],
        *_prepare(kaggle, tmp_path / "results.txt" / "out"),
    )
    assert _digest(tmp_path) == before


def test_unwritable_output_parent(kaggle: Path, tmp_path: Path, capsys, no_conversion) -> None:
    before = _digest(tmp_path)
    if os.geteuid() == 0:
        # root writes through chmod 0555: use a folder the kernel refuses to anyone (procfs)
        unwritable = Path("/proc")
        output = unwritable / f"lggseg-test-{os.getpid()}" / "out"
    else:
        unwritable = tmp_path / "locked"
        unwritable.mkdir()
        unwritable.chmod(0o555)
        output = unwritable / "out"
    try:
        _expect(capsys, 2, [str(unwritable), "not writable"], *_prepare(kaggle, output))
    finally:
        if unwritable != Path("/proc"):
            unwritable.chmod(0o755)
    assert not output.exists()
    assert _digest(tmp_path) == before


# ------------------------------------------------------------------------------- output folders with files
def test_foreign_files_refused_without_overwrite(kaggle: Path, tmp_path: Path, capsys, no_conversion) -> None:
    output = tmp_path / "out"
    output.mkdir()
    (output / "notes.txt").write_text("my notes")
    before = _digest(tmp_path)
    _expect(
        capsys,
        2,
        [str(output), "files lggseg did not write", "notes.txt", "--overwrite"],
        *_prepare(kaggle, output),
    )
    assert _digest(tmp_path) == before


def test_overwrite_keeps_foreign_files_and_replaces_ours(kaggle: Path, tmp_path: Path, capsys) -> None:
    output = tmp_path / "out"
    bad = sorted(kaggle.iterdir())[0]
    saved = (bad / f"{bad.name}_1_mask.tif").read_bytes()
    (bad / f"{bad.name}_1_mask.tif").unlink()
    assert _run(capsys, *_prepare(kaggle, output, "--skip-invalid"))[0] == 1
    assert (output / "problems.json").is_file()
    (bad / f"{bad.name}_1_mask.tif").write_bytes(saved)
    ours_before = _digest(output)
    # the user adds files, in the output and inside a patient folder
    (output / "notes.txt").write_text("my notes")
    (output / bad.name).mkdir()
    (output / bad.name / "my_segmentation.nii.gz").write_bytes(b"precious")
    patient = sorted(p for p in kaggle.iterdir() if p.is_dir())[1].name
    (output / patient / "review.txt").write_text("checked by hand")
    before = _digest(tmp_path)

    _expect(capsys, 2, ["already holds results", "--overwrite"], *_prepare(kaggle, output))
    assert _digest(tmp_path) == before

    code, lines, err = _run(capsys, *_prepare(kaggle, output, "--overwrite", "--folds", "3"))
    assert code == 0 and not lines, err
    after = _digest(tmp_path)
    for rel in ("out/notes.txt", f"out/{bad.name}/my_segmentation.nii.gz", f"out/{patient}/review.txt"):
        assert after[rel] == before[rel], rel
    _assert_kept({k: v for k, v in before.items() if not k.startswith("out/")}, tmp_path)  # the input
    assert json.loads((output / "datalist.json").read_text())["num_folds"] == 3, "our results were replaced"
    assert after["out/datalist.json"] != ours_before["datalist.json"]
    assert not (output / "problems.json").exists(), "our stale problems.json was removed"
    assert (output / bad.name / "image.nii.gz").is_file()
    foreign = [f"{bad.name}/my_segmentation.nii.gz", "notes.txt", f"{patient}/review.txt"]
    assert foreign_files(output) == sorted(foreign)
    assert not list(tmp_path.glob(".out.*")), "no staging folder left"


def test_foreign_file_with_our_name_is_never_replaced(
    kaggle: Path, tmp_path: Path, capsys, no_conversion
) -> None:
    output = tmp_path / "out"
    output.mkdir()
    (output / "datalist.json").write_text('{"mine": true}')  # e.g. written by another tool
    before = _digest(tmp_path)
    _expect(
        capsys,
        2,
        [str(output), "datalist.json", "never overwritten"],
        *_prepare(kaggle, output, "--overwrite"),
    )
    assert _digest(tmp_path) == before


# ---------------------------------------------------------------------------------------------- options
@pytest.mark.parametrize(
    "extra, fragments",
    [
        (["--spacing", "0", "1", "1"], ["--spacing", "positive"]),
        (["--spacing", "nan", "1", "1"], ["--spacing", "positive"]),
        (["--folds", "1"], ["--folds 1", "at least 2"]),
        (["--folds", "6"], ["--folds 6", "more folds than the 5 patients"]),
        (["--workers", "0"], ["--workers 0", "positive"]),
    ],
)
def test_bad_options_before_conversion(
    kaggle: Path, tmp_path: Path, capsys, no_conversion, extra, fragments
) -> None:
    before = _digest(tmp_path)
    _expect(capsys, 2, fragments, *_prepare(kaggle, tmp_path / "out"), *extra)
    assert _digest(tmp_path) == before


def test_missing_input_and_debug_traceback(tmp_path: Path, capsys) -> None:
    _expect(
        capsys, 2, [str(tmp_path / "nope"), "does not exist"], *_prepare(tmp_path / "nope", tmp_path / "out")
    )
    with pytest.raises(pipeline.ingestion.errors.LGGDataError):
        lggseg(["--debug", *map(str, _prepare(tmp_path / "nope", tmp_path / "out"))])


# -------------------------------------------------------------------------------------- bad patient data
def test_empty_patient_folder_is_reported(kaggle: Path, tmp_path: Path, capsys) -> None:
    empty = kaggle / "TCGA_HT_A000_20000101"
    empty.mkdir()
    before = _digest(tmp_path)
    _expect(capsys, 1, [str(empty), "no .tif slice", "--skip-invalid"], *_prepare(kaggle, tmp_path / "out"))
    assert _digest(tmp_path) == before
    _expect(capsys, 1, [str(empty), "problems.json"], *_prepare(kaggle, tmp_path / "out", "--skip-invalid"))
    assert list(json.loads((tmp_path / "out" / "problems.json").read_text())) == [empty.name]
    assert len(json.loads((tmp_path / "out" / "datalist.json").read_text())["training"]) == 5
    _assert_kept(before, tmp_path)


def test_odd_files_in_patient_folders_are_ignored(kaggle: Path, tmp_path: Path, capsys) -> None:
    patient = sorted(kaggle.iterdir())[0]
    for name in (".DS_Store", "notes.txt", "Thumbs.db"):
        (patient / name).write_bytes(b"\x00odd")
    (kaggle / ".DS_Store").write_bytes(b"\x00odd")
    shutil.copy(patient / f"{patient.name}_1.tif", patient / f"._{patient.name}_1.tif")  # macOS copy
    (kaggle / "__MACOSX").mkdir()
    before = _digest(tmp_path)
    code, lines, err = _run(capsys, *_prepare(kaggle, tmp_path / "out"))
    assert code == 0 and not lines, err
    assert len(json.loads((tmp_path / "out" / "datalist.json").read_text())["training"]) == 5
    _assert_kept(before, tmp_path)


def _clinical(output: Path, patient_prefix: str) -> dict[str, str]:
    import csv

    with (output / "patients.csv").open(newline="", encoding="utf-8") as handle:
        return next(r for r in csv.DictReader(handle) if r["patient"].startswith(patient_prefix))


@pytest.mark.parametrize("variant", ["latin-1", "utf-8-bom", "missing-column"])
def test_data_csv_variants(kaggle: Path, tmp_path: Path, capsys, variant: str) -> None:
    text = (kaggle / "data.csv").read_text()
    header, first, *rest = text.splitlines(keepends=True)
    cells = first.split(",")
    cells[-2] = "Hispánico"  # ethnicity
    first = ",".join(cells)
    if variant == "latin-1":
        (kaggle / "data.csv").write_bytes((header + first + "".join(rest)).encode("latin-1"))
    elif variant == "utf-8-bom":
        (kaggle / "data.csv").write_bytes((header + first + "".join(rest)).encode("utf-8-sig"))
    else:
        (kaggle / "data.csv").write_text(header.replace("Patient,", "Case,") + first + "".join(rest))
    before = _digest(tmp_path)
    if variant == "missing-column":
        _expect(
            capsys, 2, [str(kaggle / "data.csv"), "no 'Patient' column"], *_prepare(kaggle, tmp_path / "out")
        )
        assert _digest(tmp_path) == before
        return
    code, lines, err = _run(capsys, *_prepare(kaggle, tmp_path / "out"))
    assert code == 0 and not lines, err
    row = _clinical(tmp_path / "out", cells[0])
    assert row["clinical_ethnicity"] == "Hispánico" and row["clinical_age_at_initial_pathologic"]
    _assert_kept(before, tmp_path)


def test_data_csv_without_some_columns(kaggle: Path, tmp_path: Path, capsys) -> None:
    lines = (kaggle / "data.csv").read_text().splitlines()
    (kaggle / "data.csv").write_text("\n".join(",".join(line.split(",")[:3]) for line in lines) + "\n")
    code, errors, err = _run(capsys, *_prepare(kaggle, tmp_path / "out"))
    assert code == 0 and not errors, err
    assert "clinical_death01" not in _clinical(tmp_path / "out", "TCGA")


@pytest.mark.parametrize(
    "array, fragment",
    [
        (np.zeros((16, 32, 3), np.uint8), "shape (16, 32, 3) differs"),
        (np.zeros((32, 32, 4), np.uint8), "expected an HxWx3 uint8 image, got shape (32, 32, 4)"),
        (np.zeros((32, 32), np.uint8), "expected an HxWx3 uint8 image, got shape (32, 32)"),
        (np.zeros((32, 32, 3), np.uint16), "got shape (32, 32, 3) uint16"),
    ],
)
def test_odd_slices_fail_that_patient_only(kaggle: Path, tmp_path: Path, capsys, array, fragment) -> None:
    patient = sorted(kaggle.iterdir())[0]
    tifffile.imwrite(patient / f"{patient.name}_2.tif", array)
    before = _digest(tmp_path)
    _expect(capsys, 1, [str(patient), f"{patient.name}_2.tif", fragment], *_prepare(kaggle, tmp_path / "out"))
    assert _digest(tmp_path) == before, "nothing written when a patient fails"
    _expect(capsys, 1, [str(patient), fragment], *_prepare(kaggle, tmp_path / "out", "--skip-invalid"))
    assert len(json.loads((tmp_path / "out" / "datalist.json").read_text())["training"]) == 4
    _assert_kept(before, tmp_path)


# -------------------------------------------------------------------------------------------- kill -9
def _processes_of(marker: str) -> list[int]:
    """Live (not zombie) processes whose command line mentions ``marker`` (forked workers share it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc (Linux)")
def test_kill_9_of_prepare_with_workers(kaggle: Path, tmp_path: Path, capsys) -> None:
    # A patient whose slices never finish reading (a hook in the child processes blocks tifffile on them; a
    # FIFO slice is refused without being opened): its worker blocks, so the run is surely still running
    # when it is killed, whatever the machine's speed; the other worker sits idle.
    stuck = kaggle / "TCGA_HT_F999_20000109"
    stuck.mkdir()
    shutil.copy(next(kaggle.glob("*/*_1.tif")), stuck / f"{stuck.name}_1.tif")
    shutil.copy(next(kaggle.glob("*/*_1_mask.tif")), stuck / f"{stuck.name}_1_mask.tif")
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import time\nimport tifffile\n_imread = tifffile.imread\n\n"
        "def imread(path, *args, **kwargs):\n"
        f"    while {stuck.name!r} in str(path):\n        time.sleep(1)\n"
        "    return _imread(path, *args, **kwargs)\n\n"
        "tifffile.imread = imread\n"
    )
    output = tmp_path / "out"
    command = [sys.executable, "-m", "pipeline.cli", *map(str, _prepare(kaggle, output))]
    command[command.index("--workers") + 1] = "2"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(hook)}
    run = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and run.poll() is None:
            staging = list(tmp_path.glob(".out.lggseg-staging-*"))
            if (
                staging
                and len(list(staging[0].glob("*/label.nii.gz"))) == 5
                and len(_processes_of(str(output))) >= 3
            ):
                break
            time.sleep(0.1)
        assert run.poll() is None, run.stderr.read().decode()
        processes = _processes_of(str(output))
        assert run.pid in processes and len(processes) >= 3, processes  # the parent and two workers
        run.send_signal(signal.SIGKILL)
        run.wait()
        deadline = time.monotonic() + 10  # workers die at once; allow for a loaded machine
        while _processes_of(str(output)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _processes_of(str(output)) == [], "a worker outlived its killed parent"
    finally:  # on failure, do not leave processes of this test behind
        if run.poll() is None:
            run.kill()
            run.wait()
        run.stderr.close()
        for pid in _processes_of(str(output)):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    leftover = list(tmp_path.glob(".out.lggseg-staging-*"))
    assert len(leftover) == 1 and (leftover[0] / STAGING_MARKER).is_file(), "the killed run's staging folder"
    assert not output.exists()

    shutil.rmtree(stuck)
    shutil.rmtree(hook)
    before = _digest(kaggle)
    code, lines, err = _run(capsys, *_prepare(kaggle, output))
    assert code == 0 and not lines, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kaggle_3m", "out"], "stale staging folder removed"
    assert len(json.loads((output / "datalist.json").read_text())["training"]) == 5
    assert _digest(kaggle) == before


# ----------------------------------------------------------------------------------------- export-kaggle
def test_export_kaggle_never_overwrites_foreign_masks(kaggle: Path, tmp_path: Path, capsys) -> None:
    assert _run(capsys, *_prepare(kaggle, tmp_path / "out"))[0] == 0
    patient = sorted(kaggle.iterdir())[0]
    label = tmp_path / "out" / patient.name / "label.nii.gz"
    # exporting into the original patient folder would replace its masks: refused, even with --overwrite
    before = _digest(tmp_path)
    for extra in ([], ["--overwrite"]):
        _expect(
            capsys, 2, [str(patient), "mask files lggseg did not write", f"{patient.name}_1_mask.tif"],
            "export-kaggle", "--label", label, "--output", patient, *extra,
        )  # fmt: skip
    assert _digest(tmp_path) == before

    masks = tmp_path / "masks"
    masks.mkdir()
    (masks / "readme.txt").write_text("keep me")
    code, lines, err = _run(capsys, "export-kaggle", "--label", label, "--output", masks)
    assert code == 0 and not lines, err
    first = _digest(masks)
    _expect(
        capsys,
        2,
        [str(masks), "earlier export", "--overwrite"],
        "export-kaggle",
        "--label",
        label,
        "--output",
        masks,
    )
    assert _digest(masks) == first
    code, lines, err = _run(capsys, "export-kaggle", "--label", label, "--output", masks, "--overwrite")
    assert code == 0 and not lines, err
    assert (masks / "readme.txt").read_text() == "keep me"
    assert owned_files(masks) == {p.name for p in masks.glob("*_mask.tif")}
    for path in masks.glob("*_mask.tif"):
        np.testing.assert_array_equal(tifffile.imread(path), tifffile.imread(patient / path.name))
    _assert_kept(before, tmp_path)


def test_synthesize_refuses_non_empty_folder_and_files(tmp_path: Path, capsys) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "thesis.tex").write_text("years of work")
    (tmp_path / "afile").write_text("x")
    before = _digest(tmp_path)
    _expect(
        capsys,
        2,
        [str(tmp_path / "full"), "not empty"],
        "synthesize",
        "--output",
        tmp_path / "full",
        "--patients",
        "1",
    )
    _expect(
        capsys, 2, ["afile", "not a folder"], "synthesize", "--output", tmp_path / "afile", "--patients", "1"
    )
    _expect(capsys, 2, ["--size", "at least 16"], "synthesize", "--output", tmp_path / "new", "--size", "2")
    assert _digest(tmp_path) == before
    code, lines, err = _run(
        capsys, "synthesize", "--output", tmp_path / "new", "--patients", "2", "--size", "32"
    )
    assert code == 0 and not lines, err
    assert foreign_files(tmp_path / "new") == [] and "data.csv" in owned_files(tmp_path / "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "full", "new"], "no staging folder left"


# ----------------------------------------------------------------------------------------------- real data
@pytest.fixture
def real_kaggle(kaggle_root: Path, tmp_path: Path) -> Path:
    """``tmp/data/lgg/kaggle_3m`` holding copies of two small real patients and the real data.csv."""
    root = tmp_path / "data" / "lgg" / "kaggle_3m"
    root.mkdir(parents=True)
    for name in SMALL_REAL_PATIENTS:
        shutil.copytree(kaggle_root / name, root / name)
    shutil.copy(kaggle_root / "data.csv", root / "data.csv")
    return root


@pytest.mark.realdata
def test_real_output_above_or_equal_to_input_keeps_every_tiff(
    real_kaggle: Path, tmp_path: Path, capsys
) -> None:
    before = _digest(tmp_path)
    assert sum(k.endswith(".tif") for k in before) > 50
    _expect(capsys, 2, ["contains the input"], *_prepare(real_kaggle, real_kaggle.parent))  # data/lgg
    _expect(capsys, 2, ["is the input folder"], *_prepare(real_kaggle, real_kaggle))
    _expect(capsys, 2, ["contains the input"], *_prepare(real_kaggle, real_kaggle / ".." / ".."))
    assert _digest(tmp_path) == before


@pytest.mark.realdata
def test_real_overwrite_keeps_user_files(real_kaggle: Path, tmp_path: Path, capsys) -> None:
    output = real_kaggle.parent / "prepared"
    assert _run(capsys, *_prepare(real_kaggle, output))[0] == 0
    (output / SMALL_REAL_PATIENTS[0] / "edited_label.nii.gz").write_bytes(b"hand-corrected")
    before = _digest(tmp_path)
    code, lines, err = _run(capsys, *_prepare(real_kaggle, output, "--overwrite", "--spacing", "1", "1", "3"))
    assert code == 0 and not lines, err
    after = _digest(tmp_path)
    assert (
        after[f"data/lgg/prepared/{SMALL_REAL_PATIENTS[0]}/edited_label.nii.gz"]
        == before[f"data/lgg/prepared/{SMALL_REAL_PATIENTS[0]}/edited_label.nii.gz"]
    )
    _assert_kept({k: v for k, v in before.items() if "prepared" not in k}, tmp_path)
    assert json.loads((output / "datalist.json").read_text())["spacing_mm"] == [1.0, 1.0, 3.0]
