#!/usr/bin/env python
"""Benchmark the registered 2D networks: parameters, GMACs, inference and training-step speed.

For every network: parameters (3 -> 1 channels), GMACs per 256x256 slice
(``torch.utils.flop_counter.FlopCounterMode``, MAC = FLOP / 2), and slices per second for inference
(eval mode, ``torch.inference_mode``) and for one training step (forward, BCE-with-logits loss,
backward, Adam step) on a batch of ``--batch-size`` slices, on the CPU and, when CUDA is available,
on the GPU. ``unext-reference`` is the public UNeXt design (``scripts/unext_reference.py``), run in
the same process for a side-by-side comparison with ``unext``; the comparison alternates the two
models ``--rounds`` times and keeps each one's best round, so that a busy machine hurts both alike.

Each figure is the best of the timed iterations (after one warm-up), the median in parentheses;
a network whose warm-up alone exceeds ``--max-seconds`` is timed by that one call.

Examples::

    .venv/bin/python scripts/benchmark_networks.py                       # every 2D network
    .venv/bin/python scripts/benchmark_networks.py --networks unext unext-reference --rounds 5
    .venv/bin/python scripts/benchmark_networks.py --output runs/bench.md  # or .json
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from unext_reference import ReferenceUNeXt

from pipeline.networks import build_network, count_gmacs, count_parameters, list_networks, network_info

REFERENCE = "unext-reference"
logger = logging.getLogger("benchmark_networks")


def default_networks() -> list[str]:
    """Every registered 2D network, plus the public-design UNeXt next to ours."""
    names = [info.name for info in list_networks() if 2 in info.spatial_dims]
    names.insert(names.index("unext") + 1, REFERENCE)
    return names


def make_network(name: str, in_channels: int, out_channels: int) -> torch.nn.Module:
    """A registered network by name, or the reference UNeXt for ``unext-reference``."""
    if name == REFERENCE:
        return ReferenceUNeXt(in_channels, out_channels)
    return build_network(name, 2, in_channels, out_channels)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(run, device: torch.device, iterations: int, max_seconds: float) -> list[float]:
    """Seconds of ``iterations`` calls of ``run`` after one warm-up call, within ``max_seconds``.

    A warm-up slower than ``max_seconds`` (the big networks on a CPU) is the only measurement:
    its one-off costs are small beside such a step, and the default run stays within minutes.
    """
    start = time.perf_counter()
    run()
    _sync(device)
    warmup = time.perf_counter() - start
    if warmup > max_seconds:
        return [warmup]
    times: list[float] = []
    start_all = time.perf_counter()
    while len(times) < iterations and (not times or time.perf_counter() - start_all < max_seconds):
        start = time.perf_counter()
        run()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def time_inference(model, x: torch.Tensor, iterations: int, max_seconds: float) -> list[float]:
    """Seconds per eval forward of the batch ``x`` (``torch.inference_mode``)."""
    model.eval()
    with torch.inference_mode():
        return _time(lambda: model(x), x.device, iterations, max_seconds)


def time_training(model, x: torch.Tensor, iterations: int, max_seconds: float) -> list[float]:
    """Seconds per training step on ``x``: forward, BCE-with-logits loss, backward, Adam step."""
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    target = (torch.rand((x.shape[0], 1, *x.shape[2:]), device=x.device) > 0.5).float()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        out = model(x)
        if isinstance(out, (list, tuple)):
            out = out[0]
        F.binary_cross_entropy_with_logits(out, target).backward()
        optimizer.step()

    return _time(step, x.device, iterations, max_seconds)


def _rates(times: list[float], batch: int) -> dict:
    return {
        "best": batch / min(times),
        "median": batch / statistics.median(times),
        "iterations": len(times),
    }


def benchmark_network(name: str, args, devices: list[torch.device]) -> dict:
    """All figures of one network."""
    torch.manual_seed(0)
    model = make_network(name, args.in_channels, 1)
    row: dict = {"network": name, "parameters": count_parameters(model)}
    row["gmac_per_slice"] = count_gmacs(model, (1, args.in_channels, args.size, args.size))
    if name != REFERENCE:
        row["deep_supervision"] = network_info(name).deep_supervision
    for device in devices:
        model = model.to(device)
        x = torch.randn(args.batch_size, args.in_channels, args.size, args.size, device=device)
        try:
            row[f"{device.type}_inference"] = _rates(
                time_inference(model, x, args.iterations, args.max_seconds), args.batch_size
            )
            row[f"{device.type}_training"] = _rates(
                time_training(model, x, args.iterations, args.max_seconds), args.batch_size
            )
        except RuntimeError as error:  # e.g. out of memory: report it, go on with the others
            logger.warning("%s on %s failed: %s", name, device, error)
            row[f"{device.type}_error"] = str(error).splitlines()[0]
        model = model.to("cpu")
        if device.type == "cuda":
            torch.cuda.empty_cache()
    logger.info("%s done", name)
    return row


def side_by_side(args, device: torch.device) -> dict:
    """Alternate reference and custom UNeXt ``--rounds`` times; best round of each, and the ratios."""
    torch.manual_seed(0)
    models = {
        REFERENCE: ReferenceUNeXt(args.in_channels, 1).to(device),
        "unext": make_network("unext", args.in_channels, 1).to(device),
    }
    x = torch.randn(args.batch_size, args.in_channels, args.size, args.size, device=device)
    best = {name: {"inference": 0.0, "training": 0.0} for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            t = time_inference(model, x, args.iterations, args.max_seconds)
            best[name]["inference"] = max(best[name]["inference"], args.batch_size / min(t))
        for name, model in models.items():
            t = time_training(model, x, args.iterations, args.max_seconds)
            best[name]["training"] = max(best[name]["training"], args.batch_size / min(t))
    return {
        "device": device.type,
        "rounds": args.rounds,
        "slices_per_s": best,
        "speedup_inference": best["unext"]["inference"] / best[REFERENCE]["inference"],
        "speedup_training": best["unext"]["training"] / best[REFERENCE]["training"],
    }


def _fmt_rate(row: dict, key: str) -> str:
    if key not in row:
        return "-"
    r = row[key]
    return f"{r['best']:.1f} ({r['median']:.1f})"


def markdown(rows: list[dict], comparisons: list[dict], args, devices: list[torch.device]) -> str:
    """The results as a markdown table plus the side-by-side lines."""
    header = ["network", "params (M)", "GMAC/slice", "DS"]
    for device in devices:
        header += [f"{device.type} infer slices/s", f"{device.type} train slices/s"]
    lines = [
        f"Batch {args.batch_size}x{args.in_channels}x{args.size}x{args.size}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads"
        + (f", GPU {torch.cuda.get_device_name(0)}" if any(d.type == "cuda" for d in devices) else "")
        + "; slices/s = best iteration (median).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in rows:
        cells = [
            row["network"],
            f"{row['parameters'] / 1e6:.3f}",
            f"{row['gmac_per_slice']:.3f}",
            {True: "yes", False: "no"}.get(row.get("deep_supervision"), "-"),
        ]
        for device in devices:
            cells += [_fmt_rate(row, f"{device.type}_inference"), _fmt_rate(row, f"{device.type}_training")]
        lines.append("| " + " | ".join(cells) + " |")
    for comp in comparisons:
        best = comp["slices_per_s"]
        lines += [
            "",
            f"Side by side on {comp['device']} (best of {comp['rounds']} alternating rounds): unext "
            f"{best['unext']['inference']:.1f} vs {REFERENCE} {best[REFERENCE]['inference']:.1f} slices/s "
            f"inference (x{comp['speedup_inference']:.2f}); "
            f"{best['unext']['training']:.1f} vs {best[REFERENCE]['training']:.1f} training "
            f"(x{comp['speedup_training']:.2f}).",
        ]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks", nargs="+", default=None, help=f"names (default: all 2D + {REFERENCE})")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", type=int, default=256, help="slice height and width")
    parser.add_argument("--in-channels", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations after one warm-up")
    parser.add_argument("--max-seconds", type=float, default=15.0, help="time budget per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of the UNeXt side by side")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--no-cpu", action="store_true", help="GPU only")
    parser.add_argument("--no-gpu", action="store_true", help="CPU only even when CUDA is available")
    parser.add_argument("--output", type=Path, default=None, help="write the results (.json or .md)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.networks or default_networks()
    for name in names:
        if name != REFERENCE:
            info = network_info(name)  # ValueError with the valid names
            if 2 not in info.spatial_dims:
                raise SystemExit(f"{name} is not a 2D network")
    if args.size % 32:
        raise SystemExit("--size must be a multiple of 32 (the largest total stride)")
    devices = [] if args.no_cpu else [torch.device("cpu")]
    if torch.cuda.is_available() and not args.no_gpu:
        devices.append(torch.device("cuda"))
        torch.backends.cudnn.benchmark = True
    if not devices:
        raise SystemExit("no device to benchmark (--no-cpu without CUDA)")
    rows = [benchmark_network(name, args, devices) for name in names]
    comparisons = []
    if "unext" in names and REFERENCE in names and args.rounds > 0:
        comparisons = [side_by_side(args, device) for device in devices]
    table = markdown(rows, comparisons, args, devices)
    print(table)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        if args.output.suffix == ".json":
            payload = {
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "batch_size": args.batch_size,
                "size": args.size,
                "rows": rows,
                "side_by_side": comparisons,
            }
            args.output.write_text(json.dumps(payload, indent=2))
        else:
            args.output.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
