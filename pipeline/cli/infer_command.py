"""``lggseg infer``: predict tumour masks of a user's scans, prepared folders, NIfTI images or Kaggle
patients (:func:`pipeline.workflows.prediction.infer`; options: :mod:`pipeline.cli.run_options`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.cli.parsing import add_command
from pipeline.cli.run_options import postprocessing_options, postprocessing_overrides


def run_infer(args: argparse.Namespace) -> int:
    """Run ``lggseg infer``: print how many predictions were written.

    Raises:
        FileNotFoundError: a file of ``--flair``, ``--t1`` or ``--t1c`` does not exist: said in one line
            before anything is read or written (exit code 2; a missing ``--input`` is found by
            :func:`pipeline.ingestion.cases.find_cases`, also before any case runs).
    """
    for flag in ("flair", "t1", "t1c"):
        path = getattr(args, flag)
        if path is not None and not Path(path).exists():
            raise FileNotFoundError(f"{path}: not found (--{flag}); give an existing file or folder")
    from pipeline.workflows.prediction import infer

    inputs: list = list(args.input)
    if args.flair is not None:
        from pipeline.ingestion.cases import case_name
        from pipeline.ingestion.scan_cases import make_scan_case

        name = args.case or case_name(args.flair)
        inputs.append(make_scan_case(name, args.flair, args.t1, args.t1c))
    elif args.t1 or args.t1c or args.case:
        raise ValueError("--t1, --t1c and --case go with --flair FILE (one case named explicitly)")
    if not inputs:
        raise ValueError("nothing to segment: pass --input PATH ... or --flair FILE")
    written = infer(
        args.checkpoint,
        inputs,
        args.output,
        overrides=postprocessing_overrides(args),
        kaggle_masks=args.kaggle_masks,
        device=args.device,
        overwrite=args.overwrite,
    )
    print(f"{len(written)} predictions written to {args.output}")
    return 0


PREDICTIONS_LEFT = (
    "every <case>_seg.nii.gz already in {where} is complete (one being written is left as "
    "<case>_seg.partial-<pid>-*.nii.gz, removed by the next run)"
)


def _infer_options(parser: argparse.ArgumentParser) -> None:
    postprocessing_options(parser)
    parser.add_argument(
        "--input",
        nargs="+",
        default=[],
        help="what to segment: scan case folders (FLAIR [+ T1, T1c] as NIfTI files or DICOM series) or "
        "folders of them, FLAIR NIfTI files, prepared folders, datalists, Kaggle patient folders",
    )
    parser.add_argument(
        "--flair", type=Path, help="one case named explicitly: its FLAIR (NIfTI file or DICOM folder)"
    )
    parser.add_argument(
        "--t1", type=Path, help="with --flair: its pre-contrast T1 (default: the FLAIR stands in)"
    )
    parser.add_argument(
        "--t1c", type=Path, help="with --flair: its post-contrast T1 (default: the FLAIR stands in)"
    )
    parser.add_argument("--case", help="with --flair: the case name (default: the FLAIR's name)")
    parser.add_argument("--output", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--kaggle-masks", action="store_true", help="also write <patient>_<k>_mask.tif per slice"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace existing predictions of these cases"
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``infer`` (its options are described when it is used)."""
    add_command(
        subparsers,
        "infer",
        run_infer,
        interrupted=PREDICTIONS_LEFT.format(where="{output}")
        + "; run again with --overwrite, or on the cases still missing",
        options=_infer_options,
        help="predict tumour masks as NIfTI (and Kaggle-layout TIFF masks)",
        description="Inputs: a user's scans (case folders of FLAIR [+ T1, T1c] NIfTI files or DICOM "
        "series, or --flair FILE), prepared folders or datalists, NIfTI images, raw Kaggle patient folders "
        "or folders of them. Writes OUTPUT/<case>/<case>_seg.nii.gz on the input's own grid, <case>_qc.png, "
        "<case>_seg.dcm (DICOM input) and OUTPUT/summary.csv.",
    )
