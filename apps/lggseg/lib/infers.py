"""The inference task: the bundle's ``inference.json`` (preprocessing, inferer, post-processing) behind MONAI
Label's ``BasicInferTask``.

MONAI Label hands the task ``data["image"]``, the path of the study (``<studies>/<id>.nii.gz``, a folder study
``<studies>/<id>/``: a scan case folder read through :func:`pipeline.ingestion.scans.find_scan_case`, or the
temporary file of an uploaded image). The bundle's ``preprocessing`` (``build_transforms("infer")``: load,
normalise) reads that path as ``(3, H, W, D)``; its ``inferer`` gives the tumour probability
``(1, H, W, D)``; its ``post_transforms`` (threshold, connected components; the ``writer`` is left out)
make it binary; then MONAI's ``SqueezeDimd`` and ``CastToTyped`` give the ``(H, W, D)`` uint8 label that
MONAI Label's writer saves with the study's affine (NIfTI, or NRRD when the client asks, as Slicer does).

An empty mask is never the answer to an input or a model that cannot give one: NaN or infinite values in the
preprocessed image (they spread through the normalisation to the whole volume) are the client's error (422),
NaN or infinite values in the network's output the model's (503, like weights that cannot be loaded).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import numpy as np
import torch
from fastapi import HTTPException
from monai.transforms import CastToTyped, SqueezeDimd
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from lib.model_files import AppPaths, CachedNetwork, ModelFileError, read_bundle_config
from pipeline.config import resolve_device
from pipeline.engines import innermost_error
from pipeline.ingestion.cases import find_cases
from pipeline.ingestion.scans import find_scan_case

logger = logging.getLogger(__name__)

LABELS = {"flair_abnormality": 1}
NUM_CHANNELS = 3
RESULT_EXTENSION = ".nii.gz"  # a folder study's label, unless the client asks for another type


class LGGSegInfer(BasicInferTask):
    """Segment the FLAIR abnormality of a 3-channel LGG study with the bundle's network.

    Args:
        paths: the bundle and weight files (the fine-tuned weights are preferred when present).
        device: ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda[:i]"``; every request runs there.
    """

    def __init__(self, paths: AppPaths, device: str = "auto") -> None:
        super().__init__(
            path=[str(paths.base_model), str(paths.finetuned_model)],  # last existing one wins
            network=None,
            type=InferType.SEGMENTATION,
            labels=LABELS,
            dimension=3,
            description="FLAIR abnormality (lower-grade glioma) from pre-contrast, FLAIR and post-contrast "
            "MRI, with the lggseg bundle",
            load_strict=True,
        )
        self.paths = paths
        self.device_name = device
        self.device = resolve_device(device)
        self._config["device"] = [str(self.device)]
        self._parser_lock = threading.Lock()
        self._parser: Any = None
        self.network = None  # set by BasicInferTask; weights come from CachedNetwork only
        self.cached = CachedNetwork(lambda: self.bundle_item("network_def", lazy=False), paths)

    def bundle_item(self, key: str, lazy: bool = True) -> Any:
        """An object of the bundle's ``inference.json`` (``lazy=False``: a new instance).

        Args:
            key: ``"preprocessing"``, ``"inferer"``, ``"post_transforms"`` or ``"network_def"``.
            lazy: reuse the object parsed before.

        Returns:
            the instantiated object.
        """
        with self._parser_lock:
            if self._parser is None:
                self._parser = read_bundle_config(self.paths, "inference.json", self.device_name)
            return self._parser.get_parsed_content(key, lazy=lazy)

    def is_valid(self) -> bool:
        """Listed by ``/info/`` when a weight file exists."""
        return self.paths.current_model() is not None

    def pre_transforms(self, data: Any = None) -> list:
        return [self.bundle_item("preprocessing")]

    def run_pre_transforms(self, data: dict[str, Any], transforms: Any) -> dict[str, Any]:
        """Run the bundle's preprocessing; an unreadable or wrong image is the client's error (422)."""
        name = data.get("image_path") or data.get("image")
        try:
            image = data.get("image")
            if isinstance(image, str) and os.path.isdir(image):  # a folder study: the user's scan case folder
                data = {**data, **find_scan_case(image)}
                # MONAI Label's writer takes the result's file type from the image's name: none for a folder
                data["result_extension"] = data.get("result_extension") or RESULT_EXTENSION
            elif isinstance(image, str):  # a study file: a prepared volume, or a FLAIR alone (3D)
                data = {**data, **find_cases(image)[0]}
            data = super().run_pre_transforms(data, transforms)
        except Exception as error:  # noqa: BLE001 - whatever the reader raises, the image is unusable
            cause = innermost_error(error)
            raise HTTPException(
                status_code=422, detail=f"cannot read the image {name}: {type(cause).__name__}: {cause}"
            ) from error
        image = data[self.input_key]
        bad = int(image.numel() - torch.isfinite(torch.as_tensor(image)).sum())
        if bad:
            raise HTTPException(
                status_code=422,
                detail=f"the image {name} holds {bad} NaN or infinite values after preprocessing (NaN or "
                "infinite voxels in the file); the model needs numbers",
            )
        if image.ndim != 4 or image.shape[0] != NUM_CHANNELS:
            raise HTTPException(
                status_code=422,
                detail=f"the image {name} has shape {tuple(image.shape)} after loading; expected "
                f"({NUM_CHANNELS}, H, W, D): pre-contrast, FLAIR, post-contrast (see `lggseg studies`)",
            )
        return data

    def inferer(self, data: Any = None) -> Any:
        return self.bundle_item("inferer")

    def _get_network(self, device: Any, data: Any) -> torch.nn.Module:
        network, _ = self._network_and_info()
        return network

    def _network_and_info(self) -> tuple[torch.nn.Module, dict[str, Any]]:
        try:
            return self.cached.get(self.device)
        except ModelFileError as error:
            raise HTTPException(status_code=503, detail=f"model unavailable: {error}") from error

    def run_inferer(self, data: dict[str, Any], convert_to_batch: bool = True, device: Any = "cuda") -> dict:
        """The bundle's inferer on the whole volume, on the app's device (the request's device is ignored)."""
        network, info = self._network_and_info()
        image = data[self.input_key]
        with torch.no_grad():
            pred = self.inferer(data)(image[None].to(self.device), network)[0]
        if not bool(torch.isfinite(pred).all()):
            raise HTTPException(
                status_code=503,
                detail=f"model unavailable: {info.get('model_file')} gives NaN or infinite values on a "
                "finite image (damaged or diverged weights?); replace the model file",
            )
        data[self.output_label_key] = pred.to("cpu")
        data[self.output_json_key] = {**data.get(self.output_json_key, {}), **info}
        return data

    def post_transforms(self, data: Any = None) -> list:
        key = self.output_label_key
        return [
            self.bundle_item("post_transforms"),
            SqueezeDimd(keys=key, dim=0),
            CastToTyped(keys=key, dtype=np.uint8),
        ]
