"""Post-processing of the whole-volume probability: threshold and connected-component filters."""

from __future__ import annotations

from monai.transforms import AsDiscreted, Compose

from pipeline.transforms import ConnectedComponentFilterd


def build_postprocessing(threshold: float = 0.5, keep_largest: int = 0, min_size: int = 0) -> Compose:
    """Post-processing of the decollated evaluator output: probability -> binary mask.

    Args:
        threshold: tumour when the (averaged) probability is above this.
        keep_largest: keep the N largest 3D connected components (Buda et al. keep 1; 0: off).
        min_size: drop 3D connected components smaller than this many voxels (0: off).

    Returns:
        a ``Compose`` acting on the ``"pred"`` key.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    return Compose(
        [
            AsDiscreted(keys="pred", threshold=threshold),
            ConnectedComponentFilterd(keys="pred", keep_largest=keep_largest, min_size=min_size),
        ]
    )
