"""Model ensembles: several trained networks of one architecture behind one ``nn.Module`` and one model file.

A cross-validation trains one network per fold; :func:`combine_models` puts them into one model file whose
configuration says ``members: N``, so the CLI, the bundle and the MONAI Label app load it like any other
model (``pipeline.networks.build_network(..., members=N)`` builds the matching :class:`ModelEnsemble`).
The members' probabilities are averaged, as nnU-Net averages its fold models.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.checkpoint import MODEL_KEY, file_sha256, load_checkpoint
from pipeline.safety import atomic_path


class ModelEnsemble(nn.Module):
    """Average of the members' probabilities, returned as logits so that the usual sigmoid / softmax
    downstream gives the mean probability.

    Args:
        members: networks with the same input and output channels.
        num_classes: 1 (one sigmoid channel) or more (softmax over the channels).
    """

    def __init__(self, members: Sequence[nn.Module], num_classes: int = 1) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.num_classes = int(num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for member in self.members:
            out = member(x)
            if isinstance(out, (list, tuple)):  # deep supervision in training mode: the full-size head
                out = out[0]
            prob = torch.sigmoid(out.float()) if self.num_classes == 1 else torch.softmax(out.float(), dim=1)
            total = prob if total is None else total + prob
        assert total is not None
        mean = total / len(self.members)
        if self.num_classes == 1:
            return torch.logit(mean, eps=1e-6)
        return torch.log(mean.clamp_min(1e-12))


def combine_models(
    paths: Sequence[str | Path],
    output: str | Path,
    overwrite: bool = False,
    config_updates: dict[str, Any] | None = None,
    half: bool = False,
) -> dict[str, Any]:
    """Write one model file holding every model of ``paths`` as a :class:`ModelEnsemble`.

    Args:
        paths: model files (``best_model.pt`` of each fold) trained with the same network options.
        output: the ensemble's model file; written under a temporary name, then renamed.
        overwrite: replace an existing ``output`` (otherwise refused).
        config_updates: configuration values to store with it (the post-processing chosen by
            cross-validation: ``threshold``, ``keep_largest``, ``min_size``, ``tta``).
        half: store floating-point weights as float16 (half the file; they load into the float32 network,
            ``load_state_dict`` converts them).

    Returns:
        the saved mapping without the weights: ``config`` and ``members`` (path name, fold, SHA-256 of
        each source file).

    Raises:
        ValueError: fewer than two models, members whose network options differ, an ensemble among them,
            or an existing ``output`` without ``overwrite``.
    """
    from pipeline.workflows import check_model_config

    if len(paths) < 2:
        raise ValueError(f"an ensemble needs at least two models, got {len(paths)}")
    output = Path(output)
    if output.exists() and not overwrite:
        raise ValueError(f"{output}: exists; pass overwrite to replace it")
    checkpoints = [load_checkpoint(p) for p in paths]
    first = checkpoints[0]["config"]
    for path, ckpt in zip(paths, checkpoints, strict=True):
        config = ckpt["config"]
        if int(config.get("members", 1)) != 1:
            raise ValueError(f"{path}: is already an ensemble; combine single models")
        check_model_config(config, first, path)
    weights = {
        f"members.{i}.{name}": tensor
        for i, ckpt in enumerate(checkpoints)
        for name, tensor in ckpt[MODEL_KEY].items()
    }
    if half:
        weights = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    members = [
        {"run": Path(p).parent.parent.name, "fold": c["config"].get("fold"), "sha256": file_sha256(p)}
        for p, c in zip(paths, checkpoints, strict=True)
    ]
    config = {**first, **(config_updates or {}), "members": len(paths)}
    saved = {
        MODEL_KEY: weights,
        "config": config,
        "members": members,
        "weights_dtype": "float16" if half else "float32",
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(output) as tmp:
        torch.save(saved, tmp)
    return {"config": config, "members": members}
