"""lggseg: volumetric LGG FLAIR-abnormality segmentation on MONAI.

Modules (arrows point down only, see ``DESIGN.md`` in the shared docs):

- ``pipeline.cli``: the ``lggseg`` command (face).
- ``pipeline.engines``: Ignite trainer/evaluator, inferers, handlers (floor 3).
- ``pipeline.transforms``: MONAI dictionary transforms and composed chains (floor 2).
- ``pipeline.data``: raw Kaggle folders -> validated volumes, NIfTI, datalist, folds (floor 1).
- ``pipeline.networks``: the network registry (floor 1).
- ``pipeline.metrics`` / ``pipeline.report``: per-patient 3D metrics, reports and plots (floor 1).
- ``pipeline.synthetic``: the built-in synthetic LGG-like data set (floor 1).
"""

__version__ = "0.1.0"
