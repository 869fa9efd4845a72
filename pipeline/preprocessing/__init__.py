"""Preprocessing: the MONAI transforms between a case as it is read and the network's input, one concern per
module (:mod:`pipeline.transforms` composes them into the chains).

- :mod:`~pipeline.preprocessing.loading`: a case into MetaTensors (a raw Kaggle patient folder, the prepared
  volumes, the dispatch by input form).
- :mod:`~pipeline.preprocessing.scan_chain`: a user's scans as the model's input, one MONAI step per job.
- :mod:`~pipeline.preprocessing.registration`: the other sequences onto the FLAIR's grid.
- :mod:`~pipeline.preprocessing.model_grid`: the model's grid in physical space, and the way back.
- :mod:`~pipeline.preprocessing.intensity`: intensity normalisation on the brain voxels.
- :mod:`~pipeline.preprocessing.augmentations`: the training augmentations.
- :mod:`~pipeline.preprocessing.components`: connected components of a mask or a probability.

The modules load on first use: importing this package imports none of them.
"""
