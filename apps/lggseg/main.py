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
- ``epochs``, ``learning_rate``: fine-tuning defaults (5, 1e-4; a training request may override them);
- ``max_upload_mb``: the largest request body, an uploaded image or label (default 512; larger: 413);
- ``max_voxels``: the most voxels an uploaded volume may hold once decompressed (default 512 x 512 x 512 x 4;
  more: 413, checked on the NIfTI header before anything is decompressed).

Studies: NIfTI files (a prepared ``(H, W, D, 3)`` volume or a FLAIR alone) and folders of a user's own scans
(a scan case folder, id = its name: :mod:`lib.scan_studies`); ``GET /datastore/image`` serves a folder
study's FLAIR as NIfTI (:meth:`LGGSegApp.download_image`); fine-tuning trains on every kind of study with
the input the inference uses (:mod:`lib.training_inputs`). Every read of a study or a label (inference, the
downloads, fine-tuning) reads a private copy and never leaves the studies folder, whatever changes in it
while the server runs (:mod:`lib.confined`: 403 otherwise).

Tasks: the model ``lggseg`` (inference and fine-tuning), the strategies ``first`` and ``random`` (first or
random study without a final label). No module that imports torchvision is imported (``torchvision`` has
no working CPU build here): only MONAI Label's ``BasicInferTask``, ``TrainTask``, the local datastore and
the two plain strategies are used. Requests MONAI Label would answer with 500 (unknown model, unknown or
unreadable image) or act on unsafely (``../x`` upload names, any label file, a path on the server as the
image, a removal through a symlink, an upload of any size) are answered with 4xx here: see
:mod:`lib.datastore`, :mod:`lib.server` (the checks in front of MONAI Label's endpoints, installed when the
server starts: see :meth:`LGGSegApp.server_mode`) and :meth:`LGGSegApp.infer`. MONAI Label's private names
are used only in :mod:`lib.monailabel_adapter`.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import FileResponse
from lib.datastore import CheckedDatastore, check_image_file, scratch_folder
from lib.infers import LABELS, LGGSegInfer
from lib.model_files import AppPaths
from lib.monailabel_adapter import AppTasks
from lib.server import (
    ServerLimits,
    check_infer_options,
    discard_upload,
    guard_routes,
    is_upload,
    temp_folder,
    use_private_temp_folder,
)
from lib.trainers import NO_LABEL, LGGSegTrain, refused_train_keys
from monailabel.config import settings
from monailabel.endpoints import datastore as datastore_endpoints
from monailabel.endpoints.user.auth import RBAC
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.exception import MONAILabelException
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random
from monailabel.utils.others.generic import file_checksum, get_mime_type
from starlette.background import BackgroundTask

import pipeline
from pipeline.ingestion.sequences import NIFTI_SUFFIXES

logger = logging.getLogger(__name__)

MODEL_NAME = "lggseg"
# MONAI Label's endpoint modules whose POST / PUT routes get the checks of lib.server (all included by
# monailabel.app; login, proxy and the read-only ones are left as they are)
GUARDED_ENDPOINTS = ("infer", "datastore", "train", "activelearning", "session", "batch_infer", "scoring")


@contextlib.contextmanager
def _scratch_kept() -> Iterator[tuple[Path, BackgroundTask]]:
    """A private folder for a file to send: removed by the yielded background task once the response is
    sent, or at once when the block fails."""
    folder = Path(tempfile.mkdtemp(prefix="send-", dir=temp_folder()))
    try:
        yield folder, BackgroundTask(shutil.rmtree, folder, True)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _require_model(model: Any, tasks: dict[str, Any]) -> None:
    """Refuse (404) a model this server does not have among ``tasks``."""
    if model not in tasks:
        known = ", ".join(sorted(tasks)) or "none"
        raise HTTPException(status_code=404, detail=f"unknown model {model!r}; this server has: {known}")


class LGGSegApp(AppTasks, MONAILabelApp):  # MONAI Label finds the app by its direct base MONAILabelApp
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
        self.limits = ServerLimits.from_conf(conf)
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
            version=pipeline.__version__,  # the app's code; the weights': models.lggseg.model_version
            labels=LABELS,
        )

    def init_datastore(self) -> Datastore:
        """The local studies folder, with the checks of :class:`lib.datastore.CheckedDatastore`."""
        if self.studies.startswith(("http://", "https://")):
            raise ValueError(f"{self.studies}: the lggseg app serves a local studies folder only")
        return CheckedDatastore(
            self.studies,
            extensions=tuple(f"*{suffix}" for suffix in NIFTI_SUFFIXES),
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
            limits=self.limits,
        )

    def init_infers(self) -> dict[str, InferTask]:
        return {MODEL_NAME: LGGSegInfer(self.paths, self.device, studies=self.studies)}

    def init_trainers(self) -> dict[str, TrainTask]:
        return {MODEL_NAME: LGGSegTrain(self.paths, self.device, self.epochs, self.learning_rate)}

    def init_strategies(self) -> dict[str, Strategy]:
        return {"first": First(), "random": Random()}

    def infer(self, request: dict[str, Any], datastore: Datastore | None = None) -> dict[str, Any]:
        """Run the model on a study id or an uploaded file; 404 for an unknown model or image, 413 for an
        upload over the limits, 422 for an unreadable uploaded image or bad options (an unreadable study: see
        :class:`lib.infers.LGGSegInfer`).

        A path on the server is accepted only when it is an uploaded file in the server's temporary folder
        (that is where MONAI Label puts a file sent with the request; :mod:`lib.server` refuses paths sent
        by the client); any other image must be a study id. A rejected upload is removed.
        """
        image = request.get("image")
        try:
            _require_model(request.get("model"), self.infer_tasks)
            check_infer_options(request)
            store = datastore or self.datastore()
            if isinstance(image, str) and image not in store.list_images():
                if not is_upload(image):
                    raise HTTPException(status_code=404, detail=f"image {image!r} is not in the datastore")
                self.limits.check_size(image, "image")
                check_image_file(image, self.limits)
            return super().infer(request, datastore)
        except BaseException:
            discard_upload(image)
            discard_upload(request.get("label"))
            raise

    def next_sample(self, request: dict[str, Any]) -> dict[str, Any]:
        """The next study to label; 404 for an unknown strategy (a folder study's ``path``: see
        :meth:`lib.datastore.CheckedDatastore.get_image_info`)."""
        self.check_strategy(request.get("strategy"))
        return super().next_sample(request)

    def download_image(self, image: str) -> Any:
        """``GET /datastore/image``: a study as a NIfTI file a viewer opens (a folder study: its FLAIR, a
        DICOM FLAIR as a NIfTI copy), read inside the studies folder (403 otherwise) into a temporary copy
        that is removed once sent."""
        store = self.datastore()
        if not isinstance(store, CheckedDatastore):
            return datastore_endpoints.download_image(image)
        with _scratch_kept() as (scratch, done):
            path = store.viewable_image(image, scratch)
            media = get_mime_type(str(path))
            return FileResponse(path, media_type=media, filename=path.name, background=done)

    def check_image(self, image: str, check_sum: str | None = None) -> dict[str, Any]:
        """``HEAD /datastore/image``: whether the study exists (404) and, with ``check_sum``
        (``[ALGO:]digest``), whether its file has that checksum (404), computed on a copy read inside the
        studies folder (403 otherwise)."""
        store = self.datastore()
        if not isinstance(store, CheckedDatastore):
            return datastore_endpoints.download_image(image, check_only=True, check_sum=check_sum)
        store.entry(image)
        if check_sum:
            algo, _, digest = check_sum.rpartition(":")
            with scratch_folder() as scratch:
                copy = store.readable_study(image, scratch)
                if copy.is_dir() or digest != file_checksum(str(copy), algo=algo or "SHA256"):
                    raise HTTPException(status_code=404, detail="Image NOT Found (checksum failed)")
        return {}

    def download_label(self, label: str, tag: str) -> Any:
        """``GET /datastore/label``: a label, read inside the studies folder (403 otherwise) into a temporary
        copy that is removed once sent."""
        store = self.datastore()
        if not isinstance(store, CheckedDatastore):
            return datastore_endpoints.download_label(label, tag)
        with _scratch_kept() as (scratch, done):
            path = store.readable_label(label, tag, scratch)
            name = path.name[len(f"{tag}-") :]
            return FileResponse(path, media_type=get_mime_type(str(path)), filename=name, background=done)

    def check_strategy(self, strategy: Any) -> None:
        """Refuse (404) an active-learning strategy this server does not have."""
        if (strategy or "random") not in self.strategy_tasks:
            known = ", ".join(sorted(self.strategy_tasks)) or "none"
            raise HTTPException(
                status_code=404, detail=f"unknown strategy {strategy!r}; this server has: {known}"
            )

    def check_train_request(self, model: Any, params: Any) -> None:
        """Check a training request before MONAI Label starts the training process.

        Raises:
            HTTPException: 404 unknown model; 422 options the trainer refuses (``max_epochs=-1``) or keys
                MONAI Label would act on (``bundle_path``); 409 no study has a final label yet.
        """
        _require_model(model, self.train_tasks)
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise HTTPException(status_code=422, detail="the training request must be a JSON object")
        refused = refused_train_keys(params)
        if refused:
            raise HTTPException(status_code=422, detail=f"training request: {', '.join(refused)} not allowed")
        try:
            self.train_tasks[model].options(params)
        except MONAILabelException as error:
            raise HTTPException(status_code=422, detail=f"training request: {error.msg}") from None
        if not self.datastore().get_labeled_images():
            raise HTTPException(status_code=409, detail=NO_LABEL)

    def server_mode(self, mode: bool) -> None:
        """MONAI Label calls this when the server starts: uploads then go to a private temporary folder, and
        the checks of :mod:`lib.server` are put in front of MONAI Label's endpoints."""
        super().server_mode(mode)
        if not mode:
            return
        use_private_temp_folder()
        module = sys.modules.get("monailabel.app")
        if module is None:
            logger.warning("lggseg app: not served by monailabel.app: the request checks are not installed")
            return
        api = settings.MONAI_LABEL_API_STR
        routers = [
            importlib.import_module(f"monailabel.endpoints.{name}").router for name in GUARDED_ENDPOINTS
        ]
        guarded = guard_routes(
            module.app,
            routers,
            {
                f"{api}/infer/{{model}}": self.check_infer_route,
                f"{api}/train/{{model}}": self.check_train_route,
                f"{api}/train/": self.check_train_all_route,
                f"{api}/activelearning/{{strategy}}": self.check_strategy_route,
            },
            self.limits,
        )
        logger.info("lggseg app: %d routes guarded (%s)", len(guarded), "; ".join(guarded))
        reads = APIRouter()  # the routes that send a study's or a label's file: read inside the studies only
        for path, endpoint, methods in (
            ("datastore/image", self.download_image, ["GET"]),
            ("datastore/image", self.check_image, ["HEAD"]),
            ("datastore/label", self.download_label, ["GET"]),
        ):
            reads.add_api_route(
                f"{api}/{path}",
                endpoint,
                methods=methods,
                include_in_schema=False,  # MONAI Label's route stays in the API docs
                dependencies=[Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))],
            )
        module.app.router.routes[:0] = reads.routes

    def check_infer_route(self, request: Request, fields: dict[str, Any]) -> None:
        """``POST /infer/{model}``: the image a client names must be a study id: ``params["image"]`` (it
        replaces everything else), and the query's ``image`` unless a file is sent (the file replaces it)."""
        params = fields.get("params", {})
        check_infer_options(params)
        named = [params.get("image")]
        if "file" not in fields.get("files", ()):
            named.append(request.query_params.get("image"))
        studies = None
        for image in named:
            if image in (None, ""):
                continue
            studies = studies if studies is not None else set(self.datastore().list_images())
            if not isinstance(image, str) or image not in studies:
                raise HTTPException(status_code=404, detail=f"image {image!r} is not in the datastore")

    def check_train_route(self, request: Request, fields: dict[str, Any]) -> None:
        """``POST /train/{model}``: :meth:`check_train_request`."""
        self.check_train_request(request.path_params.get("model"), fields.get("json"))

    def check_train_all_route(self, request: Request, fields: dict[str, Any]) -> None:
        """``POST /train/``: :meth:`check_train_request` for each model's part of the body."""
        body = fields.get("json") or {}
        if not isinstance(body, dict):
            raise HTTPException(status_code=422, detail="the training request must be a JSON object")
        for model in self.train_tasks:
            self.check_train_request(model, body.get(model))

    def check_strategy_route(self, request: Request, fields: dict[str, Any]) -> None:
        """``POST /activelearning/{strategy}``: :meth:`check_strategy`."""
        self.check_strategy(request.path_params.get("strategy"))

    def bundle_path(self, model: Any) -> None:
        """MONAI Label asks this before starting a training task: refuse an unknown model there (404)."""
        if model is not None:
            _require_model(model, {**self.train_tasks, **self.infer_tasks})
        return None
