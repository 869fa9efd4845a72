"""Data commands: ``prepare`` (Kaggle folders -> NIfTI + datalist), ``export-kaggle``, ``synthesize``.

They keep the project rule of :mod:`pipeline.safety`: no command deletes or overwrites a file it did not
write. Errors follow :mod:`pipeline.cli.errors`: one line on stderr, exit code 2 for bad usage or input and
1 when some patients failed (one line each); ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
from pathlib import Path

from pipeline.cli.errors import report_failures
from pipeline.cli.parsing import add_command, add_spacing_option
from pipeline.safety import check_output_location, staging_folder, write_manifest

logger = logging.getLogger("lggseg")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the data sub-commands to ``lggseg``."""
    prepare = add_command(
        subparsers,
        "prepare",
        run_prepare,
        interrupted="nothing in {output} is half-written (results are moved in only when all is done) and "
        "the staging folder was removed; run again",
        failure_line=prepare_failure_line,
        help="stack raw Kaggle patient folders into per-patient NIfTI volumes, a datalist and folds",
        description="Discover patients, validate and sort their slices numerically, stack them into "
        "3-channel image and binary label volumes (compressed NIfTI), and write datalist.json (MONAI "
        "decathlon format, patient-level folds stratified by institution) and patients.csv (data.csv "
        "fields per patient). Nothing is left half-written: results appear only when all is done, and no "
        "file lggseg did not write is ever replaced or removed (the written files are listed in "
        "OUTPUT/.lggseg-manifest.json).",
    )
    prepare.add_argument("--input", required=True, type=Path, help="the kaggle_3m folder")
    prepare.add_argument("--output", required=True, type=Path, help="output folder")
    prepare.add_argument("--folds", type=int, default=5, help="number of patient-level folds (default 5)")
    prepare.add_argument("--seed", type=int, default=0, help="seed of the fold assignment (default 0)")
    add_spacing_option(prepare)
    prepare.add_argument("--workers", type=int, default=None, help="parallel processes (default: all CPUs)")
    prepare.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the results of an earlier prepare in --output, or write into a folder holding other "
        "files; files lggseg did not write are never replaced or removed",
    )
    prepare.add_argument(
        "--skip-invalid",
        action="store_true",
        help="write the valid patients and list invalid ones in problems.json (exit code stays 1)",
    )

    export = add_command(
        subparsers,
        "export-kaggle",
        run_export_kaggle,
        interrupted="no mask file in {output} is half-written (each is renamed into place once all are "
        "written); run again, with --overwrite if some were",
        help="write a label volume back as per-slice <patient>_<k>_mask.tif files",
        description="The inverse of prepare for labels: slice k of the NIfTI label (or prediction) becomes "
        "<patient>_<k+1>_mask.tif with values 0/255, in the original Kaggle naming.",
    )
    export.add_argument("--label", required=True, type=Path, help="label or prediction NIfTI")
    export.add_argument("--output", required=True, type=Path, help="folder for the mask TIFFs")
    export.add_argument("--patient", default=None, help="file-name prefix (default: the label's folder name)")
    export.add_argument(
        "--overwrite",
        action="store_true",
        help="replace mask files an earlier export-kaggle wrote (never masks lggseg did not write)",
    )

    synth = add_command(
        subparsers,
        "synthesize",
        run_synthesize,
        interrupted="nothing was written to {output} and the staging folder was removed; run again",
        help="write the built-in synthetic LGG-like data set in the Kaggle layout",
        description="Deterministic synthetic patients (brain ellipsoid, FLAIR-hyperintense tumour blob and "
        "its mask) as per-slice TIFFs plus data.csv, for trying the pipeline without a download.",
    )
    synth.add_argument("--output", required=True, type=Path, help="folder to create (acts as kaggle_3m)")
    synth.add_argument("--patients", type=int, default=10, help="number of patients (default 10)")
    synth.add_argument("--size", type=int, default=256, help="slice height and width (default 256)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def prepare_failure_line(args: argparse.Namespace, patient: str, problem: str) -> str:
    """The line of a patient ``prepare`` could not convert: its folder, the problem, what to do."""
    hint = (
        f"skipped, listed in {args.output / 'problems.json'}"
        if args.skip_invalid
        else "fix or remove the folder, or pass --skip-invalid to write the other patients"
    )
    return f"{args.input / patient}: {problem}; {hint}"


def run_prepare(args: argparse.Namespace) -> int:
    """Run ``lggseg prepare``."""
    from tqdm import tqdm

    from pipeline.ingestion.prepare import prepare_dataset

    result = prepare_dataset(
        args.input,
        args.output,
        num_folds=args.folds,
        seed=args.seed,
        spacing=args.spacing,
        overwrite=args.overwrite,
        skip_invalid=args.skip_invalid,
        workers=args.workers,
        progress=lambda it, total: tqdm(it, total=total, desc="prepare", unit="patient"),
    )
    logger.info(
        "wrote %d patients, %s/datalist.json and patients.csv", len(result.patients), result.output_dir
    )
    return report_failures(result.problems, functools.partial(prepare_failure_line, args))


def run_export_kaggle(args: argparse.Namespace) -> int:
    """Run ``lggseg export-kaggle``."""
    from pipeline.ingestion.export import export_kaggle

    files = export_kaggle(args.label, args.output, patient_id=args.patient, overwrite=args.overwrite)
    logger.info("wrote %d mask files to %s", len(files), args.output)
    return 0


def run_synthesize(args: argparse.Namespace) -> int:
    """Run ``lggseg synthesize``: into a new or empty folder only, staged and moved into place at the end."""
    from pipeline.ingestion.errors import LGGDataError
    from pipeline.ingestion.synthetic import write_synthetic_kaggle

    if args.patients < 1:
        raise LGGDataError(f"--patients {args.patients}: expected at least 1; e.g. --patients 10")
    if args.size < 16:
        raise LGGDataError(f"--size {args.size}: expected at least 16 pixels; e.g. --size 256")
    output = check_output_location(args.output)
    if output.exists() and any(output.iterdir()):
        raise LGGDataError(
            f"{args.output}: folder is not empty; synthesize writes only into a new or empty folder"
        )
    with staging_folder(output) as staging:
        root = write_synthetic_kaggle(
            staging / "data", num_patients=args.patients, seed=args.seed, size=args.size
        )
        files = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
        write_manifest(root, files, command="synthesize", replace=True)
        if not output.exists():
            os.replace(root, output)
        else:  # an empty folder: move the entries in, none can clash
            for entry in root.iterdir():
                os.replace(entry, output / entry.name)
    logger.info("wrote %d synthetic patients to %s", args.patients, args.output)
    return 0
