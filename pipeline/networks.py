"""The network registry: every architecture of the project, built by name.

``build_network(name, spatial_dims=2, in_channels=3, out_channels=1, **kwargs)`` returns a
``torch.nn.Module`` producing raw logits (no activation) of the input's spatial size. It is usable
from a MONAI bundle config::

    "network_def": {"_target_": "pipeline.networks.build_network", "name": "unext",
                    "spatial_dims": 2, "in_channels": 3, "out_channels": 1}

Names (``list_networks()`` returns their :class:`NetworkInfo`):

============== ====== ==== ===================================================================
name           dims   DS   implementation
============== ====== ==== ===================================================================
unext          2      yes  :class:`pipeline.nets.unext.UNeXt` (custom, fast; the point-of-care model)
unet           2, 3   yes  :class:`pipeline.nets.unet.UNet`, classic U-Net, ``base_width=64``
resunet        2, 3   yes  :class:`pipeline.nets.resunet.ResUNet`, ``features=(64, 128, 256, 512)``
unetplusplus   2, 3   yes  :class:`pipeline.nets.unetplusplus.UNetPlusPlus` (MONAI body), pruning
deeplabv3plus  2      no   :class:`pipeline.nets.deeplab.DeepLabV3Plus` (dilated ResNet-18 encoder)
swinunetr      2, 3   no   MONAI ``SwinUNETR`` (the transformer member), ``feature_size=24``
segmenter      2      no   :class:`pipeline.nets.segmenter.Segmenter`, ViT-tiny, ``decoder="mask"``
fcn8s          2      no   :class:`pipeline.nets.fcn.FCN`, VGG-16 layout, ``base_width=32``
fcn16s         2      no   ``fcn8s`` with ``variant="16s"`` (pool4 skip only)
fcn32s         2      no   ``fcn8s`` with ``variant="32s"`` (no skip)
hrnet          2      no   :class:`pipeline.nets.hrnet.HRNet`, HRNetV2, ``width=18`` (W18-small)
segresnet      2, 3   no   MONAI ``SegResNet``, ``init_filters=16``
monaiunet      2, 3   no   MONAI ``UNet``, channels 16..256, two residual units per level
unet3d         3      no   ``monaiunet`` in 3D (anisotropic ``strides`` welcome)
segresnet3d    3      no   ``segresnet`` in 3D
swinunetr3d    3      no   ``swinunetr`` in 3D
============== ====== ==== ===================================================================

``**kwargs`` go to the implementation (e.g. ``widths`` for UNeXt, ``base_width`` for U-Net,
``pruning_level`` for U-Net++, ``encoder_weights`` for DeepLabV3+, ``strides`` for MONAI UNet,
``size``/``decoder``/``img_size`` for Segmenter, ``base_width`` for FCN, ``width``/``num_modules`` for
HRNet).

Deep supervision (``deep_supervision=True``, only where the table says yes, ``ValueError``
otherwise): in training mode ``forward`` returns a list, the full-resolution main logits first and
auxiliary logits at coarser scales after them (for MONAI's ``DeepSupervisionLoss``, which resizes
the target); in eval mode it returns the main logits tensor only.

Inputs must be a multiple of the total stride in every spatial dimension (:func:`network_stride`;
``lggseg networks`` lists it); :func:`pad_to_stride` pads a batch and gives the crop back (e.g. 240x240
slices -> 256x256). The registry below is the one home of each network's stride: the network classes
do not repeat it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from monai.transforms import DivisiblePad
from monai.utils import convert_to_tensor
from torch import nn

__all__ = [
    "NetworkInfo",
    "build_network",
    "list_networks",
    "network_info",
    "network_names",
    "network_stride",
    "pad_to_stride",
    "count_parameters",
    "count_gmacs",
]


@dataclass(frozen=True)
class NetworkInfo:
    """What the registry knows about one network name.

    Attributes:
        name: registry name (lower case).
        description: one line.
        spatial_dims: the spatial dimensionalities it supports.
        deep_supervision: whether ``deep_supervision=True`` is supported.
        stride: default total stride (inputs must be multiples of it in every spatial dimension); the
            one place it is stated (options that change it are handled by :func:`network_stride`).
        source: ``"custom"`` or the MONAI class it wraps.
        defaults: keyword defaults the registry applies (overridable through ``**kwargs``).
    """

    name: str
    description: str
    spatial_dims: tuple[int, ...]
    deep_supervision: bool
    stride: int
    source: str
    defaults: dict = field(default_factory=dict)
    builder: Callable[..., nn.Module] | None = field(default=None, repr=False, compare=False)


def _build_unext(spatial_dims: int, in_channels: int, out_channels: int, **kwargs) -> nn.Module:
    from pipeline.nets.unext import UNeXt

    return UNeXt(in_channels=in_channels, out_channels=out_channels, **kwargs)


def _build_unet(spatial_dims: int, in_channels: int, out_channels: int, **kwargs) -> nn.Module:
    from pipeline.nets.unet import UNet

    return UNet(spatial_dims, in_channels, out_channels, **kwargs)


def _build_resunet(spatial_dims: int, in_channels: int, out_channels: int, **kwargs) -> nn.Module:
    from pipeline.nets.resunet import ResUNet

    return ResUNet(spatial_dims, in_channels, out_channels, **kwargs)


def _build_unetplusplus(spatial_dims: int, in_channels: int, out_channels: int, **kwargs) -> nn.Module:
    from pipeline.nets.unetplusplus import UNetPlusPlus

    return UNetPlusPlus(spatial_dims, in_channels, out_channels, **kwargs)


def _build_deeplab(spatial_dims: int, in_channels: int, out_channels: int, **kwargs) -> nn.Module:
    from pipeline.nets.deeplab import DeepLabV3Plus

    return DeepLabV3Plus(in_channels, out_channels, **kwargs)


def _build_swinunetr(spatial_dims: int, in_channels: int, out_channels: int, **kwargs) -> nn.Module:
    from monai.networks.nets import SwinUNETR

    try:
        import einops  # noqa: F401  (MONAI's SwinUNETR imports it lazily, at the first forward)
    except ImportError as error:
        raise ImportError("SwinUNETR needs the 'einops' package: pip install einops") from error

    return SwinUNETR(in_channels=in_channels, out_channels=out_channels, spatial_dims=spatial_dims, **kwargs)


def _build_segmenter(spatial_dims: int, in_channels: int, out_channels: int, **kwargs) -> nn.Module:
    from pipeline.nets.segmenter import Segmenter

    return Segmenter(in_channels, out_channels, **kwargs)


def _build_fcn(spatial_dims: int, in_channels: int, out_channels: int, **kwargs) -> nn.Module:
    from pipeline.nets.fcn import FCN

    return FCN(in_channels, out_channels, **kwargs)


def _build_hrnet(spatial_dims: int, in_channels: int, out_channels: int, **kwargs) -> nn.Module:
    from pipeline.nets.hrnet import HRNet

    return HRNet(in_channels, out_channels, **kwargs)


def _build_segresnet(spatial_dims: int, in_channels: int, out_channels: int, **kwargs) -> nn.Module:
    from monai.networks.nets import SegResNet

    return SegResNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **kwargs)


def _build_monaiunet(spatial_dims: int, in_channels: int, out_channels: int, **kwargs) -> nn.Module:
    from monai.networks.nets import UNet as MonaiUNet

    return MonaiUNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **kwargs)


_MONAI_UNET_DEFAULTS = {"channels": (16, 32, 64, 128, 256), "strides": (2, 2, 2, 2), "num_res_units": 2}
_SEGRESNET_DEFAULTS = {"init_filters": 16, "blocks_down": (1, 2, 2, 4), "blocks_up": (1, 1, 1)}
_SWINUNETR_DEFAULTS = {"feature_size": 24}

_REGISTRY: dict[str, NetworkInfo] = {}
_ALIASES: dict[str, tuple[str, int]] = {}  # 3D alias -> (network, spatial_dims)


def _register(name, description, dims, deep_supervision, stride, source, builder, defaults=None) -> None:
    _REGISTRY[name] = NetworkInfo(
        name, description, tuple(dims), deep_supervision, stride, source, dict(defaults or {}), builder
    )


_MONAI = "monai.networks.nets."
# fmt: off
_register("unext", "UNeXt: conv + tokenized shifted-MLP stages (custom, fast)",
          (2,), True, 32, "custom", _build_unext)
_register("unet", "classic U-Net with BatchNorm (base width 64 = 31 M params)",
          (2, 3), True, 16, "custom", _build_unet, {"base_width": 64})
_register("resunet", "deep residual U-Net (pre-activation residual units)",
          (2, 3), True, 8, "custom", _build_resunet, {"features": (64, 128, 256, 512)})
_register("unetplusplus", "U-Net++: nested dense skips, deep supervision, pruning",
          (2, 3), True, 16, _MONAI + "BasicUNetPlusPlus", _build_unetplusplus)
_register("deeplabv3plus", "DeepLabV3+: dilated ResNet-18, separable ASPP and decoder",
          (2,), False, 16, "custom", _build_deeplab)
_register("swinunetr", "SwinUNETR: Swin-transformer encoder, CNN decoder",
          (2, 3), False, 32, _MONAI + "SwinUNETR", _build_swinunetr, _SWINUNETR_DEFAULTS)
_register("segmenter", "Segmenter: ViT encoder on 16x16 patches, mask-transformer decoder",
          (2,), False, 16, "custom", _build_segmenter)
_register("fcn8s", "FCN-8s: VGG-16 layout, skips from pool3 and pool4 (base width 32)",
          (2,), False, 32, "custom", _build_fcn, {"variant": "8s"})
_register("fcn16s", "FCN-16s: VGG-16 layout, skip from pool4 (base width 32)",
          (2,), False, 32, "custom", _build_fcn, {"variant": "16s"})
_register("fcn32s", "FCN-32s: VGG-16 layout, x32 learned upsampling (base width 32)",
          (2,), False, 32, "custom", _build_fcn, {"variant": "32s"})
_register("hrnet", "HRNetV2: four parallel resolutions, repeated fusion (W18-small)",
          (2,), False, 32, "custom", _build_hrnet)
_register("segresnet", "SegResNet: residual encoder, light decoder",
          (2, 3), False, 8, _MONAI + "SegResNet", _build_segresnet, _SEGRESNET_DEFAULTS)
_register("monaiunet", "MONAI UNet with residual units (16..256)",
          (2, 3), False, 16, _MONAI + "UNet", _build_monaiunet, _MONAI_UNET_DEFAULTS)
# fmt: on
for _alias, _target in (("unet3d", "monaiunet"), ("segresnet3d", "segresnet"), ("swinunetr3d", "swinunetr")):
    _base = _REGISTRY[_target]
    _register(_alias, f"{_base.name} in 3D (patch training)", (3,), False, _base.stride, _base.source,
              _base.builder, _base.defaults)  # fmt: skip
    _ALIASES[_alias] = (_target, 3)


def _normalise(name: str) -> str:
    return str(name).strip().lower().replace("-", "").replace("_", "").replace("+", "plus")


def network_names() -> list[str]:
    """All registry names, in registration order."""
    return list(_REGISTRY)


def list_networks() -> list[NetworkInfo]:
    """:class:`NetworkInfo` of every registered name, in registration order."""
    return list(_REGISTRY.values())


def network_info(name: str) -> NetworkInfo:
    """:class:`NetworkInfo` of ``name``.

    Raises:
        ValueError: unknown name (the message lists the valid ones).
    """
    key = _normalise(name)
    if key not in _REGISTRY:
        raise ValueError(f"unknown network {name!r}; valid names: {', '.join(_REGISTRY)}")
    return _REGISTRY[key]


def _resolve_dims(info: NetworkInfo, spatial_dims: int | None) -> int:
    if spatial_dims is None:
        return info.spatial_dims[0]
    spatial_dims = int(spatial_dims)
    if spatial_dims not in info.spatial_dims:
        dims = " or ".join(str(d) for d in info.spatial_dims)
        raise ValueError(f"network {info.name!r} supports spatial_dims {dims}, not {spatial_dims}")
    return spatial_dims


def build_network(
    name: str,
    spatial_dims: int | None = None,
    in_channels: int = 3,
    out_channels: int = 1,
    members: int = 1,
    network_kwargs: dict | None = None,
    **kwargs,
) -> nn.Module:
    """Build a registered network.

    Args:
        name: registry name (see :func:`network_names`; case, ``-``/``_`` and ``+`` are forgiven).
        spatial_dims: 2 or 3; ``None`` (default) means 2, or 3 for the 3D aliases (``unet3d``...).
            The 3D aliases and the 2D-only networks accept their own dimensionality only.
        in_channels: input channels.
        out_channels: output channels (logits).
        members: 1: one network; N > 1: a :class:`pipeline.nets.ensemble.ModelEnsemble` of N such networks
            (the form of a model file made by ``lggseg ensemble``).
        network_kwargs: the implementation's options as one mapping (a run's ``network_kwargs``, as the
            bundle's ``network_def`` passes them); ``**kwargs`` win over it.
        **kwargs: the implementation's options (over the registry's defaults); ``deep_supervision``
            only for networks that support it.

    Returns:
        the network (in training mode, on the CPU, float32).

    Raises:
        ValueError: unknown name, unsupported ``spatial_dims``, deep supervision asked of a network
            without it, or non-positive channel counts.
    """
    kwargs = {**(network_kwargs or {}), **kwargs}
    if int(members) != 1:
        from pipeline.nets.ensemble import ModelEnsemble

        if int(members) < 1:
            raise ValueError(f"members must be >= 1, got {members}")
        nets = [
            build_network(name, spatial_dims, in_channels, out_channels, **kwargs) for _ in range(members)
        ]
        return ModelEnsemble(nets, num_classes=int(out_channels))
    info = network_info(name)
    dims = _resolve_dims(info, spatial_dims)
    if int(in_channels) < 1 or int(out_channels) < 1:
        raise ValueError(f"in_channels and out_channels must be positive, got {in_channels}, {out_channels}")
    if kwargs.get("deep_supervision") and not info.deep_supervision:
        supported = ", ".join(i.name for i in _REGISTRY.values() if i.deep_supervision)
        raise ValueError(f"network {info.name!r} has no deep supervision; networks with it: {supported}")
    if "deep_supervision" in kwargs and not info.deep_supervision:
        kwargs.pop("deep_supervision")  # deep_supervision=False is harmless everywhere
    options = {**info.defaults, **kwargs}
    assert info.builder is not None
    try:
        return info.builder(dims, int(in_channels), int(out_channels), **options)
    except TypeError as error:
        raise TypeError(f"cannot build {info.name!r} with options {sorted(kwargs)}: {error}") from error


def network_stride(name: str, spatial_dims: int | None = None, **kwargs) -> tuple[int, ...]:
    """Total stride of a network per spatial dimension, for the options it would be built with.

    Args:
        name: registry name.
        spatial_dims: as for :func:`build_network`.
        **kwargs: build options that change the stride (``strides`` of MONAI UNet, ``features`` of
            ResU-Net, ``blocks_down`` of SegResNet, ``patch_size`` of Segmenter); others are ignored.

    Returns:
        one stride per spatial dimension; inputs must be multiples of it.
    """
    info = network_info(name)
    dims = _resolve_dims(info, spatial_dims)
    options = {**info.defaults, **kwargs}
    base = info.name if info.name not in _ALIASES else _ALIASES[info.name][0]
    if base == "monaiunet":
        total = [1] * dims
        for s in options["strides"]:
            per_dim = (s,) * dims if isinstance(s, int) else tuple(s)
            total = [t * int(p) for t, p in zip(total, per_dim, strict=True)]
        return tuple(total)
    if base == "resunet":
        return (2 ** (len(options["features"]) - 1),) * dims
    if base == "segresnet":
        return (2 ** (len(options["blocks_down"]) - 1),) * dims
    if base == "segmenter":
        return (int(options.get("patch_size", info.stride)),) * dims
    return (info.stride,) * dims


def pad_to_stride(
    x: torch.Tensor, stride: int | Sequence[int], mode: str = "constant", value: float = 0.0
) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Pad a batch ``(B, C, *spatial)`` symmetrically up to multiples of ``stride`` with MONAI's
    ``DivisiblePad``.

    Args:
        x: the batch.
        stride: one int for every spatial dimension, or one per dimension.
        mode: padding mode (``"constant"``, ``"reflect"``, ``"replicate"``).
        value: fill value for ``"constant"``.

    Returns:
        the padded batch (a plain tensor) and the index that crops a network output back: ``out[crop]``.

    Raises:
        ValueError: ``stride`` has another number of dimensions than ``x``'s spatial ones.
    """
    spatial = tuple(x.shape[2:])
    strides = (int(stride),) * len(spatial) if isinstance(stride, int) else tuple(int(s) for s in stride)
    if len(strides) != len(spatial):
        raise ValueError(
            f"stride {stride} does not match the {len(spatial)} spatial dimensions of {tuple(x.shape)}"
        )
    fill = {"value": value} if mode == "constant" else {}
    padder = DivisiblePad(k=strides, mode=mode, method="symmetric", **fill)
    widths = padder.compute_pad_width(spatial)[1:]  # (before, after) per spatial dimension
    crop = (slice(None), slice(None), *(slice(b, b + n) for (b, _), n in zip(widths, spatial, strict=True)))
    if not any(b or a for b, a in widths):
        return x, crop
    # B and C as MONAI's one channel dimension; back to (B, C, *padded) as a plain tensor
    padded = convert_to_tensor(padder(x.reshape(-1, *spatial)), track_meta=False)
    return padded.reshape(*x.shape[:2], *padded.shape[1:]), crop


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_gmacs(model: nn.Module, input_shape: Sequence[int]) -> float:
    """Multiply-accumulates (GMAC = FLOPs / 2, per ``torch.utils.flop_counter``) of one eval forward.

    Args:
        model: the network (its mode is restored afterwards).
        input_shape: full input shape, batch included (GMACs are for that whole batch).
    """
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        parameter = next(model.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        x = torch.zeros(tuple(input_shape), device=device)
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(x)
        return counter.get_total_flops() / 2e9
    finally:
        model.train(was_training)
