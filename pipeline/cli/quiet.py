"""Messages of the libraries under ``lggseg`` that tell a user nothing, silenced at the command line's entry.

Each one is named exactly (its logger or warning and the start of its text); nothing broader is filtered, so
every other warning and log record still reaches the user:

- MONAI's ``MetaTensor`` warns ``Setting affine, but the applied meta contains an affine. This will be
  overwritten.`` whenever a transform sets the affine of a tensor that carries one (the own-scans path does,
  by design);
- MONAI's DICOM reader registers an nvImageCodec decoder on every construction: without nvImageCodec (every
  CPU machine) it logs ``nvImageCodec is not available; ...`` on ``monai.data.nvimgcodec_pydicom_plugin``
  and warns ``NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register successfully. ...``;
- the evaluation report's own lines (``pipeline.evaluation.handler`` and ``.report``) that name the staging
  folder the report is written into (``<folder>/.evaluation.lggseg-staging-<pid>-*``), which no longer
  exists when the command ends: the command says the figures with the report's real place itself
  (``evaluate``, ``cv``), and the report's lines naming a real folder are kept.
"""

from __future__ import annotations

import logging
import re
import warnings

QUIET_WARNINGS: tuple[str, ...] = (
    "Setting affine, but the applied meta contains an affine",
    "NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register successfully",
)
"""The starts of the warnings that are not shown."""

QUIET_RECORDS: dict[str, tuple[str, ...]] = {
    "monai.data.nvimgcodec_pydicom_plugin": ("nvImageCodec is not available",),
}
"""``{logger name: starts of its messages that are not shown}``."""

STAGING_INFIX = ".lggseg-staging-"
"""What names a staging folder of :mod:`pipeline.safety.staging` (``.<name>.lggseg-staging-<pid>-*``)."""
STAGING_LOGGERS = ("pipeline.evaluation.handler", "pipeline.evaluation.report")
"""The loggers whose lines may name a staging folder: those lines are not shown."""


class DropMessages(logging.Filter):
    """Drop the log records whose message starts with one of ``starts``; keep every other record."""

    def __init__(self, starts: tuple[str, ...]) -> None:
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether the record is shown.

        Args:
            record: a record of the logger this filter is on.

        Returns:
            ``False`` for a message of :data:`QUIET_RECORDS`, else ``True``.
        """
        return not str(record.getMessage()).startswith(self.starts)


class DropStagingPaths(logging.Filter):
    """Drop the log records that name a staging folder (:data:`STAGING_INFIX`); keep every other record."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether the record is shown.

        Args:
            record: a record of the logger this filter is on.

        Returns:
            ``False`` when its message names a staging folder, else ``True``.
        """
        return STAGING_INFIX not in str(record.getMessage())


def silence_library_noise() -> None:
    """Install the filters of this module (once; calling it again changes nothing)."""
    for start in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(start))
    for name, starts in QUIET_RECORDS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropMessages) and f.starts == starts for f in logger.filters):
            logger.addFilter(DropMessages(starts))
    for name in STAGING_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropStagingPaths) for f in logger.filters):
            logger.addFilter(DropStagingPaths())
