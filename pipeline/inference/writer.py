"""Writing predictions: each case with MONAI's ``SaveImaged`` as ``<output>/<case>/<case>_seg.nii.gz``
(uint8, the input's shape and affine), under a temporary name first, and the check of the targets before
any work.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from monai.transforms import Compose, MapTransform, SaveImaged

from pipeline.ingestion.cases import case_name
from pipeline.safety import check_output_location

PREDICTION_POSTFIX = "seg"
PARTIAL_MARK = ".partial"


def case_name_formatter(metadict: dict, saver: Any) -> dict:
    """``SaveImaged``'s ``output_name_formatter``: name the output after the case (see
    :func:`pipeline.ingestion.cases.case_name`), never after a file name shared by every case
    (``image.nii.gz``)."""
    source = metadict.get("filename_or_obj", getattr(saver, "_data_index", 0)) if metadict else 0
    return {"subject": case_name(str(source)), "idx": None}


class PublishSavedd(MapTransform):
    """Rename the file ``SaveImaged`` just wrote (``saved_to`` in the metadata) from its temporary name to
    its final one, so an interrupted run never leaves a half-written prediction under the final name.

    Args:
        keys: the saved keys (``"pred"``).
    """

    def __call__(self, data: Any) -> Any:
        d = dict(data)
        for key in self.key_iterator(d):
            meta = getattr(d[key], "meta", {})
            saved = meta.get("saved_to")
            folder, name = os.path.split(str(saved or ""))
            if PARTIAL_MARK in name:
                final = os.path.join(folder, "".join(name.rsplit(PARTIAL_MARK, 1)))
                os.replace(saved, final)
                meta["saved_to"] = final
        return d


SUMMARY_NAME = "summary.csv"  # one row per case: sequences used, tumour volume, the files written


def prediction_path(output_dir: str | os.PathLike, case: str) -> str:
    """Where :func:`prediction_writer` puts the prediction of ``case``."""
    return os.path.join(str(output_dir), case, f"{case}_{PREDICTION_POSTFIX}.nii.gz")


def case_output_paths(output_dir: str | os.PathLike, case: str) -> dict[str, str]:
    """Every file ``infer`` may write for ``case``: the NIfTI mask, the QC picture, the DICOM SEG (of a DICOM
    input)."""
    folder = os.path.join(str(output_dir), case)
    return {
        "seg_nifti": prediction_path(output_dir, case),
        "qc_png": os.path.join(folder, f"{case}_qc.png"),
        "seg_dicom": os.path.join(folder, f"{case}_{PREDICTION_POSTFIX}.dcm"),
    }


def prediction_writer(output_dir: str | os.PathLike, key: str = "pred") -> Compose:
    """MONAI ``SaveImaged`` of the binary prediction, then :class:`PublishSavedd`.

    Args:
        output_dir: root of the outputs; each case gets ``<case>/<case>_seg.nii.gz``.
        key: the key to write.
    """
    return Compose(
        [
            SaveImaged(
                keys=key,
                output_dir=str(output_dir),
                output_postfix=PREDICTION_POSTFIX + PARTIAL_MARK,
                output_ext=".nii.gz",
                output_dtype=np.uint8,
                resample=False,
                separate_folder=True,
                output_name_formatter=case_name_formatter,
                savepath_in_metadict=True,
                print_log=False,
            ),
            PublishSavedd(keys=key),
        ]
    )


def check_prediction_targets(
    cases: Sequence[dict],
    output_dir: str | os.PathLike,
    inputs: Sequence[str | os.PathLike] = (),
    overwrite: bool = False,
) -> None:
    """Refuse, before any work, an output folder that is or holds an input, or predictions that exist
    already (unless ``overwrite``: then only those prediction files are replaced).

    Args:
        cases: the cases to segment (``{"image", "case"}``, see :func:`pipeline.ingestion.cases.find_cases`).
        output_dir: where :func:`prediction_writer` writes.
        inputs: the paths the cases come from.
        overwrite: replace existing predictions of these cases.

    Raises:
        ValueError: naming the path and what to do.
    """
    check_output_location(output_dir, [*inputs, *(c["image"] for c in cases)])
    if isinstance(overwrite, str):  # a bundle override given as text
        overwrite = overwrite.strip().lower() in ("1", "true", "yes")
    targets = [p for c in cases for p in case_output_paths(output_dir, c["case"]).values()]
    existing = [p for p in [*targets, os.path.join(str(output_dir), SUMMARY_NAME)] if os.path.exists(p)]
    if existing and not overwrite:
        raise ValueError(
            f"{existing[0]}: exists ({len(existing)} of the files of {len(cases)} cases would be replaced); "
            "pass overwrite (--overwrite) to replace them, or choose another output folder"
        )
