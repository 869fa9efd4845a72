"""``lggseg demo``: the product's main job first, on a real scan, then the whole pipeline on synthetic data.

1. The example scan committed with the project (``examples/TCGA_FG_6692_20020606``: the raw TCIA FLAIR, T1 and
   T1 post-contrast of one LGG patient, CC BY 3.0) is segmented with the shipped model
   (``bundle/models/model.pt``) by ``lggseg infer``, in seconds: its mask on the FLAIR's own grid, its QC
   picture and ``summary.csv``. When the Kaggle data set is on this machine
   (``../shared/data/lgg/kaggle_3m/TCGA_FG_6692_20020606``), the patient's Kaggle mask is carried onto the raw
   FLAIR grid by ``scripts/kaggle_geometry.py`` (a registration, about ten seconds) and the Dice is printed;
   otherwise one line says why there is none. The patient is one of the shipped model's training patients,
   so that Dice shows the path works, it is no measure of accuracy (the cross-validated figure is).
2. Deterministic synthetic patients in the Kaggle layout go through the commands a user runs on the real
   data: ``synthesize``, ``prepare``, ``train``, ``evaluate``, ``infer``.

Layout of ``--output``: ``example/`` (step 1), ``kaggle_3m/``, ``prepared/``, ``synthetic/fold0/`` (the
trained run, its ``evaluation/`` report) and ``predictions/`` (step 2).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import logging
import tempfile
import time
from pathlib import Path
from types import ModuleType

from pipeline.cli import main as lggseg
from pipeline.cli.parsing import add_command

logger = logging.getLogger("lggseg")

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = REPO_ROOT / "examples" / "TCGA_FG_6692_20020606"
"""The example scan: raw TCIA FLAIR, T1 and T1c NIfTI files of one patient (see ``examples/README.md``)."""
KAGGLE_3M = REPO_ROOT.parent / "shared" / "data" / "lgg" / "kaggle_3m"
"""Where the Kaggle data set lies on a developer's machine: the example's truth is made from it."""
GEOMETRY_SCRIPT = REPO_ROOT / "scripts" / "kaggle_geometry.py"
RUN_NAME = "synthetic"  # the synthetic run: OUTPUT/synthetic/fold0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``demo`` to ``lggseg``."""
    demo = add_command(
        subparsers,
        "demo",
        run_demo,
        interrupted="the steps finished so far are in {output}; run again with --overwrite to start again",
        help="segment a real example scan with the shipped model, then run the pipeline end to end on "
        "synthetic LGG-like data (the README's main command)",
        description="First segment the example scan (examples/TCGA_FG_6692_20020606, raw TCIA FLAIR, T1 "
        "and T1c) with the shipped model: its mask, QC picture and, when the Kaggle data set is on this "
        "machine, its Dice. Then generate deterministic synthetic patients in the Kaggle layout and run "
        "every pipeline step on them with the same commands a user runs on the real data.",
    )
    demo.add_argument(
        "--output", type=Path, default=Path("runs/demo"), help="work folder (default runs/demo)"
    )
    demo.add_argument("--patients", type=int, default=10, help="number of synthetic patients (default 10)")
    demo.add_argument("--size", type=int, default=128, help="slice size of the synthetic data (default 128)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--overwrite", action="store_true", help="start again if --output already exists")


def example_step(args: argparse.Namespace) -> list[str] | None:
    """The ``lggseg infer`` command line of the example scan with the shipped model, or ``None`` (said in a
    log line) when the example or the shipped model is not there (a copy of the package without them).

    Args:
        args: the parsed ``demo`` arguments.

    Returns:
        the argument list, or ``None``.
    """
    from pipeline.model_files import SHIPPED_MODEL

    for path in (EXAMPLE, SHIPPED_MODEL):
        if not path.exists():
            logger.info("demo: no real example: %s is not there", path)
            return None
    return ["infer", "--input", str(EXAMPLE), "--output", str(args.output / "example")]


def demo_steps(args: argparse.Namespace) -> list[list[str]]:
    """The ``lggseg`` command lines of the synthetic round trip, in order.

    Args:
        args: the parsed ``demo`` arguments.

    Returns:
        one argument list per step.
    """
    raw, prepared = args.output / "kaggle_3m", args.output / "prepared"
    return [
        [
            "synthesize",
            "--output",
            str(raw),
            "--patients",
            str(args.patients),
            "--size",
            str(args.size),
            "--seed",
            str(args.seed),
        ],
        ["prepare", "--input", str(raw), "--output", str(prepared), "--seed", str(args.seed)],
        *train_evaluate_infer_steps(args, raw, prepared),
    ]


def synthetic_run(args: argparse.Namespace) -> Path:
    """The folder of the demo's training run: ``OUTPUT/synthetic/fold0``."""
    return args.output / RUN_NAME / "fold0"


def train_evaluate_infer_steps(args: argparse.Namespace, raw: Path, prepared: Path) -> list[list[str]]:
    """Train UNeXt briefly on fold 0's training folds, evaluate it per patient on the held-out fold, and
    segment every raw patient folder (NIfTI and Kaggle-layout masks)."""
    best = str(synthetic_run(args) / "checkpoints" / "best_model.pt")
    training = (
        f"--name {RUN_NAME} --fold 0 --arch unext --epochs 6 --batch-size 16 --num-samples 16 "
        "--volume-repeats 2"
    )
    return [
        [
            "train",
            "--data",
            str(prepared),
            "--output",
            str(args.output),
            *training.split(),
            "--seed",
            str(args.seed),
        ],
        ["evaluate", "--checkpoint", best, "--keep-largest", "1", "--save-predictions"],
        [
            "infer",
            "--checkpoint",
            best,
            "--input",
            str(raw),
            "--output",
            str(args.output / "predictions"),
            "--keep-largest",
            "1",
            "--kaggle-masks",
        ],
    ]


DEMO_PARTS = ("example", "kaggle_3m", "prepared", RUN_NAME, "predictions", "runs")
"""What the demo writes in ``--output`` (``runs``: where earlier versions of the demo trained)."""


def _clear_for_overwrite(output: Path) -> str | None:
    """Make room for a new demo in ``output``, removing only what an earlier demo wrote.

    Returns:
        ``None`` when the demo may start, else the one-line reason it may not (nothing removed then).
    """
    from pipeline.safety import MANIFEST_FILENAME, foreign_files, remove_owned

    foreign = sorted(p.name for p in output.iterdir() if p.name not in DEMO_PARTS)
    if foreign:
        return (
            f"{output}: holds {', '.join(foreign[:3])}, which the demo did not write; choose another --output"
        )
    raw = output / "kaggle_3m"
    if raw.is_dir() and foreign_files(raw):
        return f"{raw}: holds files the demo did not write; choose another --output"
    if raw.is_dir():
        remove_owned(raw)
        (raw / MANIFEST_FILENAME).unlink(missing_ok=True)
        if not any(raw.iterdir()):
            raw.rmdir()
    return None


def _load_script(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path}: cannot be imported")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def example_dice(mask: Path, kaggle_patient: Path) -> tuple[float | None, str]:
    """The Dice of the example's mask against the patient's Kaggle mask carried onto the raw FLAIR grid
    (``scripts/kaggle_geometry.py``: the Kaggle FLAIR registered to the raw FLAIR, 3D rigid then affine).

    Args:
        mask: the predicted mask on the example's FLAIR grid.
        kaggle_patient: the patient's ``kaggle_3m`` folder (its masks are the truth; CC BY-NC-SA, never
            copied into the project: the truth is made in a temporary folder and removed).

    Returns:
        ``(Dice, "")``, or ``(None, why there is none)``.
    """
    if not kaggle_patient.is_dir():
        return None, f"the Kaggle mask of this patient ({kaggle_patient}) is not on this machine"
    if not GEOMETRY_SCRIPT.is_file():
        return None, f"{GEOMETRY_SCRIPT} is not there (it carries the Kaggle mask onto the raw grid)"
    import nibabel as nib
    import numpy as np
    import SimpleITK as sitk

    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)  # as the script runs: the same registration
    try:
        geometry = _load_script(GEOMETRY_SCRIPT)
        with tempfile.TemporaryDirectory() as work, contextlib.redirect_stdout(io.StringIO()):
            inputs = argparse.Namespace(
                raw_flair=next(EXAMPLE.glob("*_fla.nii.gz")),
                kaggle_patient=kaggle_patient,
                raw_t1=None,
                raw_t1c=None,
                seed=1,
            )
            data = geometry.Data(inputs)
            _, affine = geometry.rigid_then_affine(data.kgl, data.raw, data.seed)
            truth_path = Path(work) / "truth.nii.gz"
            geometry.mask_section(data, affine, truth_path)
            truth = nib.load(truth_path)
            truth_array = np.asarray(truth.dataobj) > 0
            truth_affine = truth.affine
    except (SystemExit, Exception) as error:  # the Dice is an extra: the demo goes on without it
        return None, f"the truth could not be made from {kaggle_patient} ({type(error).__name__}: {error})"
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    predicted = nib.load(mask)
    if predicted.shape != truth_array.shape or not np.allclose(predicted.affine, truth_affine, atol=1e-3):
        return None, f"{mask}: not on the grid of the truth (the raw FLAIR's)"
    prediction = np.asarray(predicted.dataobj) > 0
    total = int(prediction.sum() + truth_array.sum())
    return (1.0 if total == 0 else 2.0 * float((prediction & truth_array).sum()) / total), ""


def report_example(args: argparse.Namespace, seconds: float) -> Path:
    """Print where the example's mask and QC picture are, and its Dice (or why there is none).

    Args:
        args: the parsed ``demo`` arguments.
        seconds: how long ``lggseg infer`` took.

    Returns:
        the mask file.
    """
    from pipeline.cli.seen_in_training import cross_validated_figure
    from pipeline.inference.writer import case_output_paths
    from pipeline.model_files import SHIPPED_MODEL as model

    case = EXAMPLE.name
    paths = case_output_paths(args.output / "example", case)
    print(f"example scan {case} (raw TCIA FLAIR, T1, T1c) segmented by the shipped model in {seconds:.1f} s:")
    print(f"  mask:       {paths['seg_nifti']} (on the FLAIR's own grid)")
    print(f"  QC picture: {paths['qc_png']}")
    print(f"  summary:    {args.output / 'example' / 'summary.csv'}")
    dice, why = example_dice(Path(paths["seg_nifti"]), KAGGLE_3M / case)
    if dice is None:
        print(f"  Dice:       none: {why}")
    else:
        honest = cross_validated_figure(model)
        print(
            f"  Dice:       {dice:.3f} against the patient's Kaggle mask carried onto the FLAIR grid (a "
            f"training patient of the shipped model: this shows the path works; {honest})"
        )
    return Path(paths["seg_nifti"])


def run_demo(args: argparse.Namespace) -> int:
    """Run ``lggseg demo``: the example scan first, then every step of the synthetic round trip, stopping at
    the first failure. ``--overwrite`` starts again in a folder of an earlier demo and replaces only the files
    the demo wrote; ``--debug`` is passed on to the steps.

    Raises:
        ValueError: ``--output`` holds an earlier demo and no ``--overwrite``, or files the demo did not
            write (bad usage, exit code 2; nothing removed).
    """
    example = example_step(args)
    steps = demo_steps(args)
    if args.output.exists() and any(args.output.iterdir()):
        if not args.overwrite:
            raise ValueError(f"{args.output}: already exists; pass --overwrite to start again")
        problem = _clear_for_overwrite(args.output)
        if problem:
            raise ValueError(problem)
        for step in [*steps, *([example] if example else [])]:
            if step[0] in ("prepare", "train", "infer"):
                step.append("--overwrite")
    debug = ["--debug"] if getattr(args, "debug", False) else []
    example_mask = None
    if example is not None:
        logger.info("demo step 1: lggseg %s", " ".join(example))
        start = time.perf_counter()
        code = lggseg([*debug, *example])
        if code:
            logger.error("demo step 1 failed (exit code %d)", code)
            return code
        example_mask = report_example(args, time.perf_counter() - start)
    for number, step in enumerate(steps, start=2):
        logger.info("demo step %d: lggseg %s", number, " ".join(step))
        code = lggseg([*debug, *step])
        if code:
            logger.error("demo step %d failed (exit code %d)", number, code)
            return code
    report = synthetic_run(args) / "evaluation" / "metrics.json"
    logger.info("demo finished: results in %s", args.output)
    if example_mask is not None:
        print(f"real example: {example_mask}")
    print(f"synthetic round trip: evaluation report {report}, predictions in {args.output / 'predictions'}")
    return 0
