"""The inference task: the bundle's ``inference.json`` (preprocessing, inferer, post-processing) behind MONAI
Label's ``BasicInferTask``.

MONAI Label hands the task ``data["image"]``, the path of the study (``<studies>/<id>.nii.gz``, a folder study
``<studies>/<id>/``: a scan case folder read through :func:`pipeline.ingestion.scan_cases.find_scan_case`, or
the temporary file of an uploaded image). The bundle's ``preprocessing`` (``build_transforms("infer")``: load,
normalise) reads that path as ``(3, H, W, D)``; its ``inferer`` gives the tumour probability
``(1, H, W, D)``; its ``post_transforms`` (threshold, connected components; the ``writer`` is left out)
make it binary; then MONAI's ``SqueezeDimd`` and ``CastToTyped`` give the ``(H, W, D)`` uint8 label that
MONAI Label's writer saves with the study's affine (NIfTI, or NRRD when the client asks, as Slicer does).

An empty mask is never the answer to an input or a model that cannot give one: NaN or infinite values in the
preprocessed image (they spread through the normalisation to the whole volume) are the client's error (422),
NaN or infinite values in the network's output the model's (503, like weights that cannot be loaded).

A study is read from a private copy (:func:`lib.confined.snapshot`, made in the server's private temporary
folder and removed once loaded): a study file, or any file of a folder study, that leads outside the studies
folder, through a link present at start or swapped in later, is 403 and never read. The network comes from
:class:`lib.model_files.CachedNetwork` (strict loading), never from MONAI Label's own loader
(:class:`lib.monailabel_adapter.InferTaskAdapter`).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import HTTPException
from monai.transforms import CastToTyped, SqueezeDimd
from monailabel.interfaces.tasks.infer_v2 import InferType

from lib.confined import snapshot
from lib.datastore import read_errors, scratch_folder
from lib.model_files import AppPaths, CachedNetwork, ModelFileError, read_bundle_config
from lib.monailabel_adapter import InferTaskAdapter
from lib.server import is_upload
from pipeline.config import resolve_device
from pipeline.engines import innermost_error
from pipeline.ingestion.cases import find_cases
from pipeline.ingestion.errors import LGGDataError
from pipeline.ingestion.scan_cases import find_scan_case
from pipeline.ingestion.sequences import CHANNEL_NAMES
from pipeline.ingestion.volume_checks import check_image_volume, count_non_finite

logger = logging.getLogger(__name__)

LABELS = {"flair_abnormality": 1}
RESULT_EXTENSION = ".nii.gz"  # a folder study's label, unless the client asks for another type


class LGGSegInfer(InferTaskAdapter):
    """Segment the FLAIR abnormality of a 3-channel LGG study with the bundle's network.

    Args:
        paths: the bundle and weight files (the fine-tuned weights are preferred when present).
        device: ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda[:i]"``; every request runs there.
        studies: the studies folder: a study is read only inside it, from a private copy (module
            docstring); ``None`` (a direct call, as in the tests) reads the path it is given.
    """

    def __init__(
        self, paths: AppPaths, device: str = "auto", studies: str | os.PathLike | None = None
    ) -> None:
        resolved = resolve_device(device)
        super().__init__(
            path=[str(paths.base_model), str(paths.finetuned_model)],  # last existing one wins
            network=None,
            type=InferType.SEGMENTATION,
            labels=LABELS,
            dimension=3,
            description="FLAIR abnormality (lower-grade glioma) from pre-contrast, FLAIR and post-contrast "
            "MRI, with the lggseg bundle",
            config={"device": [str(resolved)]},
            load_strict=True,
        )
        self.paths = paths
        self.device_name = device
        self.device = resolved
        self.studies = Path(os.path.realpath(studies)) if studies is not None else None
        self.parser_lock = threading.Lock()
        self.parser: Any = None
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
        with self.parser_lock:
            if self.parser is None:
                self.parser = read_bundle_config(self.paths, "inference.json", self.device_name)
            return self.parser.get_parsed_content(key, lazy=lazy)

    def is_valid(self) -> bool:
        """Listed by ``/info/`` when a weight file exists."""
        return self.paths.current_model() is not None

    def info(self) -> dict[str, Any]:
        """MONAI Label's model info, with ``model_version``: the version of the weights in use (the bundle's,
        written into the shipped model file; a fine-tuned file's ends in ``+finetuned``), not the package's
        (the app's own ``version``)."""
        return {**super().info(), "model_version": self.cached.version()}

    def pre_transforms(self, data: Any = None) -> list:
        return [self.bundle_item("preprocessing")]

    def run_pre_transforms(self, data: dict[str, Any], transforms: Any) -> dict[str, Any]:
        """Run the bundle's preprocessing on the study (a private copy of it, read inside the studies
        folder: 403 otherwise) or on the uploaded file; an unreadable or wrong image is the client's error
        (422)."""
        image = data.get("image")
        if not isinstance(image, str) or is_upload(image) or self.studies is None:
            return self.load(data, transforms)
        name = os.path.basename(image)
        with scratch_folder() as scratch:
            with read_errors(f"image {name!r}"):
                copy = snapshot(self.studies, image, scratch, name)
            return self.load({**data, "image": str(copy)}, transforms)

    def load(self, data: dict[str, Any], transforms: Any) -> dict[str, Any]:
        """The bundle's preprocessing on ``data["image"]``: a folder (a user's scan case folder), a prepared
        study or a FLAIR alone (3D), read as ``lggseg infer`` reads them; then the input must be 3 channels
        of numbers (:func:`pipeline.ingestion.volume_checks.check_image_volume`).

        Raises:
            HTTPException: 422 unreadable image, another shape, or NaN or infinite values.
        """
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
        try:  # NaN or infinite values spread through the normalisation: the file held some
            check_image_volume(data[self.input_key], f"the image {name} after preprocessing", CHANNEL_NAMES)
        except LGGDataError as error:
            raise HTTPException(status_code=422, detail=f"{error} (see `lggseg studies`)") from None
        return data

    def inferer(self, data: Any = None) -> Any:
        return self.bundle_item("inferer")

    def network_for(self, device: Any) -> torch.nn.Module:
        """The bundle's network with the current weights (:class:`lib.model_files.CachedNetwork`)."""
        network, _ = self.network_and_info()
        return network

    def network_and_info(self) -> tuple[torch.nn.Module, dict[str, Any]]:
        """The network on the app's device and ``{"model_file", "model_mtime", "model_version"}`` (in every
        result's parameters); 503 when unavailable."""
        try:
            return self.cached.get(self.device)
        except ModelFileError as error:
            raise HTTPException(status_code=503, detail=f"model unavailable: {error}") from error

    def run_inferer(self, data: dict[str, Any], convert_to_batch: bool = True, device: Any = "cuda") -> dict:
        """The bundle's inferer on the whole volume, on the app's device (the request's device is ignored)."""
        network, info = self.network_and_info()
        image = data[self.input_key]
        with torch.no_grad():
            pred = self.inferer(data)(image[None].to(self.device), network)[0]
        if count_non_finite(pred):
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
            QualityInResult(self.output_json_key),
            SqueezeDimd(keys=key, dim=0),
            CastToTyped(keys=key, dtype=np.uint8),
        ]


class QualityInResult:
    """Copy the post-processing's quality estimate (``qc_score``, ``review``, ``qc_flags``, ``qc_point``:
    :mod:`pipeline.inference.quality`) into the result's parameters, which 3D Slicer's MONAI Label module
    shows beside the label.

    Args:
        json_key: the task's result key (``BasicInferTask.output_json_key``).
    """

    def __init__(self, json_key: str) -> None:
        self.json_key = json_key

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        from pipeline.inference.quality import QC_KEY

        quality = data.get(QC_KEY)
        if quality:
            data[self.json_key] = {**data.get(self.json_key, {}), **quality}
        return data
