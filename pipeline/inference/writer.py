"""Writing predictions: each case as ``<output>/<case>/<case>_seg.nii.gz`` (uint8, the input's grid),
under a temporary name first, and the check of the targets before any work. A prediction is named after its
case (the ``case`` or datalist ``patient`` of its entry), the name every check and report uses, never after
its image file alone (two patients' ``scan.nii.gz`` are two cases).

The mask is written by :class:`SaveMaskd` with nibabel, **with the input's own NIfTI header** when the input
was a NIfTI file (carried in the image's metadata by the loaders): the same qform and sform, with their
codes, whatever their combination, so nibabel, FSL, ITK and 3D Slicer place mask and FLAIR alike. Other
inputs (DICOM series, Kaggle folders) get their affine as both qform and sform (code 1, scanner). MONAI's
``SaveImaged`` is not used: it keeps one affine only, and MONAI 1.6.1's ``NibabelWriter`` fails on a
channel-first mask whose affine is purely sagittal or coronal ("Affine ... is not invertible", reported as
"cannot find a suitable writer").
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

import nibabel as nib
import numpy as np
from monai.transforms import Compose, MapTransform

from pipeline.ingestion.cases import case_name
from pipeline.preprocessing.scan_chain import SCAN_META
from pipeline.safety import atomic_path, check_output_location, partial_postfix, remove_stale_temporaries

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


def _array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _header_of(meta: Any) -> nib.Nifti1Header | nib.Nifti2Header | None:
    """The input's NIfTI header carried in the metadata (``None``: not a NIfTI input)."""
    text = meta.get(SCAN_META["nifti_header"]) if meta else None
    if isinstance(text, (list, tuple)):  # a batch of one not decollated
        text = text[0] if text else None
    if not text:
        return None
    raw = bytes.fromhex(str(text))
    sizes = {int.from_bytes(raw[:4], order) for order in ("little", "big")}
    kind = nib.Nifti2Header if 540 in sizes else nib.Nifti1Header
    return kind(binaryblock=raw[: kind.template_dtype.itemsize])


def mask_image(mask: Any, affine: Any, meta: Any = None) -> nib.Nifti1Image | nib.Nifti2Image:
    """The NIfTI image of a binary mask on its input's grid.

    Args:
        mask: the mask ``(H, W, D)`` or ``(1, H, W, D)``, on the grid of ``affine`` (RAS).
        affine: its voxel-to-world affine.
        meta: the input's metadata: when it carries the input's NIfTI header and that header describes this
            grid (same shape, same affine), the mask gets a copy of it (qform, sform, codes, units), with
            uint8 data and no scaling.

    Returns:
        the nibabel image (uint8 0/1).
    """
    array = _array(mask)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    data = (array > 0).astype(np.uint8)
    affine = np.asarray(_array(affine), dtype=np.float64)
    header = _header_of(meta)
    if header is not None:
        shape = tuple(int(s) for s in header.get_data_shape()[:3])
        klass = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
        if shape == data.shape and np.allclose(header.get_best_affine(), affine, atol=1e-3):
            out_header = header.copy()
            out_header.set_data_shape(data.shape)
            out_header.set_data_dtype(np.uint8)
            out_header.set_slope_inter(1.0, 0.0)
            out_header["cal_min"], out_header["cal_max"] = 0, 1
            return klass(data, None, header=out_header)  # qform and sform as read, codes included
    image = nib.Nifti1Image(data, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    return image


class SaveMaskd(MapTransform):
    """Write each binary prediction as ``<output>/<case>/<case>_seg<postfix>.nii.gz`` with
    :func:`mask_image` (the input's header where it has one), atomically; the path goes to ``saved_to`` in
    the metadata (MONAI ``SaveImaged``'s key).

    Args:
        keys: the keys to write (``"pred"``).
        output_dir: root of the outputs.
        output_postfix: the name's postfix after the case (``seg``, or a partial name).
    """

    def __init__(
        self, keys: Any, output_dir: str | os.PathLike, output_postfix: str = PREDICTION_POSTFIX
    ) -> None:
        super().__init__(keys)
        self.output_dir, self.output_postfix = str(output_dir), output_postfix

    def __call__(self, data: Any) -> Any:
        d = dict(data)
        for key in self.key_iterator(d):
            pred = d[key]
            meta = getattr(pred, "meta", {}) or {}
            name = case_name_formatter(dict(meta), None)["subject"]
            folder = os.path.join(self.output_dir, name)
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, f"{name}_{self.output_postfix}.nii.gz")
            affine = getattr(pred, "affine", None)
            image = mask_image(pred, np.eye(4) if affine is None else affine, meta)
            with atomic_path(path) as tmp:
                nib.save(image, str(tmp))
            if hasattr(pred, "meta"):
                pred.meta["saved_to"] = path
        return d


def prediction_writer(output_dir: str | os.PathLike, key: str = "pred", publish: bool = True) -> Compose:
    """:class:`CaseNamed`, :class:`SaveMaskd` of the binary prediction under a partial name naming this
    process
    (``<case>_seg.partial-<pid>-<start>-<random>.nii.gz``, removed by the next run when this one was killed,
    :func:`pipeline.safety.remove_stale_temporaries`), then :class:`PublishSavedd`.

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
            SaveMaskd(keys=key, output_dir=output_dir, output_postfix=partial_postfix(PREDICTION_POSTFIX)),
            *([PublishSavedd(keys=key)] if publish else []),
        ]
    )


def case_files(output_dir: str | os.PathLike, case: str) -> list[str]:
    """The files ``infer`` may write for ``case``, relative to ``output_dir`` (posix)."""
    root = str(output_dir)
    return [os.path.relpath(p, root).replace(os.sep, "/") for p in case_output_paths(root, case).values()]


def incomplete_cases(output_dir: str | os.PathLike, cases: Sequence[str]) -> list[str]:
    """The cases of ``cases`` whose files an interrupted run left without their mask: files lggseg wrote
    (listed in the manifest) but no ``<case>_seg.nii.gz``. Their files are replaced without ``overwrite``."""
    from pipeline.safety import owned_files

    owned = owned_files(output_dir)
    found = []
    for case in cases:
        files = case_files(output_dir, case)
        mask, others = files[0], files[1:]
        here = [f for f in others if os.path.exists(os.path.join(str(output_dir), f)) and f in owned]
        if here and not os.path.exists(os.path.join(str(output_dir), mask)):
            found.append(case)
    return found


def check_prediction_targets(
    cases: Sequence[dict],
    output_dir: str | os.PathLike,
    inputs: Sequence[str | os.PathLike] = (),
    overwrite: bool = False,
) -> None:
    """Refuse, before any work: an output folder that is or holds an input; a file lggseg did not write
    under a name it would write (never replaced, even with ``overwrite``: a user's own ``summary.csv``, say);
    predictions that exist already (unless ``overwrite``: then only files lggseg wrote are replaced). The
    leftovers of a case an interrupted run did not finish (its QC picture without its mask) do not count:
    they are replaced.

    Args:
        cases: the cases to segment (``{"image", "case"}``, see :func:`pipeline.ingestion.cases.find_cases`).
        output_dir: where :func:`prediction_writer` writes.
        inputs: the paths the cases come from.
        overwrite: replace existing predictions of these cases.

    Raises:
        ValueError: naming the path and what to do.
    """
    from pipeline.safety import owned_files

    check_output_location(output_dir, [*inputs, *(c["image"] for c in cases)])
    remove_stale_temporaries(output_dir, depth=3)  # <case>/<case>_seg.partial-*, <case>/kaggle_masks/.*.tmp-*
    if isinstance(overwrite, str):  # a bundle override given as text
        overwrite = overwrite.strip().lower() in ("1", "true", "yes")
    root = str(output_dir)
    owned = owned_files(root) if os.path.isdir(root) else set()
    planned = [f for c in cases for f in case_files(root, c["case"])] + [SUMMARY_NAME]
    foreign = [f for f in planned if os.path.lexists(os.path.join(root, f)) and f not in owned]
    if foreign:
        raise ValueError(
            f"{os.path.join(root, foreign[0])}: exists and lggseg did not write it ({len(foreign)} such "
            "files under names infer would write); it is never replaced, even with --overwrite: move it "
            "away or choose another output folder"
        )
    unfinished = set(incomplete_cases(root, [c["case"] for c in cases]))
    existing = [
        f
        for c in cases
        if c["case"] not in unfinished
        for f in case_files(root, c["case"])
        if os.path.exists(os.path.join(root, f))
    ]
    if existing and not overwrite:
        raise ValueError(
            f"{os.path.join(root, existing[0])}: exists ({len(existing)} of the files of {len(cases)} cases "
            "would be replaced); pass overwrite (--overwrite) to replace them, or choose another output "
            "folder"
        )
