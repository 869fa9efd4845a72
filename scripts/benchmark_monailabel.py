"""Round trip of one MONAI Label inference request against the bundle's own inference, same volume, CPU.

It writes one real patient as a study (``lggseg studies``), starts the MONAI Label server on the app
``apps/lggseg`` (127.0.0.1, a free port, the weights of ``--model``), and times, alternately so that a
background load hits both alike:

- ``app_s``: ``POST /infer/lggseg?image=<patient>`` through MONAI Label's client (what 3D Slicer sends),
  until the label file is on the client's disk; the study is already in the datastore (no upload);
- ``bundle_s``: the bundle's ``evaluator`` from ``bundle/configs/inference.json`` run in this process on
  that one study (load, preprocessing, inference, post-processing, ``SaveImaged``), as ``monai.bundle run``
  would run it.

One warm-up of each is not timed (model loading, lazy imports). It prints the medians and their ratio
(goal: ``app_s / bundle_s`` at most 1.5) and writes them as JSON with ``--output``.

Usage::

    .venv/bin/python scripts/benchmark_monailabel.py --repeats 5 --output runs/bench/monailabel.json
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import requests
import torch
from bench_data import DEFAULT_KAGGLE, REPO
from figures import write_figures
from monai.bundle import ConfigParser

from pipeline.ingestion.studies import write_studies

APP_DIR = REPO / "apps" / "lggseg"
BUNDLE = REPO / "bundle"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bundle_evaluator(studies: Path, model: Path, output: Path, device: str) -> object:
    """The bundle's inference ``evaluator`` on the studies folder (every NIfTI in it is a case)."""
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    parser.update(
        {
            "bundle_root": str(BUNDLE),
            "dataset_dir": str(studies),
            "ckpt_path": str(model),
            "output_dir": str(output),
            "device": device,
        }
    )
    return parser.get_parsed_content("evaluator")


def start_server(studies: Path, model: Path, model_dir: Path, device: str, log: Path) -> tuple:
    """Start the MONAI Label server; returns ``(process, url, log handle)`` once ``/info/`` answers."""
    port = _free_port()
    command = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(APP_DIR)]
    command += ["--studies", str(studies), "--host", "127.0.0.1", "--port", str(port)]
    command += [
        "--conf",
        "model",
        str(model),
        "--conf",
        "model_dir",
        str(model_dir),
        "--conf",
        "device",
        device,
    ]
    handle = open(log, "wb")  # noqa: SIM115 - closed by the caller
    process = subprocess.Popen(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited: {log.read_text()[-3000:]}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{url}/info/", timeout=10).status_code == 200:
                return process, url, handle
        time.sleep(1.0)
    process.kill()
    raise RuntimeError(f"the server did not start in 300 s: {log.read_text()[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kaggle", type=Path, default=DEFAULT_KAGGLE, help="kaggle_3m folder")
    parser.add_argument("--patient", default="TCGA_CS_4941_19960909", help="the patient folder to segment")
    parser.add_argument("--model", type=Path, default=BUNDLE / "models" / "model.pt", help="weights")
    parser.add_argument("--repeats", type=int, default=5, help="timed requests (and bundle runs)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path, help="write the figures as JSON")
    args = parser.parse_args()
    from monailabel.client import MONAILabelClient

    with tempfile.TemporaryDirectory(prefix="bench-monailabel-") as tmp:
        work = Path(tmp)
        studies = work / "studies"
        result = write_studies(args.kaggle / args.patient, studies)
        if result.failures:
            raise SystemExit(f"{args.patient}: {result.failures}")
        slices = int(nib.load(studies / f"{args.patient}.nii.gz").shape[2])
        evaluator = bundle_evaluator(studies, args.model, work / "bundle_out", args.device)
        process, url, handle = start_server(
            studies, args.model, work / "finetuned", args.device, work / "log"
        )
        client = MONAILabelClient(url, tmpdir=str(work / "client"))
        (work / "client").mkdir()
        app_s, bundle_s, server_s = [], [], []
        try:
            for index in range(args.repeats + 1):  # index 0: warm-up, not counted
                begin = time.perf_counter()
                with torch.no_grad():
                    evaluator.run()
                bundle_time = time.perf_counter() - begin
                begin = time.perf_counter()
                label, params = client.infer("lggseg", args.patient, {})
                app_time = time.perf_counter() - begin
                os.unlink(label)
                if index:
                    bundle_s.append(bundle_time)
                    app_s.append(app_time)
                    server_s.append(params["latencies"]["total"])
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
            handle.close()
    figures = {
        "patient": args.patient,
        "slices": slices,
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "app_round_trip_s": round(statistics.median(app_s), 3),
        "app_server_total_s": round(statistics.median(server_s), 3),
        "bundle_evaluator_s": round(statistics.median(bundle_s), 3),
        "app_s_all": [round(t, 3) for t in app_s],
        "bundle_s_all": [round(t, 3) for t in bundle_s],
    }
    figures["ratio_app_over_bundle"] = round(figures["app_round_trip_s"] / figures["bundle_evaluator_s"], 2)
    print(
        f"{args.patient} ({slices} slices) on {args.device} ({figures['torch_threads']} torch threads), "
        f"median of {args.repeats}: "
        f"MONAI Label round trip {figures['app_round_trip_s']:.3f} s (server side "
        f"{figures['app_server_total_s']:.3f} s), bundle evaluator {figures['bundle_evaluator_s']:.3f} s, "
        f"ratio {figures['ratio_app_over_bundle']:.2f} (goal <= 1.5)"
    )
    write_figures(figures, args.output)


if __name__ == "__main__":
    main()
