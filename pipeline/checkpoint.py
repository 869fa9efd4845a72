"""Checkpoints: what a resumable training run saves, and loading it back (engines floor).

The last-epoch checkpoint (``checkpoint_epoch=N.pt``, two kept) holds the network, optimiser,
scheduler, trainer state (epoch, iteration), grad scaler, early-stopping and best-model bookkeeping,
the run configuration and :class:`RNGState` (Python, NumPy, torch and every random transform's own
generator), so that a resumed CPU run ends with the same weights as an uninterrupted one. The best
checkpoint (``best_model.pt``) holds the weights under ``"model"`` (as MONAI's ``CheckpointSaver`` /
``CheckpointLoader`` and MONAI Label expect) and the run configuration beside them. Everything is saved as
plain tensors, numbers and strings, so ``torch.load(weights_only=True)`` reads it.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import Randomizable

LAST_PATTERN = re.compile(r"checkpoint_epoch=(\d+)\.pt$")
BEST_NAME = "best_model.pt"
MODEL_KEY = "model"  # MONAI's CheckpointLoader and MONAI Label read the weights from this key
LEGACY_MODEL_KEY = "network"
# the trained model shipped with the bundle (the default model of `lggseg infer` and `evaluate`)
SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "bundle" / "models" / "model.pt"


def _np_state_to_dict(state: tuple) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = state
    return {
        "name": name,
        "keys": torch.as_tensor(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached": float(cached),
    }


def _np_state_from_dict(state: Mapping[str, Any]) -> tuple:
    keys = np.asarray(state["keys"].numpy(), dtype=np.uint32)
    return state["name"], keys, state["pos"], state["has_gauss"], state["cached"]


def _randomizables(obj: Any, seen: set[int] | None = None) -> list[Randomizable]:
    """Every ``Randomizable`` reachable from a transform chain, in a fixed order, including the array
    transforms held by dictionary transforms (``RandRotated.rand_rotate`` has its own generator)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    if isinstance(obj, (list, tuple)):
        return [r for child in obj for r in _randomizables(child, seen)]
    if not hasattr(obj, "__dict__") or not type(obj).__module__.startswith(("monai.transforms", "pipeline.")):
        return []
    found = [obj] if isinstance(obj, Randomizable) else []
    for child in vars(obj).values():
        found += _randomizables(child, seen)
    return found


class RNGState:
    """The random state of a run, checkpointed like a module (``state_dict`` / ``load_state_dict``).

    Args:
        transforms: transform chains whose random transforms' generators are saved too (they carry the
            augmentation state when the data loader runs in the main process).
    """

    def __init__(self, transforms: Iterable[Any] = ()) -> None:
        self.randomizables = [r for t in transforms for r in _randomizables(t)]

    def state_dict(self) -> dict[str, Any]:
        py_version, py_state, py_gauss = random.getstate()
        return {
            "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
            "numpy": _np_state_to_dict(np.random.get_state()),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "transforms": [_np_state_to_dict(r.R.get_state()) for r in self.randomizables],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        py = state["python"]
        random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
        np.random.set_state(_np_state_from_dict(state["numpy"]))
        torch.set_rng_state(state["torch"])
        if torch.cuda.is_available() and state["cuda"]:
            torch.cuda.set_rng_state_all(state["cuda"])
        if len(state["transforms"]) != len(self.randomizables):
            raise ValueError(
                f"checkpoint has {len(state['transforms'])} random transforms, the run has "
                f"{len(self.randomizables)}: the transform chain changed since it was saved"
            )
        for r, s in zip(self.randomizables, state["transforms"], strict=True):
            r.R.set_state(_np_state_from_dict(s))


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


def epoch_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """Every ``checkpoint_epoch=N.pt`` of ``directory`` as ``(N, path)``, by epoch."""
    found = [
        (int(m.group(1)), p)
        for p in Path(directory).glob("checkpoint_epoch=*.pt")
        if (m := LAST_PATTERN.search(p.name))
    ]
    return sorted(found)


def find_last_checkpoint(directory: str | Path) -> Path | None:
    """The ``checkpoint_epoch=N.pt`` with the highest ``N`` in ``directory`` (``None`` when there is none)."""
    found = epoch_checkpoints(directory)
    return found[-1][1] if found else None


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
