"""pipeline.safety.OutputTransaction: the one check -> stage -> claim -> move sequence of every command."""

from __future__ import annotations

import pytest

from pipeline.safety import MANIFEST_FILENAME, OutputTransaction, owned_files


def _write(transaction: OutputTransaction, files: dict[str, str], keep_earlier: bool = False) -> None:
    transaction.check(list(files))
    with transaction.staging() as staging:
        for rel, text in files.items():
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            (staging / rel).write_text(text)
        (staging / "failed_case.tmp").write_text("piece of a case that failed")
        transaction.commit(staging, list(files), keep_earlier=keep_earlier)


def test_new_folder_holds_exactly_the_written_files(tmp_path):
    out = tmp_path / "out"
    _write(OutputTransaction(out, "test"), {"a/x.txt": "1", "y.txt": "2"})
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        MANIFEST_FILENAME,
        "a/x.txt",
        "y.txt",
    ]
    assert owned_files(out) == {"a/x.txt", "y.txt"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_earlier_results_need_overwrite_and_foreign_files_stay(tmp_path):
    out = tmp_path / "out"
    _write(OutputTransaction(out, "test"), {"x.txt": "1", "old.txt": "0"})
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="already holds results; pass --overwrite"):
        OutputTransaction(out, "test").check(["x.txt"])
    _write(OutputTransaction(out, "test", overwrite=True), {"x.txt": "new"})
    assert (out / "x.txt").read_text() == "new" and (out / "notes.txt").read_text() == "mine"
    assert not (out / "old.txt").exists()  # an earlier file of lggseg's own, not written again
    assert owned_files(out) == {"x.txt"}


def test_keep_earlier_adds_to_the_manifest(tmp_path):
    out = tmp_path / "out"
    _write(OutputTransaction(out, "test"), {"a.txt": "1"})
    _write(OutputTransaction(out, "test", overwrite=True), {"b.txt": "2"}, keep_earlier=True)
    assert (out / "a.txt").read_text() == "1" and owned_files(out) == {"a.txt", "b.txt"}


def test_a_foreign_file_under_a_planned_name_is_never_replaced(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "x.txt").write_text("the user's")
    for overwrite in (False, True):
        with pytest.raises(ValueError, match="never replaced") as caught:
            OutputTransaction(out, "test", overwrite=overwrite, foreign_needs_overwrite=False).check(
                ["x.txt"]
            )
        assert str(out / "x.txt") in str(caught.value)
    assert (out / "x.txt").read_text() == "the user's"


def test_a_file_that_appears_during_the_run_is_kept(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    transaction = OutputTransaction(out, "test", error=KeyError)
    transaction.check(["x.txt"])
    with transaction.staging() as staging:
        (staging / "x.txt").write_text("lggseg's")
        (out / "x.txt").write_text("appeared meanwhile")
        with pytest.raises(KeyError, match="appeared during the run"):
            transaction.commit(staging, ["x.txt"])
    assert (out / "x.txt").read_text() == "appeared meanwhile" and owned_files(out) == set()


def test_output_inside_an_input_is_refused(tmp_path):
    with pytest.raises(ValueError, match="inside"):
        OutputTransaction(tmp_path / "in" / "out", "test", inputs=[tmp_path / "in"]).check(["x.txt"])
