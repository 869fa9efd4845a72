"""Real-data set-up shared by the benchmark scripts: ``--kaggle``, ``--work``, ``--limit``, entries."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.ingestion.datalist import load_datalist
from pipeline.ingestion.prepare import prepare_dataset

REPO = Path(__file__).resolve().parents[1]
DEFAULT_KAGGLE = REPO.parent / "shared" / "data" / "lgg" / "kaggle_3m"
DEFAULT_WORK = REPO / "runs" / "bench" / "prepared"


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--kaggle``, ``--work`` and ``--limit`` to a benchmark's parser."""
    parser.add_argument("--kaggle", type=Path, default=DEFAULT_KAGGLE, help="kaggle_3m folder")
    parser.add_argument(
        "--work", type=Path, default=DEFAULT_WORK, help="prepared data (made from --kaggle when missing)"
    )
    parser.add_argument("--limit", type=int, default=0, help="use only the first N patients (0: all)")


def prepared_entries(args: argparse.Namespace) -> list[dict]:
    """Prepare ``--kaggle`` into ``--work`` unless done already; return the first ``--limit`` entries.

    Args:
        args: parsed arguments holding ``kaggle``, ``work`` and ``limit``.

    Returns:
        datalist entries with absolute ``image``/``label`` paths.
    """
    if not (args.work / "datalist.json").is_file():
        prepare_dataset(args.kaggle, args.work)
    entries = load_datalist(args.work / "datalist.json")
    return entries[: args.limit] if args.limit else entries
