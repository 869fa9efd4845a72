"""The files of each segmented case, published as the evaluator finishes it: one Ignite handler for
``lggseg infer`` (:func:`pipeline.workflows.prediction.infer`) and the bundle's ``inference.json``.

:class:`CaseOutputsHandler` runs on ``ITERATION_COMPLETED``, after MONAI's post-processing wrote the mask
under its partial name (:func:`~pipeline.inference.writer.prediction_writer` with ``publish=False``). Per
case it writes the QC picture, the DICOM SEG of a DICOM FLAIR and, if asked, the Kaggle masks
(:func:`~pipeline.inference.case_report.write_case_outputs`), then renames the mask into place and rewrites
``summary.csv`` (:func:`~pipeline.inference.case_report.write_summary_csv`, atomically) with every case
published so far. When any step fails, the files of that case written here are removed again and the
error is raised (the case is reported as failed): a case is all there or not at all, and ``summary.csv``
lists exactly the cases whose files are in place, also when the run stops part-way.

What reaches the handler: the evaluator decollates the batch, so ``engine.state.batch`` is a list of the
cases' dicts after preprocessing (``case``, ``kind``, ``sequences``, ``flair``, ``t1``, ``t1c`` as
:func:`pipeline.ingestion.cases.find_cases` gave them, but ``image`` is the loaded tensor) and
``engine.state.output`` the matching ``{"image", "label", "pred"}``. The case's own entry (with the
``image`` path) is therefore looked up by name in the ``cases`` the dataset was built from.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events

from pipeline.inference.case_report import read_summary_rows, write_case_outputs, write_summary_csv
from pipeline.inference.writer import CASE_META_KEY, SUMMARY_NAME, case_files, case_output_paths, final_name
from pipeline.safety import MANIFEST_FILENAME, owned_files, remove_owned, write_manifest

__all__ = ["CaseOutputsHandler"]

logger = logging.getLogger(__name__)


class CaseOutputsHandler:
    """Publish each case's files (QC picture, DICOM SEG, Kaggle masks, then the mask) and ``summary.csv``.

    Args:
        output_dir: the output folder of :func:`~pipeline.inference.writer.prediction_writer`.
        cases: the cases the dataset was built from (:func:`pipeline.ingestion.cases.find_cases`), each with
            its ``case`` name.
        kaggle_masks: also write per-slice Kaggle masks in ``<case>/kaggle_masks``.
        algorithm_version: the model's version (:func:`pipeline.model_files.model_version` of the model
            file), the DICOM SEG's algorithm version; ``None``: the package's.

    Attributes:
        rows: the summary rows of the cases published so far.
        written: their mask files.
        existing: the names of the cases whose folder was there before the run (kept when a case fails).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        cases: Sequence[Mapping[str, Any]],
        kaggle_masks: bool = False,
        algorithm_version: str | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.cases = {str(c.get("case") or c.get("patient")): c for c in cases}
        self.kaggle_masks = kaggle_masks
        self.algorithm_version = algorithm_version
        # the case folders there before the run (SaveImaged creates the others before they are published)
        self.existing = {name for name in self.cases if (self.output_dir / name).exists()}
        self.rows: list[dict[str, Any]] = []
        self.written: list[Path] = []
        # rows of an earlier run's summary.csv (lggseg's own) for cases this run does not segment: kept
        summary = self.output_dir / SUMMARY_NAME
        earlier = read_summary_rows(summary) if SUMMARY_NAME in owned_files(self.output_dir) else []
        self.earlier_rows = [r for r in earlier if r.get("case") not in self.cases]

    def attach(self, engine: Engine) -> None:
        """Run :meth:`__call__` on every ``ITERATION_COMPLETED`` of ``engine``.

        Args:
            engine: the evaluator (its post-processing writes the masks under their partial names).
        """
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        """Publish the cases of the iteration that just completed.

        Args:
            engine: the evaluator, its ``state.batch`` and ``state.output`` decollated.
        """
        batch, output = engine.state.batch, engine.state.output
        if isinstance(output, Mapping):  # a batch of one not decollated
            batch, output = [batch], [output]
        for data, item in zip(batch, output, strict=True):
            self.publish(self._case(data, item), item)

    def _case(self, data: Any, item: Mapping[str, Any]) -> Mapping[str, Any]:
        name = (data.get("case") or data.get("patient")) if isinstance(data, Mapping) else None
        name = name or item["pred"].meta.get(CASE_META_KEY)
        if str(name) not in self.cases:
            raise KeyError(f"{name}: a prediction of a case that is not among the {len(self.cases)} cases")
        return self.cases[str(name)]

    def publish(self, case: Mapping[str, Any], item: Mapping[str, Any]) -> Path:
        """Write one case's other files beside its mask (still under its partial name), rename the mask into
        place and rewrite ``summary.csv``; when any of them fails, remove the case's files written here.

        Args:
            case: the case's entry (``case``, ``image``; a scan case also ``kind``, ``flair``, ``t1``, ...).
            item: its post-processed output: ``pred`` (saved, ``saved_to`` in its metadata) and ``image``.

        Returns:
            the mask file.
        """
        from pipeline.ingestion.export import export_kaggle

        out, name = self.output_dir, str(case["case"])
        partial = Path(item["pred"].meta["saved_to"])
        path = Path(final_name(partial))
        others = [Path(p) for k, p in case_output_paths(out, name).items() if k != "seg_nifti"]
        masks = out / name / "kaggle_masks"
        before = {p for p in [*others, masks] if p.exists()}
        # claimed before they are written: a run killed part-way leaves only files lggseg knows as its own
        write_manifest(out, [*case_files(out, name), SUMMARY_NAME], command="infer")
        renamed = False
        try:
            if self.kaggle_masks:
                export_kaggle(partial, masks, patient_id=name, overwrite=True)
            row = {
                **write_case_outputs(
                    case,
                    item["pred"],
                    out,
                    image=item.get("image"),
                    qc=item.get("qc"),
                    algorithm_version=self.algorithm_version,
                ),
                "seg_nifti": str(path),
            }
            os.replace(partial, path)
            renamed = True
            stale = [f for f in case_files(out, name) if f not in _written_names(out, row)]
            remove_owned(out, stale)  # an earlier run's SEG of a case now given as NIfTI, say
            write_manifest(out, [*_written_names(out, row), SUMMARY_NAME], command="infer")
            write_summary_csv([*self.earlier_rows, *self.rows, row], out / SUMMARY_NAME)
        except BaseException:
            with contextlib.suppress(OSError):
                (path if renamed else partial).unlink()
            for extra in others:
                if extra not in before:
                    with contextlib.suppress(OSError):
                        extra.unlink()
            with contextlib.suppress(OSError):
                if self.kaggle_masks and masks not in before:  # a folder of this run: its masks and manifest
                    remove_owned(masks)
                    (masks / MANIFEST_FILENAME).unlink(missing_ok=True)
                    masks.rmdir()
                if name not in self.existing:
                    (out / name).rmdir()  # a folder of this run, only when empty
            with contextlib.suppress(OSError):  # what was claimed for this case and is not there: unclaimed
                kept = {f for f in owned_files(out) if (out / f).exists()}
                write_manifest(out, kept, command="infer", replace=True)
            raise
        self.rows.append(row)
        self.written.append(path)
        quality = (
            f"; QC {row['qc_score']:.2f}, review {'yes' if row.get('review') else 'no'}"
            if "qc_score" in row
            else ""
        )
        flags = f" ({row['qc_flags']})" if row.get("qc_flags") else ""
        logger.info(
            "%s: %d tumour voxels, %.2f mL%s%s -> %s",
            name,
            row["tumour_voxels"],
            row["tumour_volume_ml"],
            quality,
            flags,
            path,
        )
        return path


def _written_names(out: Path, row: Mapping[str, Any]) -> list[str]:
    """The case files a summary row names, relative to ``out`` (posix)."""
    names = []
    for key in ("seg_nifti", "qc_png", "seg_dicom"):
        value = row.get(key)
        if value and os.path.exists(value):
            names.append(os.path.relpath(value, out).replace(os.sep, "/"))
    return names
