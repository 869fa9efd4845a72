"""Model files, read and written in one place (floor 3).

A model file (``best_model.pt``, ``checkpoint_epoch=N.pt``, the bundle's ``models/model.pt``, an ensemble
made by ``lggseg ensemble``, the MONAI Label app's fine-tuned ``model.pt``) holds the weights under
``"model"`` (as MONAI's ``CheckpointSaver`` / ``CheckpointLoader`` and MONAI Label expect) and the run
configuration under ``"config"``; everything is plain tensors, numbers and strings, so
``torch.load(weights_only=True)`` reads it. Files of earlier versions (weights under ``"network"``) still
load.

- :func:`load_checkpoint` is the one reader, :func:`save_model_file` the one writer (atomic);
- :data:`MODEL_KEYS` are the options of a configuration that define the network; :func:`network_options`
  picks them from a saved configuration and :func:`check_model_config` checks that two configurations
  agree on them;
- :func:`create_network` builds the network of a configuration, :func:`load_weights` loads a file's weights
  into it strictly, :func:`load_model` does both for a file.

This module is the home of :data:`MODEL_KEYS`: it imports :mod:`pipeline.config` (``RunConfig``), so the
configuration module cannot import them back without a cycle, and it does not need them.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, BinaryIO

import torch

from pipeline.config import RunConfig, resolve_device, validate_config
from pipeline.networks import build_network
from pipeline.safety import atomic_path

__all__ = [
    "CONFIG_KEY",
    "LEGACY_MODEL_KEY",
    "MODEL_KEY",
    "MODEL_KEYS",
    "SHIPPED_MODEL",
    "ConfigState",
    "check_ensemble_members",
    "check_model_config",
    "create_network",
    "file_sha256",
    "load_checkpoint",
    "load_model",
    "load_weights",
    "network_options",
    "refuse_existing_model",
    "save_model_file",
]

MODEL_KEY = "model"  # MONAI's CheckpointLoader and MONAI Label read the weights from this key
LEGACY_MODEL_KEY = "network"  # where files of lggseg <= 0.1 held the weights
CONFIG_KEY = "config"
# options that define the network: a resumed run or a loaded model file must agree on them
MODEL_KEYS = (
    "arch",
    "spatial_dims",
    "context",
    "num_classes",
    "deep_supervision",
    "network_kwargs",
    "members",
)
# the trained model shipped with the bundle (the default model of `lggseg infer` and `evaluate`)
SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "bundle" / "models" / "model.pt"
_MAX_DETAIL = 300  # characters of a PyTorch message kept in a one-line error (key lists run to thousands)
_UNPICKLER_REASON = "WeightsUnpickler error:"  # where torch.load(weights_only=True) says what it refused


class ConfigState:
    """The run configuration as a checkpointable object (``state_dict`` returns the mapping).

    Args:
        config: the resolved configuration (JSON-serialisable values).
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = dict(config)

    def state_dict(self) -> dict[str, Any]:
        return dict(self.config)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.config = dict(state)


def _one_line(error: BaseException, skip_header: bool = False) -> str:
    """The first informative line of an error message, shortened (PyTorch's ``weights_only`` failures: the
    unpickler's reason, not the advice to load untrusted code)."""
    reason = str(error).partition(_UNPICKLER_REASON)[2].strip()
    text = reason.split(". ")[0] if reason else str(error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = ((lines[1:2] if skip_header else []) or lines[:1] or [type(error).__name__])[0]
    return line if len(line) <= _MAX_DETAIL else line[:_MAX_DETAIL] + " ..."


def load_checkpoint(path: str | os.PathLike | BinaryIO, require_config: bool = True) -> dict[str, Any]:
    """Read a model file of this project (CPU tensors, ``torch.load(weights_only=True)``).

    Args:
        path: a ``best_model.pt``, ``checkpoint_epoch=N.pt``, ``model.pt``, or such a file opened in binary
            mode (the caller can then ``os.fstat`` exactly the bytes read).
        require_config: refuse a file without a ``"config"`` entry (``False``: weights alone are enough,
            the mapping then holds ``config: {}``).

    Returns:
        the saved mapping (``model``: the weights, ``config``, ...); files written by earlier versions
        (weights under ``network``) come back in the same form.

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: one line naming the file and the problem, when it is not a model file of this project.
    """
    if isinstance(path, (str, os.PathLike)):
        path = name = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
    else:
        name = getattr(path, "name", "model file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means "not our model file"
        problem = f"{type(error).__name__}: {_one_line(error)}" if str(error) else type(error).__name__
        raise ValueError(f"{name}: cannot read the model file ({problem})") from None
    if isinstance(ckpt, dict) and LEGACY_MODEL_KEY in ckpt and MODEL_KEY not in ckpt:
        ckpt[MODEL_KEY] = ckpt.pop(LEGACY_MODEL_KEY)
        if isinstance(ckpt.get("best_checkpointer"), dict) and "saved" in ckpt["best_checkpointer"]:
            ckpt["best_checkpointer"] = {"key_metric": ckpt["best_checkpointer"]}
    if not isinstance(ckpt, dict):
        raise ValueError(f"{name}: not an lggseg checkpoint (holds a {type(ckpt).__name__}, not a mapping)")
    if not require_config:
        ckpt.setdefault(CONFIG_KEY, {})
    if any(not isinstance(ckpt.get(k), Mapping) for k in (MODEL_KEY, CONFIG_KEY)):
        needs = f"{MODEL_KEY!r} and {CONFIG_KEY!r} entries" if require_config else f"{MODEL_KEY!r} weights"
        found = ", ".join(map(repr, sorted(map(str, ckpt))[:6])) or "nothing"
        raise ValueError(f"{name}: not an lggseg checkpoint (needs {needs}; found {found})")
    return ckpt


def save_model_file(path: str | os.PathLike, checkpoint: Mapping[str, Any]) -> Path:
    """Write a model file atomically (a temporary file in the same folder, then a rename): readers see the
    old complete file or the new complete file, never a partial one.

    Args:
        path: the final file (its folder is created).
        checkpoint: ``{"model": state_dict, "config": {...}, ...}`` (tensors, numbers, strings).

    Returns:
        the written path.

    Raises:
        ValueError: when ``checkpoint`` has no weights under ``"model"``.
    """
    if not isinstance(checkpoint.get(MODEL_KEY), Mapping):
        raise ValueError(f"{path}: a model file needs its weights under {MODEL_KEY!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(dict(checkpoint), tmp)
    return path


def network_options(config: Mapping[str, Any]) -> dict[str, Any]:
    """The options of a (saved) configuration that define the network (:data:`MODEL_KEYS`, those present).

    Args:
        config: a run configuration, e.g. a model file's ``"config"``.

    Returns:
        ``{option: value}`` for the keys of :data:`MODEL_KEYS` that ``config`` holds.
    """
    return {k: config[k] for k in MODEL_KEYS if k in config}


def check_model_config(saved: Mapping[str, Any], current: Mapping[str, Any], path: Any) -> None:
    """Check that a model file's configuration and the current one agree on the network options.

    Args:
        saved: the model file's configuration.
        current: the configuration it is used with (only the options it holds are compared).
        path: the model file, named in the error.

    Raises:
        ValueError: naming each option that differs.
    """
    diff = {
        k: (saved.get(k), current.get(k))
        for k in MODEL_KEYS
        if k in current and _plain(saved.get(k)) != _plain(current.get(k))
    }
    if diff:
        detail = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"{path} was trained with other network options ({detail})")


def _plain(value: Any) -> Any:
    """``value`` as JSON gives it back (tuples as lists, at any depth)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def create_network(cfg: RunConfig | Mapping[str, Any]) -> torch.nn.Module:
    """The network of a configuration, from the registry :func:`pipeline.networks.build_network`.

    Args:
        cfg: a :class:`RunConfig` or a mapping of its options (missing ones take their defaults).

    Returns:
        the network (training mode, CPU).
    """
    c = cfg if isinstance(cfg, RunConfig) else RunConfig.from_dict(dict(cfg))
    return build_network(
        c.arch,
        c.spatial_dims,
        c.in_channels,
        c.num_classes,
        deep_supervision=c.deep_supervision,
        members=c.members,
        network_kwargs=c.network_kwargs,
    )


def load_weights(network: torch.nn.Module, checkpoint: Mapping[str, Any], path: Any) -> torch.nn.Module:
    """Load a model file's weights into ``network`` strictly (every key, every shape).

    Args:
        network: the network the file was saved from (its device is kept).
        checkpoint: the mapping :func:`load_checkpoint` returned.
        path: the model file, named in the error.

    Returns:
        ``network``.

    Raises:
        ValueError: one line naming the file, when the weights do not fit the network.
    """
    try:
        network.load_state_dict(checkpoint[MODEL_KEY], strict=True)
    except RuntimeError as error:
        raise ValueError(
            f"{path}: the weights do not fit the network ({_one_line(error, skip_header=True)})"
        ) from None
    return network


def load_model(
    checkpoint: str | Path, overrides: Mapping[str, Any] | None = None, device: str = "auto"
) -> tuple[torch.nn.Module, RunConfig, torch.device]:
    """Network (in eval mode, on the device, weights loaded strictly) and configuration of a model file.

    Args:
        checkpoint: ``best_model.pt``, ``checkpoint_epoch=N.pt`` or a bundle's ``model.pt``.
        overrides: configuration values to change (post-processing, TTA, data, ...); network options
            cannot be changed.
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:i]"``.

    Returns:
        the network, the configuration, the device.

    Raises:
        FileNotFoundError: missing file. ValueError: not an lggseg model file, weights that do not fit its
        network, or overrides that change the network.
    """
    ckpt = load_checkpoint(checkpoint)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    check_model_config(ckpt[CONFIG_KEY], {**ckpt[CONFIG_KEY], **overrides}, checkpoint)
    cfg = RunConfig.from_dict({**_known(ckpt[CONFIG_KEY]), **overrides, "resume": False})
    validate_config(cfg)
    dev = resolve_device(device)
    network = load_weights(create_network(cfg), ckpt, checkpoint)
    return network.to(dev).eval(), cfg, dev


def _known(config: Mapping[str, Any]) -> dict[str, Any]:
    names = set(asdict(RunConfig()))
    return {k: v for k, v in config.items() if k in names}


def refuse_existing_model(path: str | Path) -> None:
    """Refuse to start a training whose best model would replace an existing file (for instance the
    bundle's shipped ``models/model.pt``).

    Raises:
        ValueError: when ``path`` exists, naming it and what to do.
    """
    if Path(path).exists():
        raise ValueError(
            f"{path}: exists and training would replace it; choose another ckpt_dir or move the file away"
        )


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# what shapes a member's input and output besides its network: the inferer's in-plane size and 3D window,
# and the intensity normalisation (an ensemble runs every member with the first one's settings)
ENSEMBLE_KEYS = (*(k for k in MODEL_KEYS if k != "members"), "input_size", "patch_size")
ENSEMBLE_KEYS += ("input_channels", "clip_lower", "clip_upper", "brain_threshold")


def check_ensemble_members(members: Sequence[tuple[Any, Mapping[str, Any]]]) -> None:
    """Check that the models of an ensemble agree on everything that shapes their input and output
    (:data:`ENSEMBLE_KEYS`; a key a file lacks counts as its default).

    Args:
        members: ``(model file, its configuration)`` pairs.

    Raises:
        ValueError: one line naming the first member, the one that differs and the setting.
    """
    defaults = asdict(RunConfig())
    (first, base), *others = members
    for path, config in others:
        for key in ENSEMBLE_KEYS:
            a, b = (_plain(c.get(key, defaults.get(key))) for c in (base, config))
            if a != b:
                raise ValueError(
                    f"{path}: {key} is {b!r} but {a!r} in {first}; the members of an ensemble must agree "
                    "on everything that shapes their input and output"
                )
