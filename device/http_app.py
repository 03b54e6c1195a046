"""The device's HTTP front: OIP ``/v2/...`` (JSON and binary tensors), ``POST /v1/classify`` and
the live ``/dashboard``, one router per resource."""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, FastAPI, File, Form, Request, Response, UploadFile
from fastapi.responses import HTMLResponse

from semlink.device import dashboard
from semlink.device.decoding import DecodePool
from semlink.device.service import DeviceService
from semlink.device.stream import install_stream
from semlink.protocol import params as P
from semlink.protocol.codec import TensorError
from semlink.protocol.http_codec import (
    HEADER_LENGTH,
    build_infer_response,
    parse_infer_body,
    wants_binary,
)
from semlink.runtime import errors as http_errors
from semlink.runtime import metrics
from semlink.runtime.errors import ClientError, Late, kind_of
from semlink.runtime.images import decode_image

INLINE_JSON_BYTES = 16 * 1024
"""A request whose JSON part is at most this is parsed on the event loop (tens of
microseconds: less than the hop to the worker thread); a bigger one off it."""


def create_app(service: DeviceService) -> FastAPI:
    """The device's HTTP front: OIP v2 (``/v2/...``), ``/v1/classify`` uploads, ``/metrics``,
    the dashboard; failures follow the error table. Uploads decode on a pool of their own,
    ``app.state.decoder`` (its owner closes it with the service)."""
    settings = service.settings
    app = FastAPI(title="semlink device", version="0.1.0")
    http_errors.install(app, settings.max_body_bytes, settings.max_concurrent_per_client)
    metrics.mount(app, service.metrics.registry)
    app.state.decoder = decoder = DecodePool(settings.decode_workers)
    install_stream(app, service, decoder)
    app.include_router(health_routes(service))
    app.include_router(model_routes(service))
    app.include_router(infer_routes(service, decoder))
    app.include_router(upload_routes(service, decoder))
    app.include_router(dashboard_routes(service))
    return app


def check_model(service: DeviceService, model_name: str, version: str = "") -> None:
    """Raises 404 unless the request names the model (and version) this device serves."""
    name, served = service.model.name, service.model.version
    if model_name != name or (version and version != served):
        raise ClientError(
            404,
            f"this device serves model {name!r} version {served!r}, not {model_name!r} {version!r}",
        )


def health_routes(service: DeviceService) -> APIRouter:
    """Liveness, readiness and OIP server metadata."""
    router = APIRouter()

    @router.get("/v2/health/live")
    async def live() -> dict:
        """Liveness: the process answers."""
        return {"live": True}

    @router.get("/v2/health/ready")
    async def ready() -> dict:
        # The model is loaded before the app starts, and a lost server degrades answers, never
        # blocks them: the device is ready either way and says whether it can offload.
        """Readiness, whether some server replica is reachable for offloads, and how many
        replicas are known and ready."""
        replicas = service.replicas.replicas.values()
        return {
            "ready": True,
            "server": service.replicas.state,
            "replicas": len(replicas),
            "replicas_ready": sum(1 for r in replicas if r.ready),
        }

    @router.get("/v2")
    async def metadata() -> dict:
        """OIP server metadata."""
        return {
            "name": "semlink-device",
            "version": "0.1.0",
            "extensions": ["binary_tensor_data", "semlink"],
        }

    return router


def model_routes(service: DeviceService) -> APIRouter:
    """OIP model metadata and readiness of the one model the device serves."""
    router = APIRouter()
    name = service.model.name

    @router.get("/v2/models/{model_name}")
    async def model_metadata(model_name: str) -> dict:
        """OIP model metadata: the normalised image the device takes, the label it answers."""
        check_model(service, model_name)
        c, h, w = service.model.image_shape
        return {
            "name": name,
            "versions": [service.model.version],
            "platform": "semlink_split",
            "inputs": [{"name": "image", "datatype": "FP32", "shape": [1, c, h, w]}],
            "outputs": [
                {"name": "label", "datatype": "INT64", "shape": [1]},
                {
                    "name": "probabilities",
                    "datatype": "FP32",
                    "shape": [1, service.model.num_classes],
                },
            ],
        }

    @router.get("/v2/models/{model_name}/ready")
    async def model_ready(model_name: str) -> dict:
        """OIP model readiness."""
        check_model(service, model_name)
        return {"name": name, "ready": True}

    return router


def infer_routes(service: DeviceService, decoder: DecodePool) -> APIRouter:
    """OIP inference: a normalised ``image`` tensor in, label and probabilities out."""
    router = APIRouter()
    settings = service.settings

    @router.post("/v2/models/{model_name}/infer")
    @router.post("/v2/models/{model_name}/versions/{version}/infer")
    async def infer(model_name: str, request: Request, version: str = "") -> Response:
        """OIP inference: a normalised ``image`` tensor in, label and probabilities out."""
        started = http_errors.arrived(request)
        check_model(service, model_name, version)
        body = await http_errors.read_body(request, settings.max_body_bytes)
        header_length = request.headers.get(HEADER_LENGTH)
        json_bytes = (
            int(header_length)
            if header_length is not None and header_length.isdigit()
            else len(body)
        )
        if json_bytes <= INLINE_JSON_BYTES:  # binary tensors: a header of a few hundred bytes
            doc, tensors = parse_infer_body(body, header_length)
        else:  # tensors as JSON lists: parsing takes milliseconds, off the event loop
            doc, tensors = await decoder.run(parse_infer_body, body, header_length)
        image, params = oip_input(service, doc, tensors)
        answer = await service.classify(image, params, started=started)
        outputs = {
            "label": np.array([answer.label], np.int64),
            "probabilities": np.array([answer.probabilities], np.float32),
        }
        content, headers = build_infer_response(
            service.model.name,
            service.model.version,
            answer.request_id,
            outputs,
            answer.parameters(),
            wants_binary(doc),
        )
        return Response(content, headers=headers)

    return router


def oip_input(
    service: DeviceService, doc: dict[str, Any], tensors: dict[str, tuple[str, np.ndarray]]
) -> tuple[np.ndarray, dict[str, Any]]:
    """The ``image`` tensor and the semlink parameters of an OIP request, the request's ids
    checked (whole, never cut); raises :class:`TensorError` or ``ParameterError``."""
    if "image" not in tensors:
        c, h, w = service.model.image_shape
        raise TensorError(
            f"this model needs an input named 'image' (FP32 [1, {c}, {h}, {w}]); got {sorted(tensors)}"
        )
    dtype, image = tensors["image"]
    if dtype != "FP32":
        raise TensorError(f"input 'image' must be FP32, got {dtype}")
    params = dict(doc.get("parameters") or {})
    P.check_ids(doc.get("id"), params)
    if doc.get("id"):
        params.setdefault(P.REQUEST_ID, doc["id"])
    return image, params


def upload_routes(service: DeviceService, decoder: DecodePool) -> APIRouter:
    """``POST /v1/classify``: a PNG or JPEG upload in, the answer and what it cost out."""
    router = APIRouter()
    settings = service.settings
    limits = settings.image_limits()

    @router.post("/v1/classify")
    async def classify(
        request: Request,
        image: Annotated[UploadFile, File(description="PNG or JPEG")],
        budget: Annotated[float | None, Form()] = None,
        deadline_ms: Annotated[float | None, Form()] = None,
        label: Annotated[int | None, Form(description="true class, for the dashboard")] = None,
    ) -> dict:
        """A PNG or JPEG upload in, the answer and what it cost out. The parameters are checked
        first; decoding runs on the decode pool, and waiting for it and decoding count against
        the request's deadline and ``total_ms``: an upload that cannot start decoding before
        its deadline is answered 503 at once. The deadline counts from the request's arrival,
        reading the upload included."""
        started = http_errors.arrived(request)
        params = service.pipeline.check_request(
            {"budget": budget, "deadline_ms": deadline_ms, "label": label}
        )
        data = await image.read(settings.max_body_bytes + 1)
        if len(data) > settings.max_body_bytes:
            raise ClientError(413, f"image exceeds the limit of {settings.max_body_bytes} bytes")
        deadline = params.get(P.DEADLINE_MS, settings.deadline_ms)
        try:
            arr = await decoder.run_by(
                started, deadline, decode_image, data, service.model.manifest, limits
            )
        except Late as exc:  # answered, and counted, by the error table's outcome
            service.metrics.requests.labels(service.model.name, kind_of(exc).label).inc()
            raise
        return (await service.classify(arr, params, started=started)).as_dict()

    return router


def dashboard_routes(service: DeviceService) -> APIRouter:
    """The live dashboard (``--dashboard``) and ``/v1/stats``."""
    router = APIRouter()
    settings = service.settings

    def dashboard_on() -> None:
        """Raises 404 unless the device was started with ``--dashboard``."""
        if not settings.dashboard:
            raise ClientError(
                404,
                "the dashboard is off: start the device with --dashboard (it shows recent "
                "images and answers to whoever reaches this port; set API keys to guard it)",
            )

    @router.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
    async def dashboard_page() -> str:
        """The live dashboard (``--dashboard``)."""
        dashboard_on()
        return dashboard.page()

    @router.get("/dashboard/state")
    async def dashboard_state() -> dict:
        """What the dashboard shows: link, controller, accuracy and latency so far, recent
        requests with the patches they sent (``--dashboard``)."""
        dashboard_on()
        return service.dashboard.state(service)

    @router.get("/v1/stats")
    async def stats() -> dict:
        """Counts, channel and controller state as JSON."""
        return {
            **service.counts,
            "channel": service.monitor.current.as_dict(),
            "controller": service.controller.state(),
        }

    return router
