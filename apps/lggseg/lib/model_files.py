"""Where the app's bundle and weights are, and how weights are read (strictly) and published (atomically),
through the project's model-file module :mod:`pipeline.model_files` (its :class:`ModelFileError` too).

Two weight files, both ``{"model": state_dict, "config": {...}}`` (what MONAI's ``CheckpointLoader`` and
``lggseg`` write):

- the base model, by default the bundle's shipped ``bundle/models/model.pt`` (conf ``model``); the app never
  writes it;
- the fine-tuned model ``<model_dir>/model.pt`` (conf ``model_dir``, default ``apps/lggseg/model``), written
  by the training task; inference prefers it when it exists (delete it to go back to the base model).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser

from pipeline.model_files import (
    MODEL_VERSION_KEY,
    ModelFileError,
    load_checkpoint,
    model_version,
    save_model_file,
)
from pipeline.model_files import load_weights as pipeline_load_weights

MODEL_NAME = "model.pt"
# ModelFileError (pipeline.model_files): a weight file that is missing, unreadable, or does not fit the
# bundle's network (one line); the app answers it with 503 (inference) or a failed training


@dataclass(frozen=True)
class AppPaths:
    """The bundle and the weight files of the app.

    Args:
        bundle: the MONAI Bundle folder (``configs/inference.json``, ``configs/train.json``).
        base_model: the weights inference uses until the app has fine-tuned its own.
        model_dir: where the training task publishes ``model.pt``.
    """

    bundle: Path
    base_model: Path
    model_dir: Path

    @classmethod
    def from_conf(cls, app_dir: str | os.PathLike, conf: Mapping[str, str]) -> AppPaths:
        """Read the ``bundle``, ``model`` and ``model_dir`` conf options (``--conf KEY VALUE``).

        Args:
            app_dir: the app folder (``apps/lggseg``); the bundle defaults to ``<repository>/bundle``.
            conf: the server's conf options.

        Returns:
            absolute paths.
        """
        app = Path(app_dir).resolve()
        bundle = Path(conf.get("bundle") or app.parents[1] / "bundle").resolve()
        base = Path(conf.get("model") or bundle / "models" / MODEL_NAME).resolve()
        model_dir = Path(conf.get("model_dir") or app / "model").resolve()
        shipped = bundle / "models" / MODEL_NAME
        if model_dir in (base.parent, shipped.parent):
            raise ValueError(
                f"model_dir {model_dir} holds the base or the shipped weights ({base}, {shipped}): "
                "fine-tuning would overwrite them; pass another --conf model_dir"
            )
        return cls(bundle=bundle, base_model=base, model_dir=model_dir)

    @property
    def finetuned_model(self) -> Path:
        """``<model_dir>/model.pt``."""
        return self.model_dir / MODEL_NAME

    def current_model(self) -> Path | None:
        """The weights in use: the fine-tuned file when it exists, else the base model, else ``None``."""
        for path in (self.finetuned_model, self.base_model):
            if path.is_file():
                return path
        return None

    def config_file(self, name: str) -> Path:
        """``<bundle>/configs/<name>``."""
        return self.bundle / "configs" / name


def read_bundle_config(paths: AppPaths, name: str, device: str) -> ConfigParser:
    """The bundle's config ``name`` read with MONAI's ``ConfigParser``, ``bundle_root`` and ``device`` set.

    Args:
        paths: the app's paths.
        name: ``"inference.json"`` or ``"train.json"``.
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:i]"``.

    Returns:
        the parser (parsed lazily on first use).
    """
    parser = ConfigParser()
    parser.read_config(str(paths.config_file(name)))
    parser["bundle_root"] = str(paths.bundle)
    parser["device"] = device
    return parser


def read_weights(path: str | os.PathLike) -> tuple[dict[str, Any], os.stat_result]:
    """Read a weight file with the project's one reader (:func:`pipeline.model_files.load_checkpoint`;
    weights alone, without a ``"config"``, are accepted).

    The file is opened once, so the returned ``stat`` describes exactly the bytes read even when the file
    is being replaced at that moment.

    Args:
        path: a weight file.

    Returns:
        the checkpoint mapping (``config``: ``{}`` when the file has none) and the file's ``os.stat_result``.

    Raises:
        ModelFileError: missing or unreadable file, or no weights under ``"model"``.
    """
    try:
        with open(path, "rb") as handle:
            stat = os.fstat(handle.fileno())
            checkpoint = load_checkpoint(handle, require_config=False)
    except FileNotFoundError:
        raise ModelFileError(f"{path}: weight file not found") from None
    except (OSError, ValueError) as error:
        raise ModelFileError(str(error)) from None
    return checkpoint, stat


def load_weights(network: torch.nn.Module, path: str | os.PathLike) -> tuple[dict[str, Any], os.stat_result]:
    """Load the weights under ``"model"`` of ``path`` into ``network`` strictly (every key, every shape).

    Args:
        network: the bundle's network (its device is kept).
        path: a weight file.

    Returns:
        the checkpoint mapping and the file's ``os.stat_result`` (see :func:`read_weights`).

    Raises:
        ModelFileError: missing or unreadable file, no ``"model"`` key, or weights that do not fit.
    """
    checkpoint, stat = read_weights(path)
    load_into(network, checkpoint, path)
    return checkpoint, stat


def load_into(network: torch.nn.Module, checkpoint: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Load the weights of a checkpoint read by :func:`read_weights` into ``network`` strictly.

    Raises:
        ModelFileError: weights that do not fit the network.
    """
    try:
        pipeline_load_weights(network, checkpoint, path)
    except ValueError as error:
        raise ModelFileError(f"{error}; use weights trained with the bundle's network options") from None


def publish_weights(path: str | os.PathLike, checkpoint: Mapping[str, Any]) -> Path:
    """Write a weight file atomically (:func:`pipeline.model_files.save_model_file`: a temporary file in
    the same folder, then ``os.replace``); readers see the old or the new complete file, never a partial one.

    Args:
        path: the final file (its folder is created).
        checkpoint: ``{"model": state_dict, ...}`` (tensors, numbers, strings).

    Returns:
        the published path.
    """
    return save_model_file(path, checkpoint)


class CachedNetwork:
    """The bundle's network with the current weights, reloaded when the weight file changes.

    A file counts as changed when its inode, size or modification time differ (``os.replace`` of a newly
    published file changes the inode). Thread-safe: concurrent requests share one loaded network.

    Args:
        build: makes a fresh network (the bundle's ``network_def``).
        paths: the app's paths (which file is current).
    """

    def __init__(self, build: Any, paths: AppPaths) -> None:
        self.build = build
        self.paths = paths
        self._lock = threading.Lock()
        self._key: tuple | None = None
        self._network: torch.nn.Module | None = None
        self._info: dict[str, Any] = {}
        self._versions: dict[tuple, str | None] = {}

    @staticmethod
    def _key_of(path: Path, stat: os.stat_result) -> tuple:
        return str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns

    def version(self) -> str | None:
        """The model version of the current weight file (:func:`pipeline.model_files.model_version`: the
        trained model's, not the package's), read once per file; ``None`` when it says none or there is no
        readable file."""
        path = self.paths.current_model()
        try:
            key = self._key_of(path, os.stat(path)) if path is not None else None
        except OSError:
            return None
        if key is None:
            return None
        with self._lock:
            if key not in self._versions:
                try:
                    self._versions = {key: model_version(path)}  # the current file's only
                except (OSError, ModelFileError):
                    return None
            return self._versions[key]

    def get(self, device: torch.device) -> tuple[torch.nn.Module, dict[str, Any]]:
        """The network in eval mode on ``device`` and ``{"model_file", "model_mtime", "model_version"}`` of
        its weights (``model_version``: the trained model's version, ``None`` when the file says none).

        Raises:
            ModelFileError: no weight file, or one that does not fit the network.
        """
        path = self.paths.current_model()
        if path is None:
            raise ModelFileError(
                f"no weights: neither {self.paths.finetuned_model} nor {self.paths.base_model} exists; "
                "put the bundle's model.pt there or start the server with --conf model PATH"
            )
        with self._lock:
            try:
                stat = os.stat(path)
                if self._network is not None and self._key == self._key_of(path, stat):
                    return self._network, self._info
            except OSError:
                pass  # replaced or removed meanwhile: load below reports it
            network = self.build()
            checkpoint, stat = load_weights(network, path)
            self._network = network.to(device).eval()
            self._key = self._key_of(path, stat)
            version = checkpoint.get(MODEL_VERSION_KEY)
            self._info = {
                "model_file": str(path),
                "model_mtime": stat.st_mtime,
                "model_version": version if isinstance(version, str) else None,
            }
            return self._network, self._info
