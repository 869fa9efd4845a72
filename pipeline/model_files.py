"""Model files, read and written in one place.

A model file (``best_model.pt``, ``checkpoint_epoch=N.pt``, the bundle's ``models/model.pt``, an ensemble
made by ``lggseg ensemble``, the MONAI Label app's fine-tuned ``model.pt``) holds the weights under
``"model"`` (as MONAI's ``CheckpointSaver`` / ``CheckpointLoader`` and MONAI Label expect) and the run
configuration under ``"config"``; everything is plain tensors, numbers and strings, so
``torch.load(weights_only=True)`` reads it. Files of earlier versions (weights under ``"network"``) still
load.

Two versions, never mixed up: the **package version** (``pipeline.__version__``, what ``pip`` installs, the
code) and the **model version** (the trained weights: the bundle's ``metadata.json`` ``version``). A model
file says its model version under :data:`MODEL_VERSION_KEY` (a plain string, written by
``scripts/install_model.py`` when it ships the model; :func:`model_version` reads it); files without one
(a run's checkpoints, before they are shipped) have none.

- :func:`load_checkpoint` is the one reader, :func:`save_model_file` the one writer (atomic);
- :data:`MODEL_KEYS` are the options of a configuration that define the network; :func:`network_options`
  picks them from a saved configuration and :func:`check_model_config` checks that two configurations
  agree on them;
- :func:`create_network` builds the network of a configuration, :func:`load_weights` loads a file's weights
  into it strictly, :func:`load_model` does both for a file.

This module is the home of :data:`MODEL_KEYS`: it imports :mod:`pipeline.config` (``RunConfig``), so the
configuration module cannot import them back without a cycle, and it does not need them.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, BinaryIO

import torch

from pipeline.config import RunConfig, resolve_device, validate_config
from pipeline.errors import ErrorKind, LGGSegError
from pipeline.networks import build_network
from pipeline.safety import atomic_path

__all__ = [
    "CONFIG_KEY",
    "INFERENCE_KEYS",
    "LEGACY_MODEL_KEY",
    "MODEL_KEY",
    "MODEL_KEYS",
    "MODEL_VERSION_KEY",
    "SHIPPED_MODEL",
    "ConfigState",
    "ModelFileError",
    "check_ensemble_members",
    "check_finite_weights",
    "check_model_config",
    "create_network",
    "file_sha256",
    "load_checkpoint",
    "load_model",
    "load_weights",
    "model_version",
    "network_name",
    "network_options",
    "refuse_existing_model",
    "save_model_file",
    "weights_mismatch",
]

MODEL_KEY = "model"  # MONAI's CheckpointLoader and MONAI Label read the weights from this key
LEGACY_MODEL_KEY = "network"  # where files of lggseg <= 0.1 held the weights
CONFIG_KEY = "config"
MODEL_VERSION_KEY = "model_version"  # the trained model's version (the bundle's), a plain string
# options that define the network: a resumed run or a loaded model file must agree on them
MODEL_KEYS = (
    "arch",
    "spatial_dims",
    "context",
    "num_classes",
    "deep_supervision",
    "network_kwargs",
    "members",
)
# options of a model's configuration that inference takes from it: the network, its input size and grid, and
# the post-processing and quality calibration chosen for it (scripts/install_model.py writes them into the
# bundle's inference.json; pipeline.workflows.bundle_checks checks them there)
INFERENCE_KEYS = (
    *MODEL_KEYS,
    "input_size",
    "patch_size",
    "threshold",
    "keep_largest",
    "min_size",
    "edge_components",
    "min_mass_fraction",
    "quality",
    "grid_pixel_mm",
    "grid_slice_mm",
    "grid_thin_below_mm",
    "tta",
)
# the trained model shipped with the bundle (the default model of `lggseg infer` and `evaluate`)
SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "bundle" / "models" / "model.pt"
_MAX_DETAIL = 300  # characters of a PyTorch message kept in a one-line error (key lists run to thousands)
_UNPICKLER_REASON = "WeightsUnpickler error:"  # where torch.load(weights_only=True) says what it refused
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")  # torch.save's zip archive; the legacy format's pickle protocol
_TRUNCATED = ("failed finding central directory", "unexpected EOF", "Ran out of input", "truncated")
_MAX_KEY = 60  # characters of a parameter name in a one-line error


class ModelFileError(LGGSegError, ValueError):
    """A model file that cannot be used, in one line naming the file: unreadable (empty, truncated, not a
    PyTorch file), not a model file of this project, weights that hold NaN or Inf, or weights that do not
    fit the network (:attr:`~pipeline.errors.ErrorKind.MODEL_UNUSABLE`: the CLI's exit code 2); the MONAI
    Label app answers it with HTTP 503 (the server's model is unusable)."""

    kind = ErrorKind.MODEL_UNUSABLE


class ConfigState:
    """The run configuration as a checkpointable object (``state_dict`` returns the mapping).

    Args:
        config: the resolved configuration (JSON-serialisable values).
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = dict(config)

    def state_dict(self) -> dict[str, Any]:
        return dict(self.config)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.config = dict(state)


def _one_line(error: BaseException, skip_header: bool = False) -> str:
    """The first informative line of an error message, shortened (PyTorch's ``weights_only`` failures: the
    unpickler's reason, not the advice to load untrusted code)."""
    reason = str(error).partition(_UNPICKLER_REASON)[2].strip()
    text = reason.split(". ")[0] if reason else str(error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = ((lines[1:2] if skip_header else []) or lines[:1] or [type(error).__name__])[0]
    return line if len(line) <= _MAX_DETAIL else line[:_MAX_DETAIL] + " ..."


def load_checkpoint(path: str | os.PathLike | BinaryIO, require_config: bool = True) -> dict[str, Any]:
    """Read a model file of this project (CPU tensors, ``torch.load(weights_only=True)``).

    Args:
        path: a ``best_model.pt``, ``checkpoint_epoch=N.pt``, ``model.pt``, or such a file opened in binary
            mode (the caller can then ``os.fstat`` exactly the bytes read).
        require_config: refuse a file without a ``"config"`` entry (``False``: weights alone are enough,
            the mapping then holds ``config: {}``).

    Returns:
        the saved mapping (``model``: the weights, ``config``, ...); files written by earlier versions
        (weights under ``network``) come back in the same form.

    Raises:
        FileNotFoundError: when the file does not exist.
        ModelFileError: one line naming the file and the problem, when it is not a model file of this
            project (empty, truncated, another format or content) or its weights hold NaN or Inf.
    """
    if isinstance(path, (str, os.PathLike)):
        path = name = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
    else:
        name = getattr(path, "name", "model file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means "not our model file"
        raise ModelFileError(f"{name}: {_unreadable(path, error)}") from None
    if isinstance(ckpt, dict) and LEGACY_MODEL_KEY in ckpt and MODEL_KEY not in ckpt:
        ckpt[MODEL_KEY] = ckpt.pop(LEGACY_MODEL_KEY)
        if isinstance(ckpt.get("best_checkpointer"), dict) and "saved" in ckpt["best_checkpointer"]:
            ckpt["best_checkpointer"] = {"key_metric": ckpt["best_checkpointer"]}
    if not isinstance(ckpt, dict):
        raise ModelFileError(
            f"{name}: not an lggseg checkpoint (holds a {type(ckpt).__name__}, not a mapping)"
        )
    if not require_config:
        ckpt.setdefault(CONFIG_KEY, {})
    if any(not isinstance(ckpt.get(k), Mapping) for k in (MODEL_KEY, CONFIG_KEY)):
        needs = f"{MODEL_KEY!r} and {CONFIG_KEY!r} entries" if require_config else f"{MODEL_KEY!r} weights"
        found = ", ".join(map(repr, sorted(map(str, ckpt))[:6])) or "nothing"
        raise ModelFileError(f"{name}: not an lggseg checkpoint (needs {needs}; found {found})")
    check_finite_weights(ckpt[MODEL_KEY], name)
    return ckpt


def _unreadable(source: str | os.PathLike | BinaryIO, error: BaseException) -> str:
    """Why ``torch.load`` could not read a file: empty, truncated, not a PyTorch file, or its reason."""
    try:
        if isinstance(source, (str, os.PathLike)):
            size = os.stat(source).st_size
            with open(source, "rb") as handle:
                head = handle.read(4)
        else:
            size = os.fstat(source.fileno()).st_size
            source.seek(0)
            head = source.read(4)
    except (OSError, AttributeError, ValueError):  # a stream without a file or that cannot seek
        size, head = None, b"?"
    reason = f"{type(error).__name__}: {_one_line(error)}" if str(error) else type(error).__name__
    if size == 0:
        return "cannot read the model file: it is empty (0 bytes); copy or save the model again"
    if not head.startswith(_TORCH_MAGIC) and head != b"?":
        return (
            f"cannot read the model file: not a PyTorch file (it starts with {head!r}); pass a .pt file "
            "written by lggseg"
        )
    if isinstance(error, EOFError) or any(t in str(error) for t in _TRUNCATED):
        reason = reason.split(". ")[0]  # PyTorch goes on with guesses at the cause
        return f"cannot read the model file: truncated or damaged ({size} bytes; {reason}); copy it again"
    return f"cannot read the model file ({reason})"


def model_version(path: str | os.PathLike | BinaryIO) -> str | None:
    """The version of the trained model in a model file (:data:`MODEL_VERSION_KEY`, the bundle's
    ``metadata.json`` ``version`` written by ``scripts/install_model.py``), not the package's.

    Args:
        path: a model file (as for :func:`load_checkpoint`; weights without a ``"config"`` are fine).

    Returns:
        the version, e.g. ``"0.3.0"``, or ``None`` when the file does not say one.

    Raises:
        FileNotFoundError: no such file.
        ModelFileError: not a model file of this project (see :func:`load_checkpoint`).
    """
    version = load_checkpoint(path, require_config=False).get(MODEL_VERSION_KEY)
    return version.strip() if isinstance(version, str) and version.strip() else None


# exponent bits of each float type: a value is NaN or Inf exactly when they are all set
_EXPONENT_BITS = {
    torch.float16: (torch.int16, 0x7C00),
    torch.bfloat16: (torch.int16, 0x7F80),
    torch.float32: (torch.int32, 0x7F800000),
    torch.float64: (torch.int64, 0x7FF0000000000000),
}


def _by_dtype(tensors: Any) -> list[list[torch.Tensor]]:
    groups: dict[torch.dtype, list[torch.Tensor]] = {}
    for tensor in tensors:
        groups.setdefault(tensor.dtype, []).append(tensor.detach().reshape(-1))
    return list(groups.values())


def _all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether every value of tensors of one dtype is finite: one integer test of the exponent bits over all
    of them (float16 files' weights: torch.isfinite per tensor took seconds on a CPU)."""
    flat = torch.cat(tensors)
    if flat.dtype in _EXPONENT_BITS:
        integer, mask = _EXPONENT_BITS[flat.dtype]
        return not bool(((flat.view(integer) & mask) == mask).any())
    return bool(torch.isfinite(flat).all())


def check_finite_weights(weights: Mapping[str, Any], path: Any) -> None:
    """Refuse weights that hold NaN or Inf (a diverged training): a network with them predicts nothing.

    Args:
        weights: ``{parameter name: tensor}``.
        path: the model file, named in the error.

    Raises:
        ModelFileError: one line naming the file and the first parameter (in the file's order) with a
            NaN or Inf value.
    """
    floating = {
        key: tensor
        for key, tensor in weights.items()
        if isinstance(tensor, torch.Tensor) and (tensor.is_floating_point() or tensor.is_complex())
    }
    if not floating:
        return
    if all(_all_finite(group) for group in _by_dtype(floating.values())):
        return
    for key, tensor in floating.items():  # the first parameter with a non-finite value, in the file's order
        finite = torch.isfinite(tensor)
        if bool(finite.all()):
            continue
        nan = int(torch.isnan(tensor).sum())
        what = " and ".join(
            f"{count} {word}" for count, word in ((nan, "NaN"), (int((~finite).sum()) - nan, "Inf")) if count
        )
        raise ModelFileError(
            f"{path}: weights hold NaN or Inf ({what} of {tensor.numel()} values in {key[:_MAX_KEY]}; the "
            "training diverged?); a network with them predicts nothing: use another model file or retrain"
        )


def save_model_file(path: str | os.PathLike, checkpoint: Mapping[str, Any]) -> Path:
    """Write a model file atomically (a temporary file in the same folder, then a rename): readers see the
    old complete file or the new complete file, never a partial one.

    Args:
        path: the final file (its folder is created).
        checkpoint: ``{"model": state_dict, "config": {...}, ...}`` (tensors, numbers, strings).

    Returns:
        the written path.

    Raises:
        ValueError: when ``checkpoint`` has no weights under ``"model"``.
    """
    if not isinstance(checkpoint.get(MODEL_KEY), Mapping):
        raise ValueError(f"{path}: a model file needs its weights under {MODEL_KEY!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(dict(checkpoint), tmp)
    return path


def network_options(config: Mapping[str, Any]) -> dict[str, Any]:
    """The options of a (saved) configuration that define the network (:data:`MODEL_KEYS`, those present).

    Args:
        config: a run configuration, e.g. a model file's ``"config"``.

    Returns:
        ``{option: value}`` for the keys of :data:`MODEL_KEYS` that ``config`` holds.
    """
    return {k: config[k] for k in MODEL_KEYS if k in config}


def check_model_config(saved: Mapping[str, Any], current: Mapping[str, Any], path: Any) -> None:
    """Check that a model file's configuration and the current one agree on the network options.

    Args:
        saved: the model file's configuration.
        current: the configuration it is used with (only the options it holds are compared).
        path: the model file, named in the error.

    Raises:
        ValueError: naming each option that differs.
    """
    diff = {
        k: (saved.get(k), current.get(k))
        for k in MODEL_KEYS
        if k in current and _plain(saved.get(k)) != _plain(current.get(k))
    }
    if diff:
        detail = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"{path} was trained with other network options ({detail})")


def _plain(value: Any) -> Any:
    """``value`` as JSON gives it back (tuples as lists, at any depth)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def create_network(cfg: RunConfig | Mapping[str, Any]) -> torch.nn.Module:
    """The network of a configuration, from the registry :func:`pipeline.networks.build_network`.

    Args:
        cfg: a :class:`RunConfig` or a mapping of its options (missing ones take their defaults).

    Returns:
        the network (training mode, CPU).
    """
    c = cfg if isinstance(cfg, RunConfig) else RunConfig.from_dict(dict(cfg))
    return build_network(
        c.arch,
        c.spatial_dims,
        c.in_channels,
        c.num_classes,
        deep_supervision=c.deep_supervision,
        members=c.members,
        network_kwargs=c.network_kwargs,
    )


def load_weights(
    network: torch.nn.Module, checkpoint: Mapping[str, Any], path: Any, name: str | None = None
) -> torch.nn.Module:
    """Load a model file's weights into ``network`` strictly (every key, every shape).

    Args:
        network: the network the file was saved from (its device is kept).
        checkpoint: the mapping :func:`load_checkpoint` returned.
        path: the model file, named in the error.
        name: the network as the error names it (default: its class), e.g. ``unext(spatial_dims=2, ...)``.

    Returns:
        ``network``.

    Raises:
        ModelFileError: one line naming the file, when the weights do not fit the network: how many keys
            are missing, unexpected, or of another shape, and the first of each.
    """
    given = checkpoint[MODEL_KEY]
    mismatch = weights_mismatch(network.state_dict(), given)
    if mismatch:
        raise ModelFileError(f"{path}: weights do not fit {name or type(network).__name__}: {mismatch}")
    try:
        network.load_state_dict(given, strict=True)
    except RuntimeError as error:
        raise ModelFileError(
            f"{path}: the weights do not fit the network ({_one_line(error, skip_header=True)})"
        ) from None
    return network


def weights_mismatch(expected: Mapping[str, Any], given: Mapping[str, Any]) -> str:
    """A short summary of how ``given`` weights differ from the ``expected`` ones (a network's
    ``state_dict``): counts of missing keys, unexpected keys and shape mismatches, with the first of each.

    Returns:
        ``""`` when the keys and shapes agree, else e.g. ``"12 missing keys (first: enc1.conv.weight), 3
        unexpected (first: ...), 2 shape mismatches (first: enc1.conv.weight 8x3x3x3 vs 4x3x3x3 expected)"``.
    """

    def shape(value: Any) -> tuple[int, ...] | None:
        return tuple(value.shape) if hasattr(value, "shape") else None

    def text(dims: tuple[int, ...] | None) -> str:
        return "x".join(map(str, dims)) if dims else "scalar"

    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [k for k in expected if k in given and shape(given[k]) != shape(expected[k])]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key{'s' * (len(missing) > 1)} (first: {missing[0][:_MAX_KEY]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (first: {unexpected[0][:_MAX_KEY]})")
    if shapes:
        k = shapes[0]
        first = f"{k[:_MAX_KEY]} {text(shape(given[k]))} vs {text(shape(expected[k]))} expected"
        parts.append(f"{len(shapes)} shape mismatch{'es' * (len(shapes) > 1)} (first: {first})")
    return ", ".join(parts)


def load_model(
    checkpoint: str | Path, overrides: Mapping[str, Any] | None = None, device: str = "auto"
) -> tuple[torch.nn.Module, RunConfig, torch.device]:
    """Network (in eval mode, on the device, weights loaded strictly) and configuration of a model file.

    Args:
        checkpoint: ``best_model.pt``, ``checkpoint_epoch=N.pt`` or a bundle's ``model.pt``.
        overrides: configuration values to change (post-processing, TTA, data, ...); network options
            cannot be changed.
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:i]"``.

    Returns:
        the network, the configuration, the device.

    Raises:
        FileNotFoundError: missing file. ValueError: not an lggseg model file, weights that do not fit its
        network, or overrides that change the network.
    """
    dev = resolve_device(device)
    ckpt = load_checkpoint(checkpoint)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    check_model_config(ckpt[CONFIG_KEY], {**ckpt[CONFIG_KEY], **overrides}, checkpoint)
    cfg = RunConfig.from_dict({**_known(ckpt[CONFIG_KEY]), **overrides, "resume": False})
    validate_config(cfg)
    network = load_weights(create_network(cfg), ckpt, checkpoint, network_name(cfg))
    return network.to(dev).eval(), cfg, dev


def network_name(cfg: RunConfig | Mapping[str, Any]) -> str:
    """The network of a configuration in a few words, for errors: ``unext(spatial_dims=2, context=1, ...)``.

    Args:
        cfg: a :class:`RunConfig` or a mapping of its options.

    Returns:
        the architecture with its network options (:data:`MODEL_KEYS`), at most about 120 characters.
    """
    options = network_options(asdict(cfg) if isinstance(cfg, RunConfig) else cfg)
    arch = options.pop("arch", "network")
    options["network_kwargs"] = options.pop("network_kwargs", None)  # the longest, last
    text = ", ".join(f"{k}={_plain(v)}" for k, v in options.items() if v not in ({}, None))
    return f"{arch}({text if len(text) <= 110 else text[:107] + '...'})"


def _known(config: Mapping[str, Any]) -> dict[str, Any]:
    names = set(asdict(RunConfig()))
    return {k: v for k, v in config.items() if k in names}


def refuse_existing_model(path: str | Path) -> None:
    """Refuse to start a training whose best model would replace an existing file (for instance the
    bundle's shipped ``models/model.pt``).

    Raises:
        ValueError: when ``path`` exists, naming it and what to do.
    """
    if Path(path).exists():
        raise ValueError(
            f"{path}: exists and training would replace it; choose another ckpt_dir or move the file away"
        )


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# what shapes a member's input and output besides its network: the inferer's in-plane size and 3D window,
# and the intensity normalisation (an ensemble runs every member with the first one's settings)
ENSEMBLE_KEYS = (*(k for k in MODEL_KEYS if k != "members"), "input_size", "patch_size")
ENSEMBLE_KEYS += ("input_channels", "clip_lower", "clip_upper", "brain_threshold")


def check_ensemble_members(members: Sequence[tuple[Any, Mapping[str, Any]]]) -> None:
    """Check that the models of an ensemble agree on everything that shapes their input and output
    (:data:`ENSEMBLE_KEYS`; a key a file lacks counts as its default).

    Args:
        members: ``(model file, its configuration)`` pairs.

    Raises:
        ValueError: one line naming the first member, the one that differs and the setting.
    """
    defaults = asdict(RunConfig())
    (first, base), *others = members
    for path, config in others:
        for key in ENSEMBLE_KEYS:
            a, b = (_plain(c.get(key, defaults.get(key))) for c in (base, config))
            if a != b:
                raise ValueError(
                    f"{path}: {key} is {b!r} but {a!r} in {first}; the members of an ensemble must agree "
                    "on everything that shapes their input and output"
                )
