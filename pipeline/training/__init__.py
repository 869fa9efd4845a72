"""Training pieces: losses, optimisers and schedules by name, the Ignite handlers of a run, and
what a resumable run saves beside its model.

- :mod:`~pipeline.training.losses`, :mod:`~pipeline.training.optim`: built by name (``--loss``,
  ``--optimizer``).
- :mod:`~pipeline.training.handlers`: epoch line, TensorBoard, gradient clipping, atomic checkpoints,
  interval validation.
- :mod:`~pipeline.training.checkpoints`: epoch checkpoints and :class:`RNGState`.
- :mod:`~pipeline.training.autocast`: bf16 autocast of the forward pass on the CPU (``--amp-cpu``).
"""

from pipeline.training.autocast import AutocastInferer, cpu_bf16_supported, to_channels_last
from pipeline.training.handlers import (
    AtomicCheckpointSaver,
    EpochSummaryHandler,
    GradientClipHandler,
    IntervalValidationHandler,
    TensorBoardHandlers,
)
from pipeline.training.losses import build_loss
from pipeline.training.optim import build_optimizer, build_scheduler

__all__ = [
    "AtomicCheckpointSaver",
    "AutocastInferer",
    "EpochSummaryHandler",
    "GradientClipHandler",
    "IntervalValidationHandler",
    "TensorBoardHandlers",
    "build_loss",
    "build_optimizer",
    "build_scheduler",
    "cpu_bf16_supported",
    "to_channels_last",
]
