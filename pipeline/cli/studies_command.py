"""``lggseg studies``: a flat studies folder for MONAI Label / 3D Slicer (see
:mod:`pipeline.ingestion.studies`).

Errors follow :mod:`pipeline.cli.errors`: one line on stderr, exit code 2 for bad usage or input (nothing
written), 1 when some patients could not be written (one line each; the others were written); ``--debug``
shows tracebacks.
"""

from __future__ import annotations

import argparse
import functools
import logging
from pathlib import Path

from pipeline.cli.errors import report_failures
from pipeline.cli.parsing import add_command, add_spacing_option

logger = logging.getLogger("lggseg")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``studies`` to ``lggseg``."""
    studies = add_command(
        subparsers,
        "studies",
        run_studies,
        interrupted="nothing in {output} is half-written (the studies are moved in only when all are "
        "staged) and the staging folder was removed; run again",
        help="write a flat studies folder for MONAI Label and 3D Slicer (<patient>.nii.gz [+ labels])",
        description="Write every patient of a kaggle_3m folder, a raw patient folder or a prepared folder "
        "as <patient>.nii.gz in one flat folder, the layout MONAI Label's local datastore reads; with "
        "--with-labels also labels/final/<patient>.nii.gz (the ground truth as finished labels, e.g. to "
        "fine-tune). Images are the 3-channel (H, W, D, 3) NIfTI of `lggseg prepare` (3D Slicer shows them "
        "as a 3-frame sequence: pre-contrast, FLAIR, post-contrast). Files lggseg did not write are never "
        "replaced or removed. Serve the folder with: python -m monailabel.main start_server --app "
        "apps/lggseg --studies OUTPUT --host 127.0.0.1 --port 8000",
    )
    studies.add_argument(
        "--input",
        required=True,
        type=Path,
        help="kaggle_3m folder, one raw patient folder, or a prepared folder (with datalist.json)",
    )
    studies.add_argument("--output", required=True, type=Path, help="the studies folder to write")
    studies.add_argument(
        "--with-labels", action="store_true", help="also write labels/final/<patient>.nii.gz (ground truth)"
    )
    studies.add_argument(
        "--patients", nargs="+", default=None, metavar="NAME", help="only these patients (folder names)"
    )
    add_spacing_option(studies, "voxel size in mm for raw folders")
    studies.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a folder holding other files (e.g. a MONAI Label datastore), replacing only the "
        "studies lggseg wrote; files lggseg did not write are never replaced or removed",
    )


def _skipped_line(source: Path, name: str, problem: str) -> str:
    return f"{source / name}: {problem}; skipped, the other patients were written"


def run_studies(args: argparse.Namespace) -> int:
    """Run ``lggseg studies``; returns the exit code (0 all written, 1 some patients failed, 2 bad input)."""
    from tqdm import tqdm

    from pipeline.ingestion.studies import write_studies

    result = write_studies(
        args.input,
        args.output,
        with_labels=args.with_labels,
        overwrite=args.overwrite,
        patients=args.patients,
        spacing=args.spacing,
        progress=lambda it, total: tqdm(it, total=total, desc="studies", unit="patient"),
    )
    code = report_failures(result.failures, functools.partial(_skipped_line, args.input))
    logger.info(
        "wrote %d studies%s to %s",
        len(result.written),
        " with labels" if args.with_labels else "",
        args.output,
    )
    return code
