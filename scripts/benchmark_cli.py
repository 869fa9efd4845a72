"""Time ``lggseg`` as a user runs it: a fresh process per command, imports included (issue: every command
paid its imports first).

Three figures, each the wall time of whole ``lggseg`` processes (the median of ``--rounds``):

- ``lggseg --help``;
- one ``lggseg infer`` of one prepared Kaggle patient end to end (``DATA/<patient>/image.nii.gz``, the
  shipped model, ``--device cpu``): reading, model loading, inference, mask, QC picture, summary;
- one ``lggseg infer`` of a batch of ``--batch`` patients, divided by the number of patients (per case).

With ``--float32-too`` both infer commands also run with ``--no-amp`` (float32 networks) in the same rounds,
alternating, so that bf16 inference (the default on CPUs with AVX512-BF16 / AMX) is compared with float32
on one machine at one time.

    python scripts/benchmark_cli.py [--data data/lgg] [--batch 5] [--rounds 3] [--float32-too] [--output F]

Goals of the issue: one case in at most 3 s, at most 1.5 s per case in a batch (a quiet machine). The CPU
time of the processes (user + system) is printed beside the wall time: on a shared, busy machine it moves
much less than the wall time.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHIPPED_MODEL = REPO_ROOT / "bundle" / "models" / "model.pt"
IMAGE_FILENAME = "image.nii.gz"


def lggseg_command() -> list[str]:
    """The ``lggseg`` console script beside this Python, else ``python -m pipeline.cli``.

    Returns:
        the argument list that starts ``lggseg``.
    """
    script = Path(sys.executable).with_name("lggseg")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "pipeline.cli"]


def timed(argv: list[str], cwd: Path) -> tuple[float, float]:
    """Run ``argv`` in a fresh process and return its wall time and CPU time in seconds.

    Args:
        argv: the command line.
        cwd: its working folder.

    Returns:
        ``(wall seconds from start to exit, CPU seconds of the process: user + system)``.

    Raises:
        RuntimeError: the command failed (its last output lines are in the message).
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit code {done.returncode}\n{done.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, cpu


def patients(data: Path, count: int) -> list[Path]:
    """The first ``count`` prepared patients of ``data`` (sorted by name) that have an image.

    Args:
        data: the prepared data folder (``lggseg prepare``'s output).
        count: how many.

    Returns:
        their ``image.nii.gz`` files.
    """
    images = sorted(p / IMAGE_FILENAME for p in data.iterdir() if (p / IMAGE_FILENAME).is_file())
    return images[:count]


def main(argv: list[str] | None = None) -> int:
    """Print (and with ``--output`` write) the wall times; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO_ROOT / "data" / "lgg", help="prepared data folder")
    parser.add_argument("--checkpoint", type=Path, default=SHIPPED_MODEL, help="model file (the shipped one)")
    parser.add_argument("--batch", type=int, default=5, help="patients of the batch (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each command; the median is kept")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--output", type=Path, help="also write the figures as JSON")
    parser.add_argument(
        "--float32-too", action="store_true", help="also time both infer commands with --no-amp (float32)"
    )
    args = parser.parse_args(argv)
    images = patients(args.data, args.batch) if args.data.is_dir() else []
    if len(images) < args.batch or args.batch < 1:
        print(
            f"benchmark_cli.py: error: {args.data}: needs {args.batch} prepared patients "
            "(<patient>/image.nii.gz); run lggseg prepare first",
            file=sys.stderr,
        )
        return 2
    lggseg = lggseg_command()
    infer = [*lggseg, "infer", "--checkpoint", str(args.checkpoint.resolve()), "--device", args.device]
    keys = ["help", "one_case", "batch"] + (["one_case_float32", "batch_float32"] if args.float32_too else [])
    runs: dict[str, list[float]] = {key: [] for key in keys}
    cpu: dict[str, list[float]] = {key: [] for key in keys}
    work = Path(tempfile.mkdtemp(prefix="benchmark-cli-"))
    try:
        for round_ in range(args.rounds):
            one = [*infer, "--input", str(images[0].resolve()), "--output", str(work / f"one{round_}")]
            batch = [
                *infer,
                "--input",
                *(str(i.resolve()) for i in images),
                "--output",
                str(work / f"b{round_}"),
            ]
            commands = {"help": [*lggseg, "--help"], "one_case": one, "batch": batch}
            if args.float32_too:
                commands["one_case_float32"] = [*one[:-1], one[-1] + "f", "--no-amp"]
                commands["batch_float32"] = [*batch[:-1], batch[-1] + "f", "--no-amp"]
            for key, argv_ in commands.items():
                wall, used = timed(argv_, REPO_ROOT)
                runs[key].append(wall)
                cpu[key].append(used)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    median = {key: statistics.median(values) for key, values in runs.items()}
    median_cpu = {key: statistics.median(values) for key, values in cpu.items()}
    figures = {
        "command": " ".join(lggseg),
        "device": args.device,
        "cpus": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
        "rounds": args.rounds,
        "patient": images[0].parent.name,
        "batch_patients": [i.parent.name for i in images],
        "help_s": round(median["help"], 3),
        "one_case_s": round(median["one_case"], 3),
        "batch_s": round(median["batch"], 3),
        "per_case_in_batch_s": round(median["batch"] / len(images), 3),
        **(
            {
                "one_case_float32_s": round(median["one_case_float32"], 3),
                "per_case_in_batch_float32_s": round(median["batch_float32"] / len(images), 3),
            }
            if args.float32_too
            else {}
        ),
        "cpu_s": {key: round(value, 3) for key, value in median_cpu.items()},
        "runs_s": {key: [round(v, 3) for v in values] for key, values in runs.items()},
    }
    print(f"lggseg --help: {figures['help_s']:.2f} s (CPU {median_cpu['help']:.2f} s)")
    print(
        f"lggseg infer, one patient ({figures['patient']}): {figures['one_case_s']:.2f} s "
        f"(CPU {median_cpu['one_case']:.2f} s)"
    )
    print(
        f"lggseg infer, {len(images)} patients: {figures['batch_s']:.2f} s, "
        f"{figures['per_case_in_batch_s']:.2f} s per case (CPU {median_cpu['batch']:.2f} s)"
    )
    if args.float32_too:
        print(
            f"float32 (--no-amp): one patient {figures['one_case_float32_s']:.2f} s, "
            f"{figures['per_case_in_batch_float32_s']:.2f} s per case in the batch"
        )
    print(f"(median of {args.rounds}; 1-minute load average {figures['load_average_1min']:.2f})")
    if args.output is not None:
        from figures import write_figures

        write_figures(figures, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
