"""Drawing, as MONAI keeps it in ``monai/visualize/``: what training, inference and evaluation all draw with.

- :mod:`~pipeline.visualize.overlays`: the overlay colours (truth in green, prediction in red), the display
  window of a grey slice, outlines of a mask on a slice (an RGB array for TensorBoard, a contour on a
  matplotlib axis for the report's figures and the QC picture).
- :mod:`~pipeline.visualize.figures`: a matplotlib figure written as a PNG, atomically.

Below training, inference and evaluation, above :mod:`pipeline.safety` only (see ``ARCHITECTURE.md``). The
modules load on first use: importing this package imports none of them (nor matplotlib).
"""
