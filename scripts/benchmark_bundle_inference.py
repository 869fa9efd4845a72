"""Bundle inference vs the CLI's ``infer``: seconds per volume on the same patients, model and machine.

Both segment the same prepared patients with the same model file and write NIfTI predictions: the
CLI through :func:`pipeline.workflows.prediction.infer`, the bundle through MONAI's ``ConfigWorkflow`` on
``bundle/configs/inference.json`` (what ``python -m monai.bundle run`` does), in the same process,
alternating, ``--rounds`` times each. The goal: bundle at most 1.1x the CLI. With a GPU present it
also reports the bundle's per-volume latency and peak GPU memory there.

    python scripts/benchmark_bundle_inference.py --limit 8 --rounds 3 [--checkpoint bundle/models/model.pt]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_data import add_data_arguments, prepared_entries
from figures import write_figures
from monai.bundle import ConfigWorkflow

from pipeline.config import RunConfig
from pipeline.model_files import create_network
from pipeline.workflows.prediction import infer

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundle" / "configs"


def model_file(checkpoint: str | None, folder: Path) -> Path:
    """The given model file, or an untrained default network saved as one (speed needs no training)."""
    if checkpoint:
        return Path(checkpoint)
    torch.manual_seed(0)
    path = folder / "model.pt"
    torch.save({"model": create_network(RunConfig()).state_dict(), "config": {}}, path)
    return path


def time_cli(model: Path, data: Path, out: Path, device: str) -> float:
    start = time.perf_counter()
    infer(model, [data], out, overrides={"progress": False}, device=device)
    return time.perf_counter() - start


def time_bundle(model: Path, data: Path, out: Path, device: str) -> float:
    start = time.perf_counter()
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "inference.json"),
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type="infer",
        bundle_root=str(REPO / "bundle"),
        ckpt_path=str(model),
        dataset_dir=str(data),
        output_dir=str(out),
        device=device,
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_data_arguments(parser)
    parser.add_argument("--checkpoint", help="model file (default: an untrained default network)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of each (default 3)")
    parser.add_argument("--output", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    logging.disable(logging.INFO)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        entries = prepared_entries(args)
        data = work / "datalist.json"  # the same cases for both: a datalist of the first --limit patients
        data.write_text(
            json.dumps({"training": [{"image": e["image"], "patient": e["patient"]} for e in entries]})
        )
        n = len(entries)
        model = model_file(args.checkpoint, work)
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        figures: dict[str, object] = {
            "patients": n,
            "rounds": args.rounds,
            "threads": torch.get_num_threads(),
        }
        for device in devices:
            cli, bundle = [], []
            for r in range(args.rounds):
                cli.append(time_cli(model, data, work / f"cli-{device}-{r}", device) / n)
                if device == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                bundle.append(time_bundle(model, data, work / f"bundle-{device}-{r}", device) / n)
            figures[device] = {
                "cli_s_per_volume": statistics.median(cli),
                "bundle_s_per_volume": statistics.median(bundle),
                "ratio_bundle_to_cli": statistics.median(bundle) / statistics.median(cli),
                "all_cli": cli,
                "all_bundle": bundle,
            }
            if device == "cuda":
                figures[device]["peak_gpu_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20
            f = figures[device]
            print(
                f"{device}: CLI infer {f['cli_s_per_volume']:.3f} s/volume, "
                f"bundle {f['bundle_s_per_volume']:.3f} s/volume (ratio {f['ratio_bundle_to_cli']:.2f}; "
                f"medians of {args.rounds}, {n} patients)"
            )
    write_figures(figures, args.output)


if __name__ == "__main__":
    sys.exit(main())
