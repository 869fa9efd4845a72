"""Post-processing of the whole-volume probability: threshold and connected-component filters."""

from __future__ import annotations

from typing import Any

from monai.transforms import AsDiscreted, Compose, Invertd, KeepLargestConnectedComponentd

from pipeline.preprocessing.components import RemoveSmallComponentsd


def build_postprocessing(
    threshold: float = 0.5, keep_largest: int = 0, min_size: int = 0, preprocessing: Any = None
) -> Compose:
    """Post-processing of the decollated evaluator output: probability -> binary mask.

    Args:
        threshold: tumour when the (averaged) probability is above this.
        keep_largest: keep the N largest 3D connected components (Buda et al. keep 1; 0: off), with MONAI's
            ``KeepLargestConnectedComponentd`` (full connectivity: 26 neighbours).
        min_size: drop 3D connected components smaller than this many voxels (0: off), with
            :class:`pipeline.transforms.RemoveSmallComponentsd` (full connectivity).
        preprocessing: the cases' transform chain; when given, the probability (and the model's input, for
            the QC picture) is first mapped back onto each case's own grid by MONAI ``Invertd`` (the inverse
            of its invertible steps: the model grid of
            :class:`pipeline.preprocessing.model_grid.ToModelGridd`), then thresholded there.

    Returns:
        a ``Compose`` acting on the ``"pred"`` key.

    Raises:
        ValueError: ``threshold`` outside (0, 1).
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    xforms: list = []
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
