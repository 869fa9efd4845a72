"""Optimisers and learning-rate schedules by name.

Schedules step once per epoch; ``plateau`` steps on the validation metric (so its patience counts
validations). A linear warm-up of ``warmup_epochs`` may precede any schedule but ``plateau``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch.optim import SGD, Adam, AdamW, Optimizer
from torch.optim.lr_scheduler import (
    ConstantLR,
    CosineAnnealingLR,
    LinearLR,
    LRScheduler,
    MultiStepLR,
    ReduceLROnPlateau,
    SequentialLR,
)

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("cosine", "plateau", "multistep", "constant")


def build_optimizer(
    name: str,
    params: Iterable[torch.nn.Parameter],
    lr: float = 1e-3,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    nesterov: bool = False,
) -> Optimizer:
    """Build an optimiser.

    Args:
        name: ``"adam"``, ``"adamw"`` or ``"sgd"`` (case-insensitive).
        params: the parameters to optimise.
        lr: learning rate.
        momentum: SGD momentum.
        weight_decay: L2 penalty (decoupled for AdamW).
        nesterov: Nesterov momentum (SGD).

    Returns:
        the optimiser.
    """
    key = name.lower()
    if key == "adam":
        return Adam(params, lr=lr, weight_decay=weight_decay)
    if key == "adamw":
        return AdamW(params, lr=lr, weight_decay=weight_decay)
    if key == "sgd":
        return SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def build_scheduler(
    name: str,
    optimizer: Optimizer,
    epochs: int,
    min_lr: float = 1e-5,
    factor: float = 0.1,
    patience: int = 2,
    milestones: Sequence[int] = (1, 2),
    gamma: float = 2 / 3,
    warmup_epochs: int = 0,
) -> LRScheduler | ReduceLROnPlateau:
    """Build an epoch-level learning-rate schedule.

    Args:
        name: ``"cosine"`` (to ``min_lr`` at the last epoch), ``"plateau"`` (multiply by ``factor`` after
            ``patience`` validations without improvement of the validation Dice; not below ``min_lr``),
            ``"multistep"`` (multiply by ``gamma`` at each epoch in ``milestones``) or ``"constant"``.
        optimizer: the optimiser.
        epochs: total number of epochs.
        min_lr, factor, patience, milestones, gamma: parameters of the schedules above.
        warmup_epochs: linear warm-up from 1% of the learning rate over this many epochs.

    Returns:
        the scheduler (``ReduceLROnPlateau`` must be stepped with the validation metric).
    """
    key = name.lower()
    if key == "plateau":
        if warmup_epochs:
            raise ValueError("warm-up is not supported with the plateau scheduler")
        return ReduceLROnPlateau(optimizer, mode="max", factor=factor, patience=patience, min_lr=min_lr)
    main_epochs = max(1, epochs - warmup_epochs)
    if key == "cosine":
        sched: LRScheduler = CosineAnnealingLR(optimizer, T_max=main_epochs, eta_min=min_lr)
    elif key == "multistep":
        shifted = [max(1, m - warmup_epochs) for m in milestones]
        sched = MultiStepLR(optimizer, milestones=shifted, gamma=gamma)
    elif key == "constant":
        sched = ConstantLR(optimizer, factor=1.0, total_iters=0)
    else:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    if not warmup_epochs:
        return sched
    warmup = LinearLR(optimizer, start_factor=0.01, end_factor=1.0, total_iters=warmup_epochs)
    return SequentialLR(optimizer, [warmup, sched], milestones=[warmup_epochs])
