"""Model files, read and written in one place (floor 3).

A model file (``best_model.pt``, ``checkpoint_epoch=N.pt``, the bundle's ``models/model.pt``) holds the
weights
under ``"model"`` (as MONAI's ``CheckpointSaver`` / ``CheckpointLoader`` and MONAI Label expect) and the run
configuration under ``"config"``; everything is plain tensors, numbers and strings, so
``torch.load(weights_only=True)`` reads it. Files of earlier versions (weights under ``"network"``) still
load.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from pipeline.config import MODEL_KEYS, RunConfig, resolve_device, validate_config
from pipeline.networks import build_network

MODEL_KEY = "model"  # MONAI's CheckpointLoader and MONAI Label read the weights from this key
LEGACY_MODEL_KEY = "network"
# the trained model shipped with the bundle (the default model of `lggseg infer` and `evaluate`)
SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "bundle" / "models" / "model.pt"


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


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint file of this project (CPU tensors).

    Args:
        path: a ``best_model.pt`` or ``checkpoint_epoch=N.pt``.

    Returns:
        the saved mapping (``model``: the weights, ``config``, ...); files written by earlier versions
        (weights under ``network``) come back in the same form.

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: when it is not a checkpoint of this project.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means "not our checkpoint"
        raise ValueError(f"cannot read checkpoint {path}: {err}") from err
    if isinstance(ckpt, dict) and LEGACY_MODEL_KEY in ckpt and MODEL_KEY not in ckpt:
        ckpt[MODEL_KEY] = ckpt.pop(LEGACY_MODEL_KEY)  # files of lggseg <= 0.1 held the weights there
        if isinstance(ckpt.get("best_checkpointer"), dict) and "saved" in ckpt["best_checkpointer"]:
            ckpt["best_checkpointer"] = {"key_metric": ckpt["best_checkpointer"]}
    if not isinstance(ckpt, dict) or MODEL_KEY not in ckpt or "config" not in ckpt:
        raise ValueError(f"{path} is not an lggseg checkpoint (needs '{MODEL_KEY}' and 'config' entries)")
    return ckpt


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


def create_network(cfg: RunConfig | Mapping[str, Any]) -> torch.nn.Module:
    """The network of a configuration, from the registry :func:`pipeline.networks.build_network`."""
    c = cfg if isinstance(cfg, RunConfig) else RunConfig.from_dict(dict(cfg))
    return build_network(
        c.arch,
        c.spatial_dims,
        c.in_channels,
        c.num_classes,
        deep_supervision=c.deep_supervision,
        members=c.members,
        **c.network_kwargs,
    )


def check_model_config(saved: Mapping[str, Any], current: Mapping[str, Any], path: Any) -> None:
    """Raise ``ValueError`` when a checkpoint's network options differ from the current ones."""
    diff = {
        k: (saved.get(k), current.get(k))
        for k in MODEL_KEYS
        if k in current and _plain(saved.get(k)) != _plain(current.get(k))
    }
    if diff:
        detail = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"{path} was trained with other network options ({detail})")


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def load_model(
    checkpoint: str | Path, overrides: Mapping[str, Any] | None = None, device: str = "auto"
) -> tuple[torch.nn.Module, RunConfig, torch.device]:
    """Network (in eval mode, on the device, weights loaded strictly) and configuration of a model file.

    Args:
        checkpoint: ``best_model.pt``, ``checkpoint_epoch=N.pt`` or a bundle's ``model.pt``.
        overrides: configuration values to change (post-processing, TTA, data, ...); network options
            cannot be changed.
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:i]"``.

    Raises:
        FileNotFoundError: missing file. ValueError: not an lggseg model file, or overrides that change the
        network.
    """
    ckpt = load_checkpoint(checkpoint)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    check_model_config(ckpt["config"], {**ckpt["config"], **overrides}, checkpoint)
    cfg = RunConfig.from_dict({**_known(ckpt["config"]), **overrides, "resume": False})
    validate_config(cfg)
    dev = resolve_device(device)
    network = create_network(cfg)
    network.load_state_dict(ckpt[MODEL_KEY])
    return network.to(dev).eval(), cfg, dev


def _known(config: Mapping[str, Any]) -> dict[str, Any]:
    names = set(asdict(RunConfig()))
    return {k: v for k, v in config.items() if k in names}
