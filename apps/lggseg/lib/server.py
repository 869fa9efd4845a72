"""The server's guards: upload limits, a private temporary folder, and the request checks MONAI Label's
endpoints lack.

MONAI Label 0.8.5's endpoints copy every uploaded file to ``tempfile.NamedTemporaryFile(...).name`` before
the app sees it and remove it only after a successful answer (a rejected upload stays), accept uploads of
any size, parse the ``params`` / ``info`` form fields with ``json.loads`` and ``dict.update`` (anything
else is a 500), let ``params`` replace the request's ``image`` with any path on the server, and start a
training process before anything checks the training request. The app answers instead:

- 413: a request body over ``max_upload_mb`` (``Content-Length``, or counted while a chunked body
  arrives: nothing beyond the limit is read or written), a volume over ``max_voxels`` (read from the
  NIfTI header, before anything is decompressed: see :mod:`lib.datastore`);
- 422: ``params`` / ``info`` that are not a JSON object, inference options MONAI Label cannot honour
  (:func:`check_infer_options`), a training request the trainer would refuse;
- 404: an image given as anything but a study id (a path on the server);
- 409: a training request while no study has a final label.

:func:`use_private_temp_folder` makes the server process's temporary folder a new private folder, so
every uploaded file is known to be the server's own: the datastore and the inference task remove a
rejected upload (:func:`discard_upload`), and the folder goes when the server stops.

:func:`guard_routes` puts the checks in front of MONAI Label's own endpoints: each ``POST`` / ``PUT`` route
is registered again, ahead of the original, with the same endpoint function plus a FastAPI dependency
(FastAPI parses the body once; the dependency reads the parsed form or JSON from the request) and the
body-size limit around it.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from monailabel.config import settings
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline.ingestion.sequences import NIFTI_SUFFIXES

logger = logging.getLogger(__name__)

MB = 2**20
DEFAULT_MAX_UPLOAD_MB = 512
DEFAULT_MAX_VOXELS = 512 * 512 * 512 * 4
# what MONAI Label's Writer can write (ITK or nibabel), and the label types it may cast to
RESULT_EXTENSIONS = (*NIFTI_SUFFIXES, ".nrrd", ".seg.nrrd")
RESULT_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
JSON_FORM_FIELDS = ("params", "info")

_private_temp: Path | None = None


@dataclass(frozen=True)
class ServerLimits:
    """What one request may bring (``--conf max_upload_mb``, ``--conf max_voxels``).

    Args:
        max_upload_bytes: the largest request body (an uploaded image or label and its form).
        max_voxels: the most voxels (all channels) an uploaded volume may hold once decompressed.
    """

    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_MB * MB
    max_voxels: int = DEFAULT_MAX_VOXELS

    @classmethod
    def from_conf(cls, conf: Mapping[str, str]) -> ServerLimits:
        """Read ``max_upload_mb`` (default 512) and ``max_voxels`` (default 512 x 512 x 512 x 4).

        Raises:
            ValueError: a value that is not a positive number.
        """
        values = {}
        for key, default, kind in (
            ("max_upload_mb", DEFAULT_MAX_UPLOAD_MB, float),
            ("max_voxels", DEFAULT_MAX_VOXELS, int),
        ):
            raw = conf.get(key, default)
            try:
                value = kind(raw)
            except (TypeError, ValueError):
                value = -1
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"--conf {key} {raw!r}: expected a positive number")
            values[key] = value
        return cls(max_upload_bytes=int(values["max_upload_mb"] * MB), max_voxels=values["max_voxels"])

    def check_size(self, path: str | os.PathLike, what: str) -> None:
        """Refuse (413) a file larger than ``max_upload_bytes``."""
        size = os.path.getsize(path)
        if size > self.max_upload_bytes:
            raise HTTPException(
                status_code=413,
                detail=f"the {what} has {size} bytes; this server accepts at most {self.max_upload_bytes}",
            )

    def check_voxels(self, shape: tuple[int, ...], what: str) -> None:
        """Refuse (413) a volume of more than ``max_voxels`` voxels (checked on the header's shape)."""
        voxels = math.prod(int(s) for s in shape)
        if voxels > self.max_voxels:
            raise HTTPException(
                status_code=413,
                detail=f"the {what} has shape {tuple(shape)} ({voxels} voxels); this server accepts at most "
                f"{self.max_voxels} voxels (--conf max_voxels)",
            )


# ------------------------------------------------------------------------------ private temporary folder
def use_private_temp_folder() -> Path:
    """Make this process's temporary folder (``tempfile.tempdir``, where MONAI Label's endpoints write the
    uploads) a new folder of its own, mode 0700, inside the usual one; it is removed when the process ends.

    Returns:
        the folder.
    """
    global _private_temp
    if _private_temp is None:
        folder = Path(tempfile.mkdtemp(prefix="lggseg-server-")).resolve()
        tempfile.tempdir = str(folder)
        atexit.register(shutil.rmtree, folder, True)
        _private_temp = folder
        logger.info("uploads go to %s", folder)
    return _private_temp


def temp_folder() -> Path:
    """The folder where uploads arrive: the private one when set, else the process's temporary folder."""
    return _private_temp or Path(os.path.realpath(tempfile.gettempdir()))


def is_upload(path: Any) -> bool:
    """Whether ``path`` is a plain file (not a link) directly in :func:`temp_folder`: a file sent with the
    request, saved there by MONAI Label."""
    if not isinstance(path, str | os.PathLike):
        return False
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return False
    folder = Path(os.path.realpath(os.path.dirname(os.path.abspath(path))))
    return stat.S_ISREG(mode) and folder == temp_folder()


def discard_upload(path: Any) -> None:
    """Remove an uploaded file from the server's private temporary folder (nothing else is ever removed)."""
    if _private_temp is not None and is_upload(path):
        try:
            os.unlink(path)
        except OSError as error:
            logger.warning("cannot remove the upload %s: %s", path, error)


# ------------------------------------------------------------------------------------------ request checks
def json_object(text: Any, field: str) -> dict[str, Any]:
    """Parse a form field that must hold a JSON object; 422 otherwise."""
    if text in (None, ""):
        return {}
    try:
        value = json.loads(text)
    except (TypeError, ValueError) as error:
        raise HTTPException(status_code=422, detail=f"{field} is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise HTTPException(
            status_code=422, detail=f"{field} must be a JSON object, got {type(value).__name__}"
        )
    return value


def check_infer_options(request: Mapping[str, Any]) -> None:
    """Refuse (422) inference options MONAI Label's writer would fail on or misuse."""
    problems = []
    extension = request.get("result_extension")
    if extension not in (None, "") and extension not in RESULT_EXTENSIONS:
        problems.append(f"result_extension={extension!r} (use one of {', '.join(RESULT_EXTENSIONS)})")
    dtype = request.get("result_dtype")
    if dtype not in (None, "") and dtype not in RESULT_DTYPES:
        problems.append(f"result_dtype={dtype!r} (use one of {', '.join(RESULT_DTYPES)})")
    if request.get("result_write_to_file", True) is not True:
        problems.append("result_write_to_file: the result is always a file")
    if not isinstance(request.get("result_compress", False), bool):
        problems.append("result_compress: true or false")
    level = request.get("logging", "INFO")
    if not isinstance(level, str) or level.upper() not in LOG_LEVELS:
        problems.append(f"logging={level!r} (use one of {', '.join(LOG_LEVELS)})")
    if problems:
        raise HTTPException(status_code=422, detail="bad inference options: " + "; ".join(problems))


class BodyLimit:
    """ASGI wrapper answering 413 to a request body over ``max_bytes``: at once when ``Content-Length``
    says so, else as soon as the bytes received pass it (the endpoint's parser stops there).

    Args:
        app: the route's ASGI app.
        max_bytes: the limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _detail(self) -> str:
        return f"request body over {self.max_bytes} bytes (--conf max_upload_mb)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            await JSONResponse({"detail": self._detail()}, status_code=413)(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(status_code=413, detail=self._detail())
            return message

        await self.app(scope, counted, send)


Check = Callable[[Request, dict[str, Any]], Any]


def _dependency(extra: Check | None) -> Callable[[Request], Any]:
    async def check(request: Request) -> None:
        content_type = request.headers.get("content-type", "")
        fields: dict[str, Any] = {}
        if content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
            form = await request.form()  # parsed once by FastAPI already
            fields["files"] = sorted({key for key, value in form.multi_items() if not isinstance(value, str)})
            for field in JSON_FORM_FIELDS:
                if field in form:
                    fields[field] = json_object(form[field], field)
        elif await request.body():
            try:
                fields["json"] = await request.json()
            except ValueError:
                raise HTTPException(status_code=422, detail="the body is not valid JSON") from None
        if extra is not None:
            extra(request, fields)

    return check


def guard_routes(
    fastapi_app: FastAPI, routers: Sequence[APIRouter], checks: Mapping[str, Check], limits: ServerLimits
) -> list[str]:
    """Put a guarded copy of every ``POST`` / ``PUT`` route of ``routers`` in front of ``fastapi_app``'s
    routes: the same path and endpoint function, plus a dependency that checks the JSON form fields and runs
    ``checks[path]``, inside :class:`BodyLimit`. Routes are matched in order, so the copy answers those
    requests; the original still answers the other methods of its path (and stays in the API docs).

    Args:
        fastapi_app: MONAI Label's FastAPI application (``monailabel.app.app``).
        routers: the routers it includes (``monailabel.endpoints.infer.router``, ...).
        checks: extra checks by route path (e.g. ``"/infer/{model}"``): ``check(request, fields)`` where
            ``fields`` holds the parsed ``params`` / ``info`` objects and the names of the uploaded files
            (``"files"``) of a form, or the JSON body (``"json"``).
        limits: the body-size limit.

    Returns:
        the routes guarded, as ``"METHODS path"``.
    """
    prefix = settings.MONAI_LABEL_API_STR
    copies: list[APIRoute] = []
    for router in routers:
        for route in router.routes:
            if not isinstance(route, APIRoute) or not route.methods & {"POST", "PUT"}:
                continue
            path = prefix + route.path
            scratch = APIRouter()
            scratch.add_api_route(
                path,
                route.endpoint,
                methods=sorted(route.methods),
                name=route.name,
                include_in_schema=False,  # the original stays in the API docs
                dependencies=[*route.dependencies, Depends(_dependency(checks.get(path)))],
            )
            copy = scratch.routes[-1]
            copy.app = BodyLimit(copy.app, limits.max_upload_bytes)
            copies.append(copy)
    fastapi_app.router.routes[:0] = copies
    return [f"{','.join(sorted(c.methods))} {c.path}" for c in copies]
