"""The options of the commands that train and run models (``train``, ``cv``, ``evaluate``, ``infer``), shared
by their modules. The training options are generated from :class:`pipeline.config.RunConfig` (``--lr 3e-4``,
``--input-size 256 256``, ``--deep-supervision`` / ``--no-deep-supervision``, ...), so the CLI, a
``--config`` JSON file and the bundle share one list of options.

Options left out are not set: only the options a user gave (:func:`given_options`) reach a resumed run,
which keeps its own settings otherwise (:func:`pipeline.workflows.training.resumed_config`). PyTorch and
MONAI are imported when a command runs or its options are described, never when the module is imported.
"""

from __future__ import annotations

import argparse
import json
import typing
from collections.abc import Mapping
from dataclasses import MISSING, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.config import RunConfig


def add_option(parser: argparse.ArgumentParser, name: str, default: Any, help_suffix: str = "") -> None:
    """One ``--name`` option of a :class:`RunConfig` field: help, choices and length from pipeline.config."""
    from pipeline.config import OPTION_HELP, option_choices, option_type

    flag = "--" + name.replace("_", "-")
    base, nargs = option_type(name)
    help_text = f"{OPTION_HELP.get(name, name.replace('_', ' '))} ({help_suffix or f'default: {default}'})"
    kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": help_text}
    choices = option_choices(name)
    if base is bool:
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        return
    if nargs is not None:
        kwargs["nargs"] = nargs
        kwargs["metavar"] = {"input_size": ("H", "W"), "patch_size": ("H", "W", "D")}.get(name)
    if typing.get_origin(base) is dict:
        kwargs["type"] = json.loads
    else:
        kwargs["type"] = base
    if choices is not None:
        kwargs["choices"] = choices
    parser.add_argument(flag, **kwargs)


def add_config_options(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """Add one option per :class:`RunConfig` field (default: not given, i.e. the config's value)."""
    from pipeline.config import RunConfig

    parser.add_argument("--config", type=Path, help="JSON file of options (command-line options win)")
    for f in fields(RunConfig):
        if f.name in skip or f.name == "divisible":  # derived from the network's stride
            continue
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        add_option(parser, f.name, default)


def given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options a user gave: those of ``--config`` (if any), updated with the command line's.

    Args:
        args: the parsed command line (options not given are absent: their default is ``SUPPRESS``).

    Returns:
        ``{option: value}``, each checked (:func:`pipeline.config.checked_options`); no defaults.
    """
    from pipeline.config import RunConfig, checked_options, read_config_file

    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(read_config_file(args.config))
    names = {f.name for f in fields(RunConfig)}
    values.update({k: v for k, v in vars(args).items() if k in names})
    return checked_options(values)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """A :class:`RunConfig` from ``--config`` (if any) updated with the options given on the command line."""
    from pipeline.config import RunConfig

    return RunConfig.from_dict(given_options(args))


def postprocessing_options(parser: argparse.ArgumentParser) -> None:
    """``--checkpoint``, ``--device`` and the post-processing options of ``evaluate`` and ``infer`` (default:
    the run's)."""
    from pipeline.config import OPTION_HELP, POSTPROCESSING_KEYS
    from pipeline.model_files import SHIPPED_MODEL

    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=SHIPPED_MODEL,
        help="model file (best_model.pt, model.pt; default: the shipped bundle/models/model.pt)",
    )
    parser.add_argument("--device", default="auto", help=OPTION_HELP["device"] + " (default: auto)")
    for name in POSTPROCESSING_KEYS:
        add_option(parser, name, None, "default: the run's")


def postprocessing_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The post-processing options given on the command line (those left out keep the run's)."""
    from pipeline.config import POSTPROCESSING_KEYS

    return {k: getattr(args, k) for k in POSTPROCESSING_KEYS if getattr(args, k, None) is not None}


def print_pooled_dice(result: Mapping[str, Any], report: object, before: str = "", after: str = "") -> int:
    """A command's closing line, ``<before>N patients<after>: Dice mean M; report in <report>``, for the
    per-patient ``records`` of an evaluation ``result`` (``M``: their mean Dice, 0 for none).

    Returns:
        0, the command's exit code.
    """
    dice = [float(record["dice"]) for record in result["records"]]
    mean = sum(dice) / max(1, len(dice))
    print(f"{before}{len(dice)} patients{after}: Dice mean {mean:.4f}; report in {report}")
    return 0
