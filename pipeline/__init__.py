"""lggseg: volumetric LGG FLAIR-abnormality segmentation on MONAI.

Modules (arrows point down only, see ``DESIGN.md`` in the shared docs):

- faces: ``pipeline.cli`` (the ``lggseg`` command; one module per group of sub-commands).
- floor 3: ``pipeline.engines`` (Ignite trainer/evaluator, train/evaluate/infer/cross-validate) with its
  helpers ``losses``, ``optim``, ``inference`` (slice/sliding-window inferer, TTA), ``checkpoint`` and
  ``handlers``.
- floor 2: ``pipeline.transforms`` (MONAI dictionary transforms, the raw-folder loader, composed chains).
- floor 1: ``pipeline.data`` (raw Kaggle folders -> validated volumes, NIfTI, datalist, folds),
  ``pipeline.networks`` (the registry) with the custom architectures beside it (``unext``, ``unet``,
  ``resunet``, ``unetplusplus``, ``deeplab``, ``segmenter``, ``fcn``, ``hrnet``; ``unext_reference`` is the
  public design, for benchmarks and weight loading), ``pipeline.metrics`` and ``pipeline.report``
  (per-patient 3D metrics, report, plots), ``pipeline.synthetic`` (the built-in synthetic data set).
"""

__version__ = "0.1.0"
