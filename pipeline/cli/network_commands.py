"""``lggseg networks``: every registered network with its size, cost and options."""

from __future__ import annotations

import argparse
import json

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
        "deep supervision, its spatial dimensions and its total stride (inputs must be multiples of it).",
    )
    parser.add_argument("--in-channels", type=int, default=3, help="input channels (default 3)")
    parser.add_argument("--out-channels", type=int, default=1, help="output channels (default 1)")
    parser.add_argument("--no-gmacs", action="store_true", help="skip the GMAC count (faster)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def describe_networks(in_channels: int = 3, out_channels: int = 1, gmacs: bool = True) -> list[dict]:
    """One record per registered network (built with its defaults on the CPU).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        gmacs: count GMACs per 256x256 slice (2D) or per 96x96x32 patch (3D-only networks).

    Returns:
        records with ``name, spatial_dims, parameters, gmacs, input, deep_supervision, stride,
        source, description``.
    """
    import torch

    from pipeline.networks import build_network, count_gmacs, count_parameters, list_networks

    records = []
    for info in list_networks():
        dims = info.spatial_dims[0]
        torch.manual_seed(0)
        net = build_network(info.name, dims, in_channels, out_channels)
        shape = (1, in_channels, 256, 256) if dims == 2 else (1, in_channels, *PATCH_3D)
        records.append(
            {
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
        )
    return records


def format_table(records: list[dict]) -> str:
    """The records as an aligned text table."""
    header = ["name", "dims", "params", "GMAC", "per", "deep sup.", "stride", "description"]
    rows = [
        [
            r["name"],
            ",".join(str(d) for d in r["spatial_dims"]),
            f"{r['parameters'] / 1e6:.3f} M",
            "-" if r["gmacs"] is None else f"{r['gmacs']:.3f}",
            r["input"],
            "yes" if r["deep_supervision"] else "no",
            str(r["stride"]),
            r["description"],
        ]
        for r in records
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=False)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip() for row in rows]
    return "\n".join(lines)


def run_networks(args: argparse.Namespace) -> int:
    """Run ``lggseg networks``.

    Raises:
        ValueError: ``--in-channels`` or ``--out-channels`` below 1 (bad usage, exit code 2).
    """
    if args.in_channels < 1 or args.out_channels < 1:
        raise ValueError(
            f"--in-channels {args.in_channels} --out-channels {args.out_channels}: both must be positive; "
            "e.g. --in-channels 3 --out-channels 1"
        )
    records = describe_networks(args.in_channels, args.out_channels, gmacs=not args.no_gmacs)
    print(json.dumps(records, indent=2) if args.json else format_table(records))
    return 0
