"""MONAI Label app for lggseg: segment LGG studies in 3D Slicer with the project's bundle, correct, fine-tune.

Start it from the repository root (see the README's "3D Slicer and MONAI Label")::

    .venv/bin/python -m monailabel.main start_server --app apps/lggseg --studies STUDIES \
        --host 127.0.0.1 --port 8000

Options (``--conf KEY VALUE``, all optional):

- ``bundle``: the MONAI Bundle folder (default: the repository's ``bundle/``);
- ``model``: the base weights (default: ``<bundle>/models/model.pt``; never written by the app);
- ``model_dir``: where fine-tuning publishes ``model.pt`` (default: ``apps/lggseg/model``); inference
  prefers that file when it exists;
- ``device``: ``auto`` (default: CUDA when present), ``cpu`` or ``cuda[:i]``;
- ``epochs``, ``learning_rate``: fine-tuning defaults (5, 1e-4; a training request may override them).

Tasks: the model ``lggseg`` (inference and fine-tuning), the strategies ``first`` and ``random`` (first or
random study without a final label). No module that imports torchvision is imported (``torchvision`` has
no working CPU build here): only MONAI Label's ``BasicInferTask``, ``TrainTask``, the local datastore and
the two plain strategies are used. Requests MONAI Label would answer with 500 (unknown model, unknown or
unreadable image) or act on unsafely (``../x`` upload names, any label file) are answered with 4xx here:
see :mod:`lib.datastore` and :meth:`LGGSegApp.infer`.
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any

from fastapi import HTTPException
from lib.datastore import CheckedDatastore, check_image_file
from lib.infers import LABELS, LGGSegInfer
from lib.model_files import AppPaths
from lib.trainers import LGGSegTrain
from monailabel.config import settings
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random

import pipeline

logger = logging.getLogger(__name__)

MODEL_NAME = "lggseg"


class LGGSegApp(MONAILabelApp):
    """The lggseg MONAI Label app (module docstring).

    Args:
        app_dir: this folder.
        studies: the studies folder (``lggseg studies`` writes one).
        conf: the ``--conf`` options.
    """

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        conf = dict(conf or {})
        self.paths = AppPaths.from_conf(app_dir, conf)
        self.device = conf.get("device", "auto")
        self.epochs = int(conf.get("epochs", 5))
        self.learning_rate = float(conf.get("learning_rate", 1e-4))
        logger.info(
            "lggseg app: bundle %s, base model %s, fine-tuned model %s, device %s",
            self.paths.bundle,
            self.paths.base_model,
            self.paths.finetuned_model,
            self.device,
        )
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="lggseg",
            description="LGG FLAIR-abnormality segmentation (MONAI Bundle of the lggseg project)",
            version=pipeline.__version__,
            labels=LABELS,
        )

    def init_datastore(self) -> Datastore:
        """The local studies folder, with the checks of :class:`lib.datastore.CheckedDatastore`."""
        if self.studies.startswith(("http://", "https://")):
            raise ValueError(f"{self.studies}: the lggseg app serves a local studies folder only")
        return CheckedDatastore(
            self.studies,
            extensions=("*.nii.gz", "*.nii"),
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def init_infers(self) -> dict[str, InferTask]:
        return {MODEL_NAME: LGGSegInfer(self.paths, self.device)}

    def init_trainers(self) -> dict[str, TrainTask]:
        return {MODEL_NAME: LGGSegTrain(self.paths, self.device, self.epochs, self.learning_rate)}

    def init_strategies(self) -> dict[str, Strategy]:
        return {"first": First(), "random": Random()}

    def _check_model(self, model: Any, tasks: dict[str, Any]) -> None:
        if model not in tasks:
            known = ", ".join(sorted(tasks)) or "none"
            raise HTTPException(status_code=404, detail=f"unknown model {model!r}; this server has: {known}")

    def infer(self, request: dict[str, Any], datastore: Datastore | None = None) -> dict[str, Any]:
        """Run the model on a study id or an uploaded file; 404 for an unknown model or image, 422 for an
        unreadable uploaded image (an unreadable study: see :class:`lib.infers.LGGSegInfer`).

        A path on the server is accepted only when it is an uploaded file in the temporary folder (that is
        where MONAI Label puts a file sent with the request); any other image must be a study id.
        """
        self._check_model(request.get("model"), self._infers)
        image = request.get("image")
        store = datastore or self.datastore()
        if isinstance(image, str):
            if image in store.list_images():
                pass
            elif os.path.isfile(image) and os.path.dirname(os.path.realpath(image)) == os.path.realpath(
                tempfile.gettempdir()
            ):
                check_image_file(image)
            else:
                raise HTTPException(status_code=404, detail=f"image {image!r} is not in the datastore")
        return super().infer(request, datastore)

    def bundle_path(self, model: Any) -> None:
        """MONAI Label asks this before starting a training task: refuse an unknown model there (404)."""
        if model is not None:
            self._check_model(model, {**self._trainers, **self._infers})
        return None
