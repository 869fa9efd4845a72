"""Model ensembles: several networks of one architecture behind one ``nn.Module``.

A cross-validation trains one network per fold; :func:`pipeline.workflows.model_selection.combine_models` puts
them into one model file whose configuration says ``members: N``, so the CLI, the bundle and the MONAI Label
app load it like any other model (``pipeline.networks.build_network(..., members=N)`` builds the matching
:class:`ModelEnsemble`). The members' probabilities are averaged, as nnU-Net averages its fold models.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


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
