"""The server's OIP HTTP/REST front (``/v2/...``), sharing the inference core with gRPC."""

from __future__ import annotations

from fastapi import FastAPI, Request, Response

from semlink.protocol import params as P
from semlink.protocol.http_codec import (
    HEADER_LENGTH,
    build_infer_response,
    parse_infer_body,
    wants_binary,
)
from semlink.runtime import errors as http_errors
from semlink.runtime import metrics
from semlink.runtime.errors import RETRY_AFTER
from semlink.server.core import InferenceCore
from semlink.server.grpc_service import EXTENSIONS, SERVER_NAME, SERVER_VERSION


def create_app(core: InferenceCore) -> FastAPI:
    """The OIP REST routes, metrics and health over ``core``; failures follow the error table."""
    app = FastAPI(title="semlink edge server", version=SERVER_VERSION)
    http_errors.install(
        app, core.settings.max_message_bytes, core.settings.max_concurrent_per_client
    )
    metrics.mount(app, core.metrics.registry)

    @app.get("/v2/health/live")
    async def live() -> dict:
        """Liveness: the process answers."""
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        """Readiness: 503 with ``Retry-After`` until every model is loaded; the
        ``semlink-queue-depth`` / ``semlink-service-ms`` headers carry the server's load."""
        if not core.ready:
            return http_errors.error(503, "models are loading", RETRY_AFTER)
        return Response(
            '{"ready": true}',
            media_type="application/json",
            headers=dict(core.load_report().headers()),
        )

    @app.get("/v2")
    async def metadata() -> dict:
        """OIP server metadata and extensions."""
        return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS}

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(name: str, version: str = "") -> dict:
        """OIP model metadata: the inputs the model's pipeline takes and the logits it answers."""
        mv = core.model(name, version)
        return {
            "name": mv.name,
            "versions": sorted(core.models[mv.name]),
            "platform": "onnxruntime_onnx",
            "inputs": [
                {"name": n, "datatype": d, "shape": shape}
                for n, d, shape in core.pipeline(mv).inputs()
            ],
            "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, mv.num_classes]}],
        }

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str = "") -> dict:
        """OIP model readiness."""
        core.model(name, version)
        return {"name": name, "ready": True}

    @app.post("/v2/repository/index")
    async def repository_index() -> list[dict]:
        """Every model version in the repository."""
        return [
            {"name": n, "version": v, "state": "READY"}
            for n, vs in sorted(core.models.items())
            for v in sorted(vs)
        ]

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(name: str, request: Request, version: str = "") -> Response:
        """OIP inference (JSON or binary tensors) through the core."""
        core.model(name, version)
        body = await http_errors.read_body(request, core.settings.max_message_bytes)
        doc, tensors = parse_infer_body(body, request.headers.get(HEADER_LENGTH))
        parameters = doc.get("parameters") or {}
        P.check_ids(doc.get("id"), parameters)  # echoed whole, so refused whole when too long
        mv, outputs, extra = await core.infer(name, version, tensors, parameters)
        content, headers = build_infer_response(
            mv.name, mv.version, doc.get("id") or "", outputs, extra, wants_binary(doc)
        )
        return Response(content, headers=headers)

    return app
