"""One error table for both fronts, and the HTTP error boundary (LitServe-style).

:data:`ERRORS` maps each failure semlink raises on purpose to its gRPC status, HTTP status and
metric label; the gRPC servicer and every HTTP app read the same table, so a failure is reported
alike on both. Client errors become 4xx with ``{"error": message}``; a server that is loading or
overloaded answers 503 with ``Retry-After`` (gRPC ``UNAVAILABLE`` / ``RESOURCE_EXHAUSTED``);
anything unexpected is logged with its traceback and becomes a generic 500 (gRPC ``INTERNAL``).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from semlink.protocol.codec import TensorError
from semlink.protocol.params import ParameterError
from semlink.runtime.repository import ModelNotFound

log = logging.getLogger(__name__)

RETRY_AFTER = {"Retry-After": "1"}
UNKNOWN = "unknown"  # the metric label of a model name that is not in the repository


class NotReady(RuntimeError):
    """The server is still loading its models."""


class QueueFull(RuntimeError):
    """More requests are waiting than the server's ``max_queue``: this one is shed."""


@dataclass(frozen=True)
class ErrorKind:
    """How one class of failure crosses each front."""

    grpc: grpc.StatusCode
    http: int
    label: str  # the ``outcome`` label of the request metrics
    retry: bool = False  # whether the client may retry as is (``Retry-After`` on HTTP)


INTERNAL = ErrorKind(grpc.StatusCode.INTERNAL, 500, "internal")
ERRORS: dict[type[Exception], ErrorKind] = {
    TensorError: ErrorKind(grpc.StatusCode.INVALID_ARGUMENT, 400, "invalid_argument"),
    ParameterError: ErrorKind(grpc.StatusCode.INVALID_ARGUMENT, 400, "invalid_argument"),
    ModelNotFound: ErrorKind(grpc.StatusCode.NOT_FOUND, 404, "not_found"),
    NotReady: ErrorKind(grpc.StatusCode.UNAVAILABLE, 503, "unavailable", retry=True),
    QueueFull: ErrorKind(grpc.StatusCode.RESOURCE_EXHAUSTED, 503, "resource_exhausted", True),
}


def kind_of(exc: BaseException) -> ErrorKind:
    """The table's entry for ``exc`` (by class, subclasses included), else :data:`INTERNAL`."""
    for cls, kind in ERRORS.items():
        if isinstance(exc, cls):
            return kind
    return INTERNAL


def model_label(name: str, known: Collection[str]) -> str:
    """A metric label for a client-supplied model name: the name if the repository holds it,
    else :data:`UNKNOWN`, so clients cannot grow the label set."""
    return name if name in known else UNKNOWN


class ClientError(Exception):
    """An HTTP answer other than 200 that a handler raises: status, message, headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """``{"error": message}`` with ``status``."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def install(app: FastAPI, max_body_bytes: int, max_concurrent_per_client: int = 0) -> None:
    """The error boundary, the body limit, and (when ``max_concurrent_per_client`` > 0) a cap on
    requests in flight per client address: more get 429 with ``Retry-After``."""
    in_flight: dict[str, int] = {}

    @app.middleware("http")
    async def limit_clients(request: Request, call_next):  # type: ignore[no-untyped-def]
        """429 with ``Retry-After`` beyond ``max_concurrent_per_client`` requests in flight."""
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
        """413 for a declared body over the limit; a generic 500 for anything unexpected."""
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body_bytes:
            return error(
                413, f"request body of {length} bytes exceeds the limit of {max_body_bytes} bytes"
            )
        try:
            return await call_next(request)
        except ClientDisconnect:  # the client left, or BodyLimit answered 413 and stopped it
            return error(400, "the request body ended early")
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.url.path)
            return error(500, "internal server error (logged on the server)")

    app.add_middleware(BodyLimit, max_body_bytes=max_body_bytes)

    @app.exception_handler(ClientError)
    async def _client(request: Request, exc: ClientError) -> JSONResponse:
        return error(exc.status, exc.message, exc.headers)

    async def _from_table(request: Request, exc: Exception) -> JSONResponse:
        kind = kind_of(exc)
        return error(kind.http, str(exc), RETRY_AFTER if kind.retry else None)

    for cls in ERRORS:
        app.add_exception_handler(cls, _from_table)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        # a form field of the wrong type is bad input like any other: 400, as the table says
        return error(
            400, "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        )


class BodyLimit:
    """ASGI middleware: counts a request's body as it streams in; once past ``max_body_bytes``
    it answers 413 itself and tells the app the client left, whatever the framing (a chunked
    upload declares no length), so no endpoint reads, parses or spools more than the limit."""

    def __init__(self, app: Any, max_body_bytes: int) -> None:
        self.app, self.max = app, max_body_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Passes the request on with a ``receive`` that counts and a ``send`` that goes
        quiet once the 413 is out."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        received, started, answered = 0, False, False

        async def guarded_send(message: Any) -> None:
            """The app's reply, unless the 413 went out first."""
            nonlocal started
            if answered:  # the 413 went out; what the app says after it goes nowhere
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        async def counted() -> Any:
            """The next body message, counted; past the limit, a disconnect."""
            nonlocal received, answered
            if answered:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max:
                    if not started:
                        await error(413, f"request body exceeds the limit of {self.max} bytes")(
                            scope, receive, send
                        )
                    answered = True
                    return {"type": "http.disconnect"}  # the app stops reading here
            return message

        await self.app(scope, counted, guarded_send)


async def read_body(request: Request, max_body_bytes: int) -> bytes:
    """The body, refusing (413) more than ``max_body_bytes`` even without a Content-Length."""
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > max_body_bytes:
            raise ClientError(413, f"request body exceeds the limit of {max_body_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
