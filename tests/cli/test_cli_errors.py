"""The one error rule of every ``lggseg`` command (``pipeline.cli.errors``): exit codes, one-line messages,
``--debug`` tracebacks and Ctrl-C, with the job of each command replaced by one that raises."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import run_lggseg

import pipeline.ingestion.prepare
import pipeline.ingestion.studies
import pipeline.workflows.prediction
import pipeline.workflows.training
from pipeline.cli import build_parser, main
from pipeline.cli.errors import one_line, report_failures, run_command
from pipeline.engines import CasesFailed
from pipeline.ingestion.cases import CaseError
from pipeline.ingestion.errors import LGGDataError
from pipeline.safety import UnsafeOutputError

# the command, its command line (``{tmp}``: the test's folder), and where its job is looked up
# relative paths (train's default --output runs) resolve in the test's folder, never the working tree's
pytestmark = pytest.mark.usefixtures("in_tmp")

JOBS = {
    "train": (["train"], pipeline.workflows.training, "train"),
    "infer": (["infer", "--input", "x", "--output", "{tmp}/out"], pipeline.workflows.prediction, "infer"),
    "prepare": (
        ["prepare", "--input", "{tmp}/kaggle_3m", "--output", "{tmp}/out"],
        pipeline.ingestion.prepare,  # imported by the command when it runs
        "prepare_dataset",
    ),
    "studies": (
        ["studies", "--input", "{tmp}/kaggle_3m", "--output", "{tmp}/out"],
        pipeline.ingestion.studies,
        "write_studies",
    ),
}

# a valid command line of every command, for its Ctrl-C message
EVERY_COMMAND = {
    "prepare": ["prepare", "--input", "in", "--output", "{tmp}/out"],
    "export-kaggle": ["export-kaggle", "--label", "l.nii.gz", "--output", "{tmp}/out"],
    "synthesize": ["synthesize", "--output", "{tmp}/out"],
    "demo": ["demo", "--output", "{tmp}/out"],
    "train": ["train"],
    "cv": ["cv"],
    "evaluate": ["evaluate"],
    "infer": ["infer", "--input", "x", "--output", "{tmp}/out"],
    "choose-postprocessing": ["choose-postprocessing", "--run", "{tmp}/out"],
    "ensemble": ["ensemble", "--run", "run", "--output", "{tmp}/out"],
    "networks": ["networks"],
    "studies": ["studies", "--input", "in", "--output", "{tmp}/out"],
}


def _argv(argv: list[str], tmp_path: Path) -> list[str]:
    return [a.format(tmp=tmp_path) for a in argv]


def _raising(monkeypatch: pytest.MonkeyPatch, command: str, error: BaseException) -> list[str]:
    """Make ``command``'s job raise ``error``; returns the command line."""
    argv, module, name = JOBS[command]

    def job(*args, **kwargs):
        raise error

    monkeypatch.setattr(module, name, job)
    return argv


def _run(capsys: pytest.CaptureFixture, argv: list[str]) -> tuple[int, list[str]]:
    """Run ``lggseg ARGV`` in-process; returns the exit code and the lines on stderr."""
    code, _, err = run_lggseg(capsys, *argv)
    return code, err.splitlines()


BAD_INPUT = [
    ValueError("--threshold 1.5: threshold must be in (0, 1)"),
    FileNotFoundError("checkpoint not found: missing.pt"),
    LGGDataError("data/kaggle_3m: does not exist; check the path"),
    UnsafeOutputError("out", "is inside the input folder data", "choose another output folder"),
    CaseError("x: names no case (no image.nii.gz, no NIfTI file, no slices)"),
]


@pytest.mark.parametrize("command", sorted(JOBS))
@pytest.mark.parametrize("error", BAD_INPUT, ids=lambda e: type(e).__name__)
def test_bad_input_is_one_line_and_exit_code_2(monkeypatch, capsys, tmp_path, command, error):
    argv = _argv(_raising(monkeypatch, command, error), tmp_path)
    code, lines = _run(capsys, argv)
    assert code == 2
    assert lines == [f"lggseg: error: {one_line(str(error))}"]


@pytest.mark.parametrize("command", sorted(JOBS))
def test_failed_cases_exit_code_1(monkeypatch, capsys, tmp_path, command):
    failures = [{"case": "TCGA_A"}, {"case": "TCGA_B"}]
    error = CasesFailed(failures, total=5, path=tmp_path / "out" / "failures.json")
    code, lines = _run(capsys, _argv(_raising(monkeypatch, command, error), tmp_path))
    assert code == 1
    details = tmp_path / "out" / "failures.json"
    assert lines == [f"lggseg: error: 2 of 5 cases failed (TCGA_A, TCGA_B); details in {details}"]


def test_failed_patients_of_prepare_one_line_each(monkeypatch, capsys, tmp_path):
    failures = {"TCGA_B": "no .tif slice", "TCGA_A": "slice 3 is\nunreadable"}
    error = LGGDataError([f"patient {p}: {m}" for p, m in failures.items()], failures=failures)
    code, lines = _run(capsys, _argv(_raising(monkeypatch, "prepare", error), tmp_path))
    assert code == 1 and len(lines) == 2
    assert lines[0].startswith(f"lggseg: error: {tmp_path / 'kaggle_3m' / 'TCGA_A'}: slice 3 is; unreadable")
    assert str(tmp_path / "kaggle_3m" / "TCGA_B") in lines[1] and "--skip-invalid" in lines[1]


def test_failed_patients_with_a_problem_of_the_whole_run(monkeypatch, capsys, tmp_path):
    error = LGGDataError("kaggle_3m: 1 valid patients are too few for 5 folds", failures={"TCGA_A": "empty"})
    code, lines = _run(capsys, _argv(_raising(monkeypatch, "studies", error), tmp_path))
    assert code == 1
    assert lines == ["lggseg: error: TCGA_A: empty", "lggseg: error: " + error.problems[0]]


@pytest.mark.parametrize("command", sorted(JOBS))
@pytest.mark.parametrize("error", [RuntimeError("CUDA out of memory"), KeyError("model")], ids=repr)
def test_unexpected_error_names_its_type_exit_code_1(monkeypatch, capsys, tmp_path, command, error):
    code, lines = _run(capsys, _argv(_raising(monkeypatch, command, error), tmp_path))
    assert code == 1 and len(lines) == 1
    assert lines[0].startswith(f"lggseg: error: {type(error).__name__}: ")
    assert one_line(str(error)) in lines[0] and "--debug" in lines[0]


@pytest.mark.parametrize("command", sorted(JOBS))
@pytest.mark.parametrize("error", [LGGDataError("bad"), RuntimeError("bug"), KeyboardInterrupt()], ids=repr)
def test_debug_before_or_after_the_command_raises(monkeypatch, tmp_path, command, error):
    argv = _argv(_raising(monkeypatch, command, error), tmp_path)
    for debug_argv in (["--debug", *argv], [*argv, "--debug"]):
        with pytest.raises(type(error)):
            main(debug_argv)


@pytest.mark.parametrize(
    "command, words",
    [
        ("train", ["lggseg: train interrupted;", "--resume"]),
        ("infer", ["lggseg: infer interrupted;", "_seg.nii.gz", "out", "--overwrite"]),
        ("prepare", ["lggseg: prepare interrupted;", "out", "staging folder was removed"]),
        ("studies", ["lggseg: studies interrupted;", "out", "staging folder was removed"]),
    ],
)
def test_ctrl_c_exit_code_130_with_the_commands_own_message(monkeypatch, capsys, tmp_path, command, words):
    code, lines = _run(capsys, _argv(_raising(monkeypatch, command, KeyboardInterrupt()), tmp_path))
    assert code == 130 and len(lines) == 1
    assert all(w in lines[0] for w in words), lines
    assert command == "train" or "--resume" not in lines[0]


def test_every_command_has_debug_and_its_own_ctrl_c_message(capsys, tmp_path):
    parser = build_parser()
    messages = {}
    for command, argv in EVERY_COMMAND.items():
        args = parser.parse_args(_argv([*argv, "--debug"], tmp_path))
        assert args.command == command and args.debug

        def interrupt(args):
            raise KeyboardInterrupt

        args.func = interrupt
        del args.debug
        assert run_command(args) == 130
        (line,) = capsys.readouterr().err.splitlines()
        assert line.startswith(f"lggseg: {command} interrupted; ") and "{" not in line
        messages[command] = line.split("; ", 1)[1]
    assert len(set(messages.values())) >= 10, messages  # in the words of each command
    assert [c for c, m in messages.items() if "--resume" in m] == ["train"]


def test_networks_and_demo_report_bad_usage_in_one_line(capsys, tmp_path):
    code, lines = _run(capsys, ["networks", "--in-channels", "0"])
    assert code == 2 and len(lines) == 1 and lines[0].startswith("lggseg: error: --in-channels 0")
    (tmp_path / "notes.txt").write_text("mine")
    code, lines = _run(capsys, ["demo", "--output", str(tmp_path)])
    assert code == 2 and lines == [
        f"lggseg: error: {tmp_path}: already exists; pass --overwrite to start again"
    ]
    code, lines = _run(capsys, ["demo", "--output", str(tmp_path), "--overwrite"])
    assert code == 2 and len(lines) == 1 and "notes.txt" in lines[0]
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_report_failures_and_one_line(capsys):
    assert report_failures({}, lambda case, problem: "") == 0
    assert report_failures({"b": "late", "a": "two\n  lines\n"}, lambda c, p: f"{c}: {p}", ["all: few"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "lggseg: error: a: two; lines",
        "lggseg: error: b: late",
        "lggseg: error: all: few",
    ]
    assert one_line("x\n\n  y  \n") == "x; y"
