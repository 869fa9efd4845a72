"""Segmentation losses by name, with optional deep supervision.

Binary convention of the project: ``num_classes=1`` means one output channel with a sigmoid (the
default); ``num_classes=2`` means two channels with a softmax and a one-hot target.
"""

from __future__ import annotations

from monai.losses import DeepSupervisionLoss, DiceCELoss, DiceFocalLoss, TverskyLoss
from torch.nn.modules.loss import _Loss

LOSSES = ("dice_ce", "bce_dice", "dice_focal", "tversky")


def build_loss(
    name: str = "dice_ce", num_classes: int = 1, deep_supervision: bool = False, batch_dice: bool = False
) -> _Loss:
    """Build a loss for binary segmentation.

    Args:
        name: ``"dice_ce"`` (MONAI ``DiceCELoss``, the default), ``"bce_dice"`` (the UNeXt training script's
            ``BCEDiceLoss``: 0.5 * BCE + soft Dice per image, smooth 1e-5), ``"dice_focal"`` or ``"tversky"``
            (alpha 0.3, beta 0.7: false negatives cost more).
        num_classes: 1 (sigmoid) or 2 (softmax over background/tumour).
        deep_supervision: wrap in ``DeepSupervisionLoss`` (weights 1, 0.5, 0.25, ... over the heads;
            targets resized to each head).
        batch_dice: compute the Dice term over the whole batch instead of per slice (MONAI's
            ``batch=True``): tumour-free slices then no longer make the Dice term jump between 0 and 1.

    Returns:
        the loss module, called as ``loss(logits, target)`` with the target ``(B, 1, ...)`` of 0/1.
    """
    if num_classes not in (1, 2):
        raise ValueError(f"num_classes must be 1 (sigmoid) or 2 (softmax), got {num_classes}")
    act: dict = {"sigmoid": True} if num_classes == 1 else {"softmax": True, "to_onehot_y": True}
    act["batch"] = batch_dice
    if name == "dice_ce":
        loss: _Loss = DiceCELoss(**act)
    elif name == "bce_dice":
        loss = DiceCELoss(**act, lambda_ce=0.5, lambda_dice=1.0, smooth_nr=1e-5, smooth_dr=1e-5)
    elif name == "dice_focal":
        loss = DiceFocalLoss(**act)
    elif name == "tversky":
        loss = TverskyLoss(**act, alpha=0.3, beta=0.7)
    else:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    return DeepSupervisionLoss(loss) if deep_supervision else loss
