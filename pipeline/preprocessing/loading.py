"""Loading a case into MetaTensors: the data set's volumes, and the dispatch by input form.

- :class:`LoadLGGPatient` / :class:`LoadLGGPatientd`: a raw Kaggle patient folder, read and checked as
  ``lggseg prepare`` reads it;
- :class:`LoadDataSetVolumed`: a prepared NIfTI image/label pair or a raw Kaggle patient folder;
- :class:`LoadVolumed`: any case, through the loader its input form names
  (:mod:`pipeline.ingestion.forms`): the chains' one loading step.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImage, MapTransform, Transform

from pipeline.ingestion.forms import loader_for
from pipeline.ingestion.kaggle import read_patient_folder
from pipeline.ingestion.sequences import CHANNEL_NAMES
from pipeline.ingestion.volume_checks import (
    check_image_volume,
    check_nifti_header,
    check_regular_file,
    unreadable_data,
)
from pipeline.preprocessing.scan_chain import SCAN_META

__all__ = ["IMAGE_KEY", "LABEL_KEY", "LoadDataSetVolumed", "LoadLGGPatient", "LoadLGGPatientd", "LoadVolumed"]

IMAGE_KEY = "image"
LABEL_KEY = "label"
NIFTI_HEADER_KEY = SCAN_META["nifti_header"]  # the input image's NIfTI header, hex


class LoadLGGPatient(Transform):
    """Load a raw Kaggle patient folder as channel-first 3D ``MetaTensor`` image and label.

    It reads through :func:`pipeline.ingestion.kaggle.read_patient_folder`, the same validated reader as
    ``lggseg prepare``, so the result equals ``LoadImage(ensure_channel_first=True)`` of the prepared NIfTI
    files: image ``(3, H, W, D)``, label ``(1, H, W, D)`` (values 0/1), the same affine and dtype.

    Args:
        spacing: voxel size in mm (row, column, slice) for the affine.
        dtype: data type of both outputs (``LoadImage``'s default, float32).
    """

    def __init__(self, spacing: Sequence[float] = (1.0, 1.0, 1.0), dtype: Any = np.float32) -> None:
        self.spacing = tuple(float(s) for s in spacing)
        self.dtype = dtype

    def __call__(self, folder: str | os.PathLike) -> tuple[MetaTensor, MetaTensor]:
        """Return ``(image, label)`` of the patient folder; raises ``LGGDataError`` on bad input."""
        volume = read_patient_folder(folder, self.spacing)
        affine = torch.as_tensor(volume.affine, dtype=torch.float64)
        outputs = []
        for array in (volume.image, volume.label):
            meta = {
                "filename_or_obj": str(folder),
                "patient": volume.patient_id,
                "institution": volume.institution,
                "original_channel_dim": 0,
                "spatial_shape": np.asarray(array.shape[1:]),
                "original_affine": volume.affine.copy(),
                "space": "RAS",
            }
            tensor = torch.from_numpy(array.astype(self.dtype))
            outputs.append(MetaTensor(tensor, affine=affine.clone(), meta=meta))
        return outputs[0], outputs[1]


class LoadLGGPatientd(MapTransform):
    """Dictionary wrapper of :class:`LoadLGGPatient`: train straight from raw Kaggle patient folders.

    The first key holds the patient folder and receives the image; the second key (if any) receives the
    label read from the same folder, whatever it held before (e.g. nothing, or the folder again).

    Example::

        LoadLGGPatientd(keys=("image", "label"))({"image": "kaggle_3m/TCGA_CS_4941_19960909"})

    Args:
        keys: ``(image_key, label_key)`` or just ``image_key``.
        spacing: voxel size in mm (row, column, slice).
        dtype: data type of the outputs.
        allow_missing_keys: don't raise when the label key is absent from ``keys``' data.
    """

    def __init__(
        self,
        keys: KeysCollection = (IMAGE_KEY, LABEL_KEY),
        spacing: Sequence[float] = (1.0, 1.0, 1.0),
        dtype: Any = np.float32,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) > 2:
            raise ValueError(f"LoadLGGPatientd takes an image key and an optional label key, got {self.keys}")
        self.loader = LoadLGGPatient(spacing, dtype)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image_key = self.keys[0]
        image, label = self.loader(d[image_key])
        d[image_key] = image
        if len(self.keys) == 2:
            d[self.keys[1]] = label
        return d


class LoadDataSetVolumed(MapTransform):
    """Load a case of the data set's own forms: a NIfTI image/label pair, or a raw Kaggle patient folder given
    as ``image``.

    A NIfTI file goes through ``LoadImage(ensure_channel_first=True)``; a folder goes through
    ``LoadLGGPatientd`` (the raw-folder loader). Both give ``image (3, H, W, D)``, ``label (1, H, W, D)``.
    Each input is checked here, a problem failing the case in one line that names the file
    (:mod:`pipeline.ingestion.volume_checks`): not a regular file, an unreadable or truncated NIfTI file, an
    image whose channels are not the model's three (:data:`pipeline.ingestion.sequences.CHANNEL_NAMES`), fewer
    than 2 slices, NaN or Inf voxels; a missing file is a ``FileNotFoundError``. A NIfTI image's header is
    carried in its metadata (:data:`NIFTI_HEADER_KEY`), so the mask is written with it.

    Args:
        keys: image and (optional) label keys.
        allow_missing_keys: don't raise when the label is missing (inference).
    """

    def __init__(
        self, keys: KeysCollection = (IMAGE_KEY, LABEL_KEY), allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.nifti = LoadImage(reader="NibabelReader", ensure_channel_first=True, image_only=True)
        self.folder = LoadLGGPatientd(self.keys)

    def _load_nifti(self, key: Hashable, path: str | os.PathLike) -> Any:
        if not os.path.exists(path):
            raise FileNotFoundError(f"{key} file not found: {path}")
        check_regular_file(path, f"{key} file")  # a named pipe would block the reader forever
        header = check_nifti_header(path).header
        try:
            image = self.nifti(path)
        except (EOFError, OSError, ValueError, RuntimeError, zlib.error) as error:
            raise unreadable_data(path, error) from None  # the one line says it all (innermost_error)
        image.meta[NIFTI_HEADER_KEY] = bytes(header.binaryblock).hex()
        return image

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image = d.get(IMAGE_KEY)
        if isinstance(image, (str, os.PathLike)) and os.path.isdir(image):
            d = self.folder(d)
        else:
            for key in self.key_iterator(d):
                if isinstance(d[key], (str, os.PathLike)):
                    d[key] = self._load_nifti(key, d[key])
        if isinstance(image, (str, os.PathLike)) and IMAGE_KEY in self.keys:
            check_image_volume(d[IMAGE_KEY], image, CHANNEL_NAMES)
        return d


class LoadVolumed(MapTransform):
    """Load any case: the loader of its input form (:func:`pipeline.ingestion.forms.loader_for`: the data
    set's volumes with :class:`LoadDataSetVolumed`, a user's scans with
    :class:`pipeline.preprocessing.scan_chain.LoadScansd`), built once per form.

    Args:
        keys: image and (optional) label keys.
        allow_missing_keys: don't raise when the label is missing (inference).
        register: scan cases: rigidly register the other sequences onto the FLAIR when that helps.
    """

    def __init__(
        self,
        keys: KeysCollection = (IMAGE_KEY, LABEL_KEY),
        allow_missing_keys: bool = False,
        register: bool = True,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.register = register
        self.loaders: dict[type, MapTransform] = {}

    def _loader(self, cls: type) -> MapTransform:
        if cls not in self.loaders:
            if cls.__name__ == "LoadScansd":
                self.loaders[cls] = cls(IMAGE_KEY, register=self.register)
            else:
                self.loaders[cls] = cls(self.keys, allow_missing_keys=self.allow_missing_keys)
        return self.loaders[cls]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        return self._loader(loader_for(data))(data)
