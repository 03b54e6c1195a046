"""The HTTP error boundary shared by the device and server apps (LitServe-style).

Client errors become 4xx with ``{"error": message}``; a server that is not ready answers 503 with
``Retry-After``; anything unexpected is logged with its traceback and becomes a generic 500.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from protocol.codec import TensorError
from protocol.params import ParameterError

log = logging.getLogger(__name__)


class ClientError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def install(app: FastAPI, max_body_bytes: int, max_concurrent_per_client: int = 0) -> None:
    """The error boundary, the body limit, and (when ``max_concurrent_per_client`` > 0) a cap on
    requests in flight per client address: more get 429 with ``Retry-After``."""
    in_flight: dict[str, int] = {}

    @app.middleware("http")
    async def limit_clients(request: Request, call_next):  # type: ignore[no-untyped-def]
        client = request.client.host if request.client else "?"
        if max_concurrent_per_client <= 0 or request.url.path.startswith("/v2/health"):
            return await call_next(request)
        if in_flight.get(client, 0) >= max_concurrent_per_client:
            return error(
                429,
                f"more than {max_concurrent_per_client} requests in flight from {client}; "
                "wait for answers before sending more",
                {"Retry-After": "1"},
            )
        in_flight[client] = in_flight.get(client, 0) + 1
        try:
            return await call_next(request)
        finally:
            in_flight[client] -= 1
            if not in_flight[client]:
                del in_flight[client]

    @app.middleware("http")
    async def limit_body(request: Request, call_next):  # type: ignore[no-untyped-def]
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body_bytes:
            return error(
                413, f"request body of {length} bytes exceeds the limit of {max_body_bytes} bytes"
            )
        try:
            return await call_next(request)
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.url.path)
            return error(500, "internal server error (logged on the server)")

    @app.exception_handler(ClientError)
    async def _client(request: Request, exc: ClientError) -> JSONResponse:
        return error(exc.status, exc.message, exc.headers)

    @app.exception_handler(TensorError)
    @app.exception_handler(ParameterError)
    async def _bad_input(request: Request, exc: ValueError) -> JSONResponse:
        return error(400, str(exc))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error(
            422, "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        )


async def read_body(request: Request, max_body_bytes: int) -> bytes:
    """The body, refusing (413) more than ``max_body_bytes`` even without a Content-Length."""
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > max_body_bytes:
            raise ClientError(413, f"request body exceeds the limit of {max_body_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
