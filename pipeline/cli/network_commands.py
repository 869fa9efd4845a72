"""``lggseg networks``: every registered network with its size, cost and options."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pipeline.cli.parsing import add_command

PATCH_3D = (96, 96, 32)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``networks`` to ``lggseg``."""
    parser = add_command(
        subparsers,
        "networks",
        run_networks,
        interrupted="nothing was written",
        help="list the networks of the registry (parameters, GMACs, deep supervision)",
        description="Print every network name of the registry with its parameters (3 -> 1 channels), "
        "its cost in GMACs per 256x256 slice (3D networks: per 96x96x32 patch), whether it supports "
        "deep supervision, its spatial dimensions and its total stride (inputs must be multiples of it). "
        "Each row is printed as soon as its network is measured (--no-gmacs: faster).",
    )
    parser.add_argument("--in-channels", type=int, default=3, help="input channels (default 3)")
    parser.add_argument("--out-channels", type=int, default=1, help="output channels (default 1)")
    parser.add_argument("--no-gmacs", action="store_true", help="skip the GMAC count (faster)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def describe_network(info: Any, in_channels: int = 3, out_channels: int = 1, gmacs: bool = True) -> dict:
    """The record of one registered network (built with its defaults on the CPU).

    Args:
        info: its :class:`pipeline.networks.NetworkInfo`.
        in_channels: input channels.
        out_channels: output channels.
        gmacs: count GMACs per 256x256 slice (2D) or per 96x96x32 patch (3D-only networks).

    Returns:
        ``{name, spatial_dims, parameters, gmacs, input, deep_supervision, stride, source, description}``.
    """
    import torch

    from pipeline.networks import build_network, count_gmacs, count_parameters

    dims = info.spatial_dims[0]
    torch.manual_seed(0)
    net = build_network(info.name, dims, in_channels, out_channels)
    shape = _input_shape(info, in_channels)
    return {
        "name": info.name,
        "spatial_dims": list(info.spatial_dims),
        "parameters": count_parameters(net),
        "gmacs": round(count_gmacs(net, shape), 3) if gmacs else None,
        "input": "x".join(str(s) for s in shape[2:]),
        "deep_supervision": info.deep_supervision,
        "stride": info.stride,
        "source": info.source,
        "description": info.description,
    }


def _input_shape(info: Any, in_channels: int) -> tuple[int, ...]:
    return (1, in_channels, 256, 256) if info.spatial_dims[0] == 2 else (1, in_channels, *PATCH_3D)


def describe_networks(in_channels: int = 3, out_channels: int = 1, gmacs: bool = True) -> list[dict]:
    """One record per registered network (:func:`describe_network`), in registration order.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        gmacs: count GMACs per 256x256 slice (2D) or per 96x96x32 patch (3D-only networks).

    Returns:
        the records.
    """
    from pipeline.networks import list_networks

    return [describe_network(info, in_channels, out_channels, gmacs) for info in list_networks()]


HEADER = ["name", "dims", "params", "GMAC", "per", "deep sup.", "stride", "description"]
_MIN_WIDTHS = [0, 0, 10, 7, 0, 0, 0, 0]  # parameters "123.456 M" and GMACs "123.456" before they are known


def _cells(r: dict) -> list[str]:
    return [
        r["name"],
        ",".join(str(d) for d in r["spatial_dims"]),
        f"{r['parameters'] / 1e6:.3f} M",
        "-" if r["gmacs"] is None else f"{r['gmacs']:.3f}",
        r["input"],
        "yes" if r["deep_supervision"] else "no",
        str(r["stride"]),
        r["description"],
    ]


def _line(cells: list[str], widths: list[int]) -> str:
    return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=False)).rstrip()


def format_table(records: list[dict]) -> str:
    """The records as an aligned text table."""
    rows = [_cells(r) for r in records]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(HEADER)]
    return "\n".join([_line(HEADER, widths), *(_line(row, widths) for row in rows)])


def _known_widths(infos: list[Any], in_channels: int) -> list[int]:
    """Column widths from what the registry says before any network is built (a row is printed as soon as
    its network is measured)."""
    known = [
        {
            "name": info.name,
            "spatial_dims": list(info.spatial_dims),
            "parameters": 0,
            "gmacs": None,
            "input": "x".join(str(s) for s in _input_shape(info, in_channels)[2:]),
            "deep_supervision": info.deep_supervision,
            "stride": info.stride,
            "description": "",
        }
        for info in infos
    ]
    rows = [_cells(r) for r in known]
    return [
        max(len(h), m, *(len(row[i]) for row in rows))
        for i, (h, m) in enumerate(zip(HEADER, _MIN_WIDTHS, strict=True))
    ]


def run_networks(args: argparse.Namespace) -> int:
    """Run ``lggseg networks``: the table row by row as each network is measured (``--json``: one progress
    line per network on stderr, then the JSON).

    Raises:
        ValueError: ``--in-channels`` or ``--out-channels`` below 1 (bad usage, exit code 2).
    """
    if args.in_channels < 1 or args.out_channels < 1:
        raise ValueError(
            f"--in-channels {args.in_channels} --out-channels {args.out_channels}: both must be positive; "
            "e.g. --in-channels 3 --out-channels 1"
        )
    from pipeline.networks import list_networks

    infos = list_networks()
    widths = _known_widths(infos, args.in_channels)
    if not args.json:
        print(_line(HEADER, widths), flush=True)
    records = []
    for number, info in enumerate(infos, start=1):
        if args.json:
            print(f"networks: measuring {info.name} ({number}/{len(infos)})", file=sys.stderr, flush=True)
        records.append(describe_network(info, args.in_channels, args.out_channels, gmacs=not args.no_gmacs))
        if not args.json:
            print(_line(_cells(records[-1]), widths), flush=True)
    if args.json:
        print(json.dumps(records, indent=2))
    return 0
