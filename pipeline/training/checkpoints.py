"""What a resumable training run saves beside the model: the epoch checkpoints
(``checkpoint_epoch=N.pt``, two kept) and :class:`RNGState` (Python, NumPy, torch and every random
transform's own generator), so that a resumed CPU run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import Randomizable

# what AtomicCheckpointSaver (Ignite's Checkpoint, several objects, score "epoch") names the epoch files
EPOCH_CHECKPOINT_PREFIX = "checkpoint_epoch="
LAST_PATTERN = re.compile(rf"^{EPOCH_CHECKPOINT_PREFIX}(\d+)\.pt$")
BEST_NAME = "best_model.pt"


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


def epoch_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """Every ``checkpoint_epoch=N.pt`` of ``directory`` as ``(N, path)``, by epoch."""
    found = [
        (int(m.group(1)), p)
        for p in Path(directory).glob(f"{EPOCH_CHECKPOINT_PREFIX}*.pt")
        if (m := LAST_PATTERN.search(p.name))
    ]
    return sorted(found)


def find_last_checkpoint(directory: str | Path) -> Path | None:
    """The ``checkpoint_epoch=N.pt`` with the highest ``N`` in ``directory`` (``None`` when there is none)."""
    found = epoch_checkpoints(directory)
    return found[-1][1] if found else None
