"""Per-case isolation: a case that fails in the middle is reported and every other case still runs, on a
tiny evaluator (no files, no training)."""

from __future__ import annotations

import json

import pytest
import torch
from ignite.engine import Events
from monai.data import Dataset
from monai.inferers import SimpleInferer

from pipeline.engines import (
    FAILURES_FILENAME,
    CasesFailed,
    build_evaluator,
    build_val_loader,
    run_cases,
    run_per_case,
)


def _case(entry: dict) -> dict:
    if entry["case"].startswith("bad"):
        raise OSError(f"cannot read {entry['image']}")
    value = float(entry["case"][-1])
    return {"image": torch.full((1, 4, 4, 2), value), "label": torch.zeros(1, 4, 4, 2), "case": entry["case"]}


def _world(names: list[str]) -> tuple[object, Dataset, list[str]]:
    dataset = Dataset([{"case": n, "image": f"{n}.nii.gz"} for n in names], transform=_case)
    evaluator = build_evaluator(
        device=torch.device("cpu"),
        val_data_loader=build_val_loader(dataset),
        network=torch.nn.Conv3d(1, 1, 1),
        inferer=SimpleInferer(),
    )
    seen: list[str] = []
    evaluator.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: seen.extend(b["case"] for b in e.state.batch)
    )
    return evaluator, dataset, seen


@pytest.mark.parametrize("bad", [["bad1"], ["bad1", "bad2"]])
def test_a_failed_case_in_the_middle_is_reported_and_the_next_runs(bad):
    names = ["good1", *bad, "good2", "good3"]
    evaluator, dataset, seen = _world(names)
    resumable = evaluator.interrupt_resume_enabled
    failures = run_per_case(evaluator, dataset)
    assert seen == ["good1", "good2", "good3"]  # none skipped, none twice
    assert [f["case"] for f in failures] == bad
    assert all(f["error"] and f["image"] == f"{f['case']}.nii.gz" for f in failures)
    assert evaluator.interrupt_resume_enabled == resumable  # the engine is left as it was
    seen.clear()
    assert run_per_case(evaluator, Dataset(dataset.data[:1], transform=_case)) == []  # and still usable
    assert seen == ["good1"]


def test_run_cases_writes_failures_and_raises_after_every_case(tmp_path):
    evaluator, dataset, seen = _world(["bad1", "good1", "good2"])

    class Report:
        failures: list | None = None

        def write(self, failures: list) -> None:
            self.failures = failures

    report = Report()
    with pytest.raises(CasesFailed, match="1 of 3 cases failed"):
        run_cases(evaluator, dataset, tmp_path, report=report)
    assert seen == ["good1", "good2"]
    assert [f["case"] for f in report.failures] == ["bad1"]
    assert [f["case"] for f in json.loads((tmp_path / FAILURES_FILENAME).read_text())] == ["bad1"]
