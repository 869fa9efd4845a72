"""Writing predictions: each case with MONAI's ``SaveImaged`` as ``<output>/<case>/<case>_seg.nii.gz``
(uint8, the input's shape and affine), under a temporary name first, and the check of the targets before
any work. A prediction is named after its case (the ``case`` or datalist ``patient`` of its entry), the
name every check and report uses, never after its image file alone (two patients' ``scan.nii.gz`` are two
cases).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from monai.transforms import Compose, MapTransform, SaveImaged

from pipeline.ingestion.cases import case_name
from pipeline.safety import check_output_location, partial_postfix, remove_stale_temporaries

PREDICTION_POSTFIX = "seg"
PARTIAL_MARK = ".partial"  # in the name of a prediction being written
_PARTIAL = re.compile(r"\.partial-\d+-\d+-[0-9a-f]{8}")  # safety.partial_postfix: writer's pid, start, random
CASE_META_KEY = "lggseg_case"  # the case name carried in the prediction's metadata to SaveImaged


def case_name_formatter(metadict: dict, saver: Any) -> dict:
    """``SaveImaged``'s ``output_name_formatter``: name the output after its case: the name
    :class:`CaseNamed` put in the metadata, else the image's case name
    (:func:`pipeline.ingestion.cases.case_name`), never a file name shared by every case
    (``image.nii.gz``)."""
    if metadict and metadict.get(CASE_META_KEY):
        return {"subject": str(metadict[CASE_META_KEY]), "idx": None}
    source = metadict.get("filename_or_obj", getattr(saver, "_data_index", 0)) if metadict else 0
    return {"subject": case_name(str(source)), "idx": None}


class CaseNamed(MapTransform):
    """Put the case name of the item (its ``case``, else its datalist ``patient``) into the metadata of
    ``keys``, for :func:`case_name_formatter`: the prediction file is named as the checks and reports name
    the case.

    Args:
        keys: the keys to be saved (``"pred"``).
    """

    def __call__(self, data: Any) -> Any:
        d = dict(data)
        name = d.get("case") or d.get("patient")
        if isinstance(name, (list, tuple)) and len(name) == 1:  # a batch of one not decollated
            name = name[0]
        for key in self.key_iterator(d):
            meta = getattr(d[key], "meta", None)
            if name and meta is not None:
                meta[CASE_META_KEY] = str(name)
        return d


def final_name(path: str | os.PathLike) -> str:
    """The final name of a prediction written under its partial name (``<case>_seg.partial-<...>.nii.gz``)."""
    folder, name = os.path.split(str(path))
    return os.path.join(folder, _PARTIAL.sub("", name, count=1))


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
            if saved and _PARTIAL.search(os.path.basename(str(saved))):
                final = final_name(saved)
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


def prediction_writer(output_dir: str | os.PathLike, key: str = "pred", publish: bool = True) -> Compose:
    """:class:`CaseNamed`, MONAI ``SaveImaged`` of the binary prediction under a partial name naming this
    process (``<case>_seg.partial-<pid>-<start>-<random>.nii.gz``, removed by the next run when this one was
    killed, :func:`pipeline.safety.remove_stale_temporaries`), then :class:`PublishSavedd`.

    Args:
        output_dir: root of the outputs; each case gets ``<case>/<case>_seg.nii.gz``.
        key: the key to write.
        publish: rename the file into place (``False``: the caller does, with :func:`final_name`, once the
            case's other files are written).

    Returns:
        the transform chain.
    """
    return Compose(
        [
            CaseNamed(keys=key),
            SaveImaged(
                keys=key,
                output_dir=str(output_dir),
                output_postfix=partial_postfix(PREDICTION_POSTFIX),
                output_ext=".nii.gz",
                output_dtype=np.uint8,
                resample=False,
                separate_folder=True,
                output_name_formatter=case_name_formatter,
                savepath_in_metadict=True,
                print_log=False,
            ),
            *([PublishSavedd(keys=key)] if publish else []),
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
    remove_stale_temporaries(output_dir, depth=3)  # <case>/<case>_seg.partial-*, <case>/kaggle_masks/.*.tmp-*
    if isinstance(overwrite, str):  # a bundle override given as text
        overwrite = overwrite.strip().lower() in ("1", "true", "yes")
    targets = [p for c in cases for p in case_output_paths(output_dir, c["case"]).values()]
    existing = [p for p in [*targets, os.path.join(str(output_dir), SUMMARY_NAME)] if os.path.exists(p)]
    if existing and not overwrite:
        raise ValueError(
            f"{existing[0]}: exists ({len(existing)} of the files of {len(cases)} cases would be replaced); "
            "pass overwrite (--overwrite) to replace them, or choose another output folder"
        )
