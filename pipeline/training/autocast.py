"""bf16 mixed precision for training on the CPU.

MONAI's ``SupervisedTrainer(amp=True)`` autocasts on CUDA only. :class:`AutocastInferer` is the CPU twin: it
runs the network's forward pass under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (convolutions and
matrix products in bf16 on CPUs with AVX512-BF16 / AMX-BF16, oneDNN) and hands float32 outputs to the loss.
The weights, the gradients and the optimiser stay float32, so no gradient scaling is needed (bf16 has
float32's exponent range) and model files are the same as with float32 training. 2D inputs can also be
given the channels-last memory layout, which oneDNN's bf16 convolutions prefer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from monai.inferers import Inferer

__all__ = ["AutocastInferer", "cpu_bf16_supported", "to_channels_last"]

logger = logging.getLogger(__name__)


def cpu_bf16_supported() -> bool:
    """Whether this CPU runs bf16 convolutions natively (oneDNN with AVX512-BF16 or AMX-BF16).

    Autocast to bf16 works on any CPU, but without these instructions it is emulated and slower than
    float32, so the trainer falls back to float32 where this is ``False``.
    """
    if not torch.backends.mkldnn.is_available():
        return False
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:
        return False


def to_channels_last(network: torch.nn.Module) -> bool:
    """Give a 2D network's 4D weights the channels-last memory layout, in place (the parameters stay the
    same objects, so an optimiser built on them still holds them; values and model files do not change).

    Args:
        network: the network.

    Returns:
        whether it was converted (``False`` for a network with 5D weights, a 3D one, which is left alone).
    """
    if any(p.dim() == 5 for p in network.parameters()):
        return False
    network.to(memory_format=torch.channels_last)
    return True


def _as_float32(output: Any) -> Any:
    """Float32 copies of the floating tensors of a network output (a tensor, or a list, tuple or dict of
    them, e.g. deep-supervision heads)."""
    if isinstance(output, torch.Tensor):
        return output.float() if output.is_floating_point() else output
    if isinstance(output, (list, tuple)):
        return type(output)(_as_float32(o) for o in output)
    if isinstance(output, dict):
        return {k: _as_float32(v) for k, v in output.items()}
    return output


class AutocastInferer(Inferer):
    """Run ``network(inputs)`` (or a wrapped inferer) under ``torch.autocast`` and return float32 outputs.

    Example::

        trainer = SupervisedTrainer(..., inferer=AutocastInferer(), amp=False)

    Args:
        inferer: the inferer to wrap (``None``: call the network directly, as MONAI's ``SimpleInferer``).
        device_type: the autocast device (``"cpu"``).
        dtype: the autocast dtype (``torch.bfloat16``).
        channels_last: give 4D inputs the channels-last memory layout first (2D networks whose weights are
            channels-last too: :func:`to_channels_last`).
    """

    def __init__(
        self,
        inferer: Inferer | Callable[..., Any] | None = None,
        device_type: str = "cpu",
        dtype: torch.dtype = torch.bfloat16,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.inferer, self.device_type, self.dtype = inferer, device_type, dtype
        self.channels_last = channels_last

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Forward ``inputs`` through ``network`` in mixed precision.

        Args:
            inputs: the batch ``(B, C, *spatial)``.
            network: the model.
            args, kwargs: passed on to the network (or the wrapped inferer).

        Returns:
            the output with every floating tensor in float32 (lists and tuples of deep-supervision outputs
            too).
        """
        if self.channels_last and inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device_type, dtype=self.dtype):
            if self.inferer is None:
                output = network(inputs, *args, **kwargs)
            else:
                output = self.inferer(inputs, network, *args, **kwargs)
        return _as_float32(output)
