"""Builders of datasets, loaders and MONAI's Ignite engines.

Every builder takes explicit keyword arguments named as MONAI names them (``network``, ``optimizer``,
``loss_function``, ``train_data_loader``, ``val_data_loader``, ``inferer``, ``postprocessing``,
``train_handlers``, ``val_handlers``, ``key_val_metric``, ...), so the bundle's JSON configs can pass
``@references`` and the CLI's :mod:`pipeline.workflows` call the very same functions. No configuration
object comes in here: :mod:`pipeline.workflows` turns a :class:`pipeline.config.RunConfig` into these
arguments.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import math
import os
import re
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from monai.data import CacheDataset, DataLoader, Dataset, PersistentDataset
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import MeanDice, from_engine
from monai.inferers import Inferer, SimpleInferer
from torch.utils.data import DistributedSampler, RandomSampler, Sampler, Subset

from pipeline.errors import ErrorKind, LGGSegError
from pipeline.inference.inferers import VolumePrepareBatch
from pipeline.safety import atomic_write_json
from pipeline.training.autocast import AutocastInferer, cpu_bf16_supported, to_channels_last

KEY_METRIC = "val_mean_dice"
FAILURES_FILENAME = "failures.json"


def content_hash(item: Mapping[str, Any]) -> bytes:
    """Cache key of a datalist entry: the entry itself plus the size and modification time of every file
    it names, so data rewritten at the same paths (``prepare --overwrite``) is never served stale.

    Args:
        item: a datalist entry (``image``, ``label``, ...).

    Returns:
        the hex digest as bytes (what ``PersistentDataset``'s ``hash_func`` returns).
    """
    stamps = {}
    for key, value in item.items():
        if isinstance(value, (str, os.PathLike)) and os.path.exists(value):
            path = Path(value)
            files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
            stamps[key] = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    text = json.dumps({"item": item, "files": stamps}, sort_keys=True, default=str)
    return hashlib.md5(text.encode()).hexdigest().encode()


def build_dataset(
    data: Sequence[Mapping[str, Any]],
    transform: Any,
    cache: str = "memory",
    cache_dir: str | Path | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> Dataset:
    """A MONAI dataset over datalist entries.

    Args:
        data: datalist entries.
        transform: the transform chain (its deterministic head is cached).
        cache: ``"memory"`` (``CacheDataset``), ``"disk"`` (``PersistentDataset`` in ``cache_dir``, keyed by
            :func:`content_hash`) or ``"none"``.
        cache_dir: folder of the disk cache (one folder per transform setting: the caller names it).
        num_workers: workers filling the memory cache.
        progress: progress bar while caching.
    """
    if cache == "memory":
        return CacheDataset(
            list(data),
            transform,
            cache_rate=1.0,
            num_workers=max(1, num_workers),
            copy_cache=False,
            progress=progress,
        )
    if cache == "disk":
        if cache_dir is None:
            raise ValueError("cache='disk' needs a cache_dir")
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        return PersistentDataset(list(data), transform, cache_dir=cache_dir, hash_func=content_hash)
    if cache == "none":
        return Dataset(list(data), transform)
    raise ValueError(f"cache must be 'memory', 'disk' or 'none', got {cache!r}")


class RepeatDistributedSampler(DistributedSampler):
    """Each rank's share of ``repeats`` shuffled passes over the dataset per epoch (the distributed twin of
    ``RandomSampler(num_samples=len(dataset) * repeats)``). Ranks see disjoint samples of one permutation;
    MONAI's workflow calls ``set_epoch`` so every epoch draws a new one.

    Args:
        dataset: the dataset.
        repeats: passes per epoch.
        num_replicas, rank: the process group (default: the initialised one).
        seed: seed of the permutations (the same on every rank).
    """

    def __init__(
        self,
        dataset: Any,
        repeats: int = 1,
        num_replicas: int | None = None,
        rank: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False
        )
        self.repeats = repeats
        self.total = math.ceil(len(dataset) * repeats / self.num_replicas) * self.num_replicas
        self.num_samples = self.total // self.num_replicas

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        n = len(self.dataset)
        order = torch.cat([torch.randperm(n, generator=g) for _ in range(self.repeats)]).tolist()
        order += order[: self.total - len(order)]  # pad so every rank gets as many samples
        return iter(order[self.rank : self.total : self.num_replicas])

    def __len__(self) -> int:
        return self.num_samples


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group is initialised (``torchrun``)."""
    return dist.is_available() and dist.is_initialized()


def build_train_loader(
    dataset: Dataset,
    batch_size: int = 16,
    num_samples: int = 1,
    volume_repeats: int = 1,
    num_workers: int = 0,
    pin_memory: bool = False,
    seed: int = 0,
) -> DataLoader:
    """The training loader: each epoch visits every volume ``volume_repeats`` times in random order (each
    visit yields ``num_samples`` slices or patches), ``batch_size`` samples per step (rounded up to whole
    volumes). Under ``torchrun`` every rank gets its share (:class:`RepeatDistributedSampler`).

    Args:
        dataset: the training dataset.
        batch_size: samples (slices or patches) per step.
        num_samples: samples each volume yields per visit.
        volume_repeats: visits per volume per epoch.
        num_workers: loader worker processes.
        pin_memory: pin host memory (CUDA).
        seed: seed of the distributed sampler's permutations.
    """
    sampler: Sampler
    if is_distributed():
        sampler = RepeatDistributedSampler(dataset, repeats=volume_repeats, seed=seed)
    else:
        sampler = RandomSampler(dataset, num_samples=len(dataset) * volume_repeats)
    return DataLoader(
        dataset,
        batch_size=max(1, math.ceil(batch_size / num_samples)),
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
    )


def build_val_loader(dataset: Dataset, num_workers: int = 0, distributed: bool | None = None) -> DataLoader:
    """One whole volume per batch, in datalist order; under ``torchrun`` each rank gets a share of the
    patients (``even_divisible=False``: no patient counted twice).

    Args:
        dataset: the evaluation dataset.
        num_workers: loader worker processes.
        distributed: split across ranks (default: when a process group is initialised).
    """
    sampler = None
    if is_distributed() if distributed is None else distributed:
        from monai.data import DistributedSampler as EvenSampler

        sampler = EvenSampler(dataset, even_divisible=False, shuffle=False)
    return DataLoader(dataset, batch_size=1, sampler=sampler, num_workers=num_workers)


def mean_dice_metric() -> dict[str, MeanDice]:
    """The key validation metric: per-patient 3D Dice of the post-processed mask, averaged."""
    return {KEY_METRIC: MeanDice(include_background=True, output_transform=from_engine(["pred", "label"]))}


def build_trainer(
    *,
    device: torch.device,
    max_epochs: int,
    train_data_loader: DataLoader,
    network: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_function: Any,
    inferer: Inferer | None = None,
    amp: bool = False,
    amp_cpu: bool = False,
    train_handlers: Sequence[Any] | None = None,
) -> SupervisedTrainer:
    """MONAI's ``SupervisedTrainer`` (batched output, gradients set to ``None``).

    Args:
        device, max_epochs, train_data_loader, network, optimizer, loss_function, inferer: as in MONAI.
        amp: mixed precision on CUDA (MONAI's float16 autocast and gradient scaling); ignored on the CPU.
        amp_cpu: on the CPU, bf16 autocast of the forward pass with channels-last 2D networks
            (:class:`pipeline.training.autocast.AutocastInferer` around ``inferer``; the network is converted
            in place) where the CPU runs bf16 natively, float32 otherwise (one log line says so); ignored
            on CUDA.
        train_handlers: ``attach(engine)`` objects, attached in order (put the epoch checkpoint last).
    """
    inferer = inferer or SimpleInferer()
    if amp_cpu and torch.device(device).type == "cpu":
        if cpu_bf16_supported():
            inferer = AutocastInferer(inferer, channels_last=to_channels_last(network))
        else:
            logging.getLogger(__name__).warning(
                "amp_cpu: this CPU has no native bf16 (AVX512-BF16 / AMX); training in float32"
            )
    trainer = SupervisedTrainer(
        device=device,
        max_epochs=max_epochs,
        train_data_loader=train_data_loader,
        network=network,
        optimizer=optimizer,
        loss_function=loss_function,
        inferer=inferer,
        amp=amp and torch.device(device).type == "cuda",
        decollate=False,
        optim_set_to_none=True,
        train_handlers=list(train_handlers or []),
    )
    trainer.logger.setLevel(logging.WARNING)  # the epoch line of EpochSummaryHandler says it all
    return trainer


def build_evaluator(
    *,
    device: torch.device,
    val_data_loader: DataLoader,
    network: torch.nn.Module,
    inferer: Inferer,
    postprocessing: Any = None,
    key_val_metric: Mapping[str, Any] | None = None,
    val_handlers: Sequence[Any] | None = None,
    amp: bool = False,
) -> SupervisedEvaluator:
    """MONAI's ``SupervisedEvaluator`` over whole volumes (large volumes stay on the CPU while the inferer
    runs the windows on the network's device).

    Args:
        device, val_data_loader, network, inferer, postprocessing, key_val_metric: as in MONAI.
        val_handlers: ``attach(engine)`` objects, attached in order.
        amp: mixed precision (only honoured on CUDA).
    """
    evaluator = SupervisedEvaluator(
        device=device,
        val_data_loader=val_data_loader,
        network=network,
        prepare_batch=VolumePrepareBatch(),
        inferer=inferer,
        postprocessing=postprocessing,
        key_val_metric=dict(key_val_metric) if key_val_metric else None,
        val_handlers=list(val_handlers or []),
        amp=amp and torch.device(device).type == "cuda",
    )
    evaluator.logger.setLevel(logging.WARNING)
    return evaluator


class CasesFailed(LGGSegError, RuntimeError):
    """Some cases failed while the others were processed (:attr:`~pipeline.errors.ErrorKind.CASES_FAILED`,
    exit code 1); ``failures`` lists them."""

    kind = ErrorKind.CASES_FAILED

    def __init__(self, failures: Sequence[Mapping[str, Any]], total: int, path: Path | None = None) -> None:
        names = ", ".join(str(f["case"]) for f in failures)
        where = f"; details in {path}" if path else ""
        super().__init__(f"{len(failures)} of {total} cases failed ({names}){where}")
        self.failures = list(failures)


def write_failures(failures: Sequence[Mapping[str, Any]], output_dir: str | Path) -> Path:
    """Write the failed cases as ``output_dir/failures.json`` (the folder is created).

    Returns:
        the written file.
    """
    path = Path(output_dir) / FAILURES_FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_json(path, list(failures))


def _case_name(entry: Any, index: int) -> str:
    if isinstance(entry, Mapping):
        return str(entry.get("case") or entry.get("patient") or entry.get("image"))
    return str(index)


def run_per_case(
    evaluator: SupervisedEvaluator,
    dataset: Dataset,
    case_names: Sequence[str] | None = None,
    num_workers: int = 0,
    on_case: Callable[[int, Any], None] | None = None,
) -> list[dict[str, str]]:
    """Run ``evaluator`` on every case of ``dataset`` separately, so that one case that fails (an
    unreadable file, a wrong shape) is reported with its name and the reason while the others still run.
    Under ``torchrun`` each rank takes every ``world_size``-th case. A failed case is logged in one line
    (:func:`error_line`; the traceback at debug level, ``lggseg -v``): the engine's own error lines are
    held back meanwhile.

    Args:
        evaluator: the evaluator (its data loader is replaced by one case at a time).
        dataset: the cases (datalist entries plus their transform).
        case_names: names used in the messages (default: the entries' ``case`` / ``patient`` / ``image``).
        num_workers: loader worker processes.
        on_case: called with ``(index, entry)`` before each case runs (default: a progress line).

    Returns:
        the failures of this rank: ``[{"case", "image", "error"}, ...]`` (empty when every case ran).
    """
    log = logging.getLogger(__name__)
    failures: list[dict[str, str]] = []
    entries = getattr(dataset, "data", [None] * len(dataset))
    rank, world = (dist.get_rank(), dist.get_world_size()) if is_distributed() else (0, 1)
    indices = range(rank, len(dataset), world)
    # Ignite's interrupt/resume run keeps a run that raised open, and the next run() would "resume" it and
    # process nothing; with Ignite's documented switch back to the former engine, every run starts afresh
    resumable = evaluator.interrupt_resume_enabled
    evaluator.interrupt_resume_enabled = False
    level = evaluator.logger.level  # Ignite logs two lines per failure; each failure is reported below
    evaluator.logger.setLevel(logging.CRITICAL)
    try:
        for count, index in enumerate(indices, 1):
            entry = entries[index]
            name = case_names[index] if case_names is not None else _case_name(entry, index)
            if on_case is not None:
                on_case(index, entry)
            else:
                log.info("case %d/%d: %s", count, len(indices), name)
            failure = _run_one_case(evaluator, Subset(dataset, [index]), num_workers)
            if failure is not None:
                line, details = failure
                image = str(entry.get("image")) if isinstance(entry, Mapping) else ""
                failures.append({"case": name, "image": image, "error": line})
                log.error("%s: failed: %s", name, line if image in line else f"{line} ({image})")
                log.debug("%s: %s", name, details)
    finally:
        evaluator.interrupt_resume_enabled = resumable
        evaluator.logger.setLevel(level)
    return failures


def _run_one_case(evaluator: SupervisedEvaluator, case: Dataset, num_workers: int) -> tuple[str, str] | None:
    """Run ``evaluator`` on one case; returns why it failed, in one line and as a traceback (``None``: it
    ran)."""
    evaluator.data_loader = build_val_loader(case, num_workers, distributed=False)
    evaluator.state.epoch_length = 1  # one batch: the case (not the length of an earlier loader)
    try:
        evaluator.run()
        if evaluator.state.iteration < 1:
            raise RuntimeError("the evaluator processed nothing")
    except Exception as err:  # noqa: BLE001 - any failure of one case is reported, the others go on
        failure = error_line(err), "".join(traceback.format_exception(err))
    else:
        return None
    # the failed run's loader iterator is only held by the error's traceback now: collect it here, so that
    # its worker processes are shut down by this process, not by a copy in the next case's forked workers
    gc.collect()
    return failure


def innermost_error(error: BaseException) -> BaseException:
    """The exception at the bottom of a chain (MONAI wraps a transform's error in "applying transform
    ...")."""
    seen = {id(error)}
    while error.__cause__ is not None and id(error.__cause__) not in seen:  # a cyclic chain ends too
        error = error.__cause__
        seen.add(id(error))
    return error


# how PyTorch's DataLoader hands on an error of a worker process: the worker's traceback as text
_WORKER_TRACEBACK = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.\s*Original Traceback")
_CHAINED = re.compile(
    r"^(?:The above exception was the direct cause of the following exception:"
    r"|During handling of the above exception, another exception occurred:)$"
)
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?(?P<type>[A-Za-z_]\w*)(?::\s?(?P<message>.*))?$")


def _worker_error_message(text: str) -> str | None:
    """The innermost error's message in the traceback text of a loader worker (``None``: not such a text).

    The first exception of a chained traceback is the innermost one; its message follows the indented
    frame lines as ``module.Type: message`` (a message may go on over several lines).
    """
    if not _WORKER_TRACEBACK.match(text):
        return None
    lines = text.splitlines()[1:]
    block: list[str] = []
    for line in lines:
        if _CHAINED.match(line.strip()):
            break
        block.append(line)
    for index, line in enumerate(block):
        if not line or line[0].isspace() or line.startswith("Traceback (most recent call last)"):
            continue
        match = _EXCEPTION_LINE.match(line)
        if match:
            message = " ".join([match.group("message") or "", *block[index + 1 :]])
            return " ".join(message.split()) or match.group("type")
    return None


def error_line(error: BaseException) -> str:
    """The cause of a failure on one line: the innermost error's message (its type when it has none), also
    for an error of a data loader's worker process (its traceback text comes back in the message).

    Args:
        error: what a case's run raised.

    Returns:
        the message on one line.
    """
    cause = innermost_error(error)
    worker = _worker_error_message(str(cause))
    if worker is not None:
        return worker
    return " ".join(str(cause).split()) or type(cause).__name__


def run_cases(
    evaluator: SupervisedEvaluator,
    dataset: Dataset,
    output_dir: str | Path,
    report: Any = None,
    num_workers: int = 0,
) -> list[dict[str, str]]:
    """:func:`run_per_case`, then the report (``report.write(failures)``, e.g.
    :class:`pipeline.evaluation.handler.PatientReportHandler`) and, when cases failed, ``failures.json`` in
    ``output_dir`` and :class:`CasesFailed`. What the bundle's ``evaluate.json`` and ``inference.json`` run.

    Raises:
        CasesFailed: after every case ran, when any failed.
    """
    failures = run_per_case(evaluator, dataset, num_workers=num_workers)
    if is_distributed():
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, failures)
        failures = [f for part in gathered for f in part]
    if report is not None:
        report.write(failures)
    if failures:
        path = write_failures(failures, output_dir) if not is_distributed() or dist.get_rank() == 0 else None
        raise CasesFailed(failures, len(dataset), path)
    return failures
