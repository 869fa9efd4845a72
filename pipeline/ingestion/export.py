"""``lggseg export-kaggle``: a label volume back to per-slice Kaggle ``_mask.tif`` files."""

from __future__ import annotations

import contextlib
import logging
import os
import re
from pathlib import Path

import numpy as np
import tifffile

from pipeline.ingestion.errors import LGGDataError
from pipeline.ingestion.nifti import load_label_volume
from pipeline.safety import (
    OutputTransaction,
    atomic_path,
    owned_files,
    read_manifest,
    remove_owned,
    remove_stale_temporaries,
    write_manifest,
)

logger = logging.getLogger(__name__)


def export_kaggle(
    label_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    patient_id: str | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Write a label volume back as per-slice ``<patient>_<k>_mask.tif`` files (values 0/255, Kaggle layout).

    Mask files are listed in ``output_dir/.lggseg-manifest.json``. A mask file lggseg did not write (an
    original Kaggle mask, say) is never replaced, even with ``overwrite``; other files are left alone.

    Args:
        label_path: the label NIfTI (from ``prepare`` or a prediction).
        output_dir: folder for the masks (created).
        patient_id: file-name prefix; default the name of the label's parent folder.
        overwrite: replace mask files of this patient that an earlier export wrote (and remove those of
            slices the new label no longer has).

    Returns:
        the written files, slice 1 first.

    Raises:
        LGGDataError: bad label file, mask files of an earlier export present without ``overwrite``, or
            mask files lggseg did not write under the names it would write.
        UnsafeOutputError: the output is a file or cannot be written.
    """
    label_path, output_dir = Path(label_path), Path(output_dir)
    patient_id = patient_id or label_path.resolve().parent.name
    if not patient_id or Path(patient_id).name != patient_id:
        raise LGGDataError(
            f"--patient {patient_id!r}: not a valid file-name prefix; e.g. --patient TCGA_CS_4941"
        )
    mask, _ = load_label_volume(label_path)
    names = [output_dir / f"{patient_id}_{k + 1}_mask.tif" for k in range(mask.shape[-1])]
    owned = owned_files(output_dir)
    earlier = [p.name for p in names if p.name in owned and p.is_file()]
    transaction = OutputTransaction(
        output_dir,
        "export-kaggle",
        overwrite,
        error=LGGDataError,
        results=f"{len(earlier)} mask files of an earlier export (e.g. {earlier[0] if earlier else ''})",
        noun="mask files",
        foreign_needs_overwrite=False,  # writes only *_mask.tif names, never anything else of the folder
    )
    transaction.check([p.name for p in names], earlier=earlier)
    remove_stale_temporaries(output_dir)  # the hidden temporary masks of a killed export
    pattern = re.compile(rf"^{re.escape(patient_id)}_\d+_mask\.tif$")
    stale = {rel for rel in owned if pattern.match(rel)} - {p.name for p in names}
    transaction.claim([p.name for p in names])
    try:
        with contextlib.ExitStack() as stack:  # every file is renamed into place only when all are written
            for k, name in enumerate(names):
                slice_k = (mask[..., k] * 255).astype(np.uint8)
                tifffile.imwrite(stack.enter_context(atomic_path(name)), slice_k)
    except BaseException:  # the manifest claims no mask that is not there
        claimed = {rel for rel in owned_files(output_dir) if (output_dir / rel).exists() or rel in owned}
        with contextlib.suppress(OSError):
            write_manifest(output_dir, claimed, read_manifest(output_dir).get("command", ""), replace=True)
        raise
    remove_owned(output_dir, stale)
    return names
