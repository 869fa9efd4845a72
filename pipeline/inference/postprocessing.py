"""Post-processing of the whole-volume probability: artefact components, the quality estimate, the way back
onto the case's grid, threshold and connected-component filters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from monai.transforms import AsDiscreted, Compose, Invertd, KeepLargestConnectedComponentd

from pipeline.inference.quality import QualityEstimated
from pipeline.preprocessing.components import FilterComponentsd, RemoveSmallComponentsd


def build_postprocessing(
    threshold: float = 0.5,
    keep_largest: int = 0,
    min_size: int = 0,
    preprocessing: Any = None,
    edge_components: int = 0,
    min_mass_fraction: float = 0.0,
    quality: Mapping[str, Any] | None = None,
) -> Compose:
    """Post-processing of the decollated evaluator output: probability -> binary mask, in this order:

    1. on the model's grid: :class:`pipeline.inference.quality.QualityEstimated` (``qc``: the quality score
       and flags of the mask to come; an ensemble's member channels taken off), then
       :class:`~pipeline.preprocessing.components.FilterComponentsd` (components confined to the outermost
       ``edge_components`` slices, and components under ``min_mass_fraction`` of the largest's probability
       mass, are removed from the probability);
    2. with ``preprocessing``: MONAI ``Invertd`` maps the probability (and the model's input, for the QC
       picture) back onto each case's own grid (the inverse of the model grid of
       :class:`pipeline.preprocessing.model_grid.ToModelGridd`);
    3. the threshold, then MONAI's ``KeepLargestConnectedComponentd`` (``keep_largest``) and
       :class:`pipeline.preprocessing.components.RemoveSmallComponentsd` (``min_size``).

    Args:
        threshold: tumour when the (averaged) probability is above this.
        keep_largest: keep the N largest 3D connected components (Buda et al. keep 1; 0: off), with MONAI's
            ``KeepLargestConnectedComponentd`` (full connectivity: 26 neighbours).
        min_size: drop 3D connected components smaller than this many voxels (0: off).
        preprocessing: the cases' transform chain (see 2).
        edge_components: see 1 (0: off).
        min_mass_fraction: see 1 (0: off).
        quality: the model's quality calibration (:data:`pipeline.inference.quality.QUALITY_KEY`).

    Returns:
        a ``Compose`` acting on the ``"pred"`` key (and writing ``"qc"``).

    Raises:
        ValueError: ``threshold`` outside (0, 1).
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    components = FilterComponentsd("pred", threshold, int(edge_components), float(min_mass_fraction))
    xforms: list = [
        QualityEstimated("pred", "image", threshold, keep_largest, quality, components),
        components,
    ]
    if preprocessing is not None:
        xforms.append(
            Invertd(
                keys=["pred", "image"],
                transform=preprocessing,
                orig_keys="image",
                nearest_interp=False,
                to_tensor=True,
                allow_missing_keys=True,
            )
        )
    xforms.append(AsDiscreted(keys="pred", threshold=threshold))
    if keep_largest:
        xforms.append(KeepLargestConnectedComponentd(keys="pred", num_components=keep_largest))
    if min_size:
        xforms.append(RemoveSmallComponentsd(keys="pred", min_size=min_size))
    return Compose(xforms)
