"""Data commands: ``prepare`` (Kaggle folders -> NIfTI + datalist), ``export-kaggle``, ``synthesize``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tqdm import tqdm

from pipeline.data import LGGDataError, export_kaggle, prepare_dataset
from pipeline.synthetic import write_synthetic_kaggle

logger = logging.getLogger("lggseg")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the data sub-commands to ``lggseg``."""
    prepare = subparsers.add_parser(
        "prepare",
        help="stack raw Kaggle patient folders into per-patient NIfTI volumes, a datalist and folds",
        description="Discover patients, validate and sort their slices numerically, stack them into "
        "3-channel image and binary label volumes (compressed NIfTI), and write datalist.json (MONAI "
        "decathlon format, patient-level folds stratified by institution) and patients.csv (data.csv "
        "fields per patient). Nothing is left half-written: results appear only when all is done.",
    )
    prepare.add_argument("--input", required=True, type=Path, help="the kaggle_3m folder")
    prepare.add_argument("--output", required=True, type=Path, help="output folder")
    prepare.add_argument("--folds", type=int, default=5, help="number of patient-level folds (default 5)")
    prepare.add_argument("--seed", type=int, default=0, help="seed of the fold assignment (default 0)")
    prepare.add_argument(
        "--spacing",
        type=float,
        nargs=3,
        default=(1.0, 1.0, 1.0),
        metavar=("ROW", "COL", "SLICE"),
        help="voxel size in mm (default 1 1 1; the TIFFs do not store it)",
    )
    prepare.add_argument("--workers", type=int, default=None, help="parallel processes (default: all CPUs)")
    prepare.add_argument("--overwrite", action="store_true", help="replace results already in --output")
    prepare.add_argument(
        "--skip-invalid",
        action="store_true",
        help="write the valid patients and list invalid ones in problems.json (exit code stays 1)",
    )
    prepare.set_defaults(func=run_prepare)

    export = subparsers.add_parser(
        "export-kaggle",
        help="write a label volume back as per-slice <patient>_<k>_mask.tif files",
        description="The inverse of prepare for labels: slice k of the NIfTI label (or prediction) becomes "
        "<patient>_<k+1>_mask.tif with values 0/255, in the original Kaggle naming.",
    )
    export.add_argument("--label", required=True, type=Path, help="label or prediction NIfTI")
    export.add_argument("--output", required=True, type=Path, help="folder for the mask TIFFs")
    export.add_argument("--patient", default=None, help="file-name prefix (default: the label's folder name)")
    export.add_argument("--overwrite", action="store_true", help="replace existing mask files")
    export.set_defaults(func=run_export_kaggle)

    synth = subparsers.add_parser(
        "synthesize",
        help="write the built-in synthetic LGG-like data set in the Kaggle layout",
        description="Deterministic synthetic patients (brain ellipsoid, FLAIR-hyperintense tumour blob and "
        "its mask) as per-slice TIFFs plus data.csv, for trying the pipeline without a download.",
    )
    synth.add_argument("--output", required=True, type=Path, help="folder to create (acts as kaggle_3m)")
    synth.add_argument("--patients", type=int, default=10, help="number of patients (default 10)")
    synth.add_argument("--size", type=int, default=256, help="slice height and width (default 256)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.set_defaults(func=run_synthesize)


def run_prepare(args: argparse.Namespace) -> int:
    """Run ``lggseg prepare``."""
    try:
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
    except LGGDataError as error:
        logger.error("%s", error)
        return 1
    logger.info(
        "wrote %d patients, %s/datalist.json and patients.csv", len(result.patients), result.output_dir
    )
    if result.problems:
        logger.error("%d patients skipped (see problems.json)", len(result.problems))
        return 1
    return 0


def run_export_kaggle(args: argparse.Namespace) -> int:
    """Run ``lggseg export-kaggle``."""
    try:
        files = export_kaggle(args.label, args.output, patient_id=args.patient, overwrite=args.overwrite)
    except LGGDataError as error:
        logger.error("%s", error)
        return 1
    logger.info("wrote %d mask files to %s", len(files), args.output)
    return 0


def run_synthesize(args: argparse.Namespace) -> int:
    """Run ``lggseg synthesize``."""
    try:
        root = write_synthetic_kaggle(args.output, num_patients=args.patients, seed=args.seed, size=args.size)
    except FileExistsError as error:
        logger.error("%s", error)
        return 1
    logger.info("wrote %d synthetic patients to %s", args.patients, root)
    return 0
