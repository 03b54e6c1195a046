"""One error table for both fronts, and the HTTP error boundary (LitServe-style).

:data:`ERRORS` maps each failure semlink raises on purpose to its gRPC status, HTTP status and
metric label; the gRPC servicer and every HTTP app read the same table, so a failure is reported
alike on both. Client errors become 4xx with ``{"error": message}``; a server that is loading or
overloaded answers 503 with ``Retry-After`` (gRPC ``UNAVAILABLE`` / ``RESOURCE_EXHAUSTED``);
anything unexpected is logged with its traceback and becomes a generic 500 (gRPC ``INTERNAL``).
"""

from __future__ import annotations

import logging
import time
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
ARRIVED = "semlink_arrived"  # the request's scope["state"] key of its arrival time
UNKNOWN = "unknown"  # the metric label of a model name that is not in the repository


class NotReady(RuntimeError):
    """The server is still loading its models."""


class QueueFull(RuntimeError):
    """More requests are waiting than the server's ``max_queue``: this one is shed."""


class Late(RuntimeError):
    """A frame could not start before its deadline (it waited for the device's compute slot or
    for a decoder the whole time): answered at once, never held, never after the queue."""


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
    Late: ErrorKind(grpc.StatusCode.DEADLINE_EXCEEDED, 503, "deadline_exceeded", retry=True),
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
    requests in flight per client address: more get 429 with ``Retry-After``. One ASGI
    middleware (:class:`Guard`) does all three."""
    app.add_middleware(
        Guard, max_body_bytes=max_body_bytes, max_concurrent_per_client=max_concurrent_per_client
    )

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


class Guard:
    """ASGI middleware in front of every route of an HTTP front, in order:

    - 413 for a declared body (``Content-Length``) over ``max_body_bytes``;
    - 429 with ``Retry-After`` beyond ``max_concurrent_per_client`` requests in flight from one
      client address (0: no cap; health probes are never capped);
    - the body counted as it streams in: once past the limit it answers 413 itself and tells
      the app the client left, whatever the framing (a chunked upload declares no length), so
      no endpoint reads, parses or spools more than the limit;
    - the error boundary: a body that ended early is a 400; anything unexpected is logged with
      its traceback and answered with a generic 500.

    Plain ASGI rather than ``@app.middleware("http")``: Starlette's ``BaseHTTPMiddleware`` runs
    each request through a task group and a memory stream per layer, a cost every request paid
    twice."""

    def __init__(self, app: Any, max_body_bytes: int, max_concurrent_per_client: int = 0) -> None:
        self.app, self.max = app, max_body_bytes
        self.max_in_flight = max_concurrent_per_client
        self.in_flight: dict[str, int] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Refuses what the limits refuse, then passes the request on with a ``receive`` that
        counts and a ``send`` that goes quiet once a 413 is out."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # when the request arrived, before its body: what deadlines and total_ms count from
        scope.setdefault("state", {})[ARRIVED] = time.perf_counter()
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None and length.isdigit() and int(length) > self.max:
            await error(
                413,
                f"request body of {length.decode()} bytes exceeds the limit of {self.max} bytes",
            )(scope, receive, send)
            return
        client = scope["client"][0] if scope.get("client") else "?"
        capped = self.max_in_flight > 0 and not scope["path"].startswith("/v2/health")
        if capped and self.in_flight.get(client, 0) >= self.max_in_flight:
            await error(
                429,
                f"more than {self.max_in_flight} requests in flight from {client}; "
                "wait for answers before sending more",
                RETRY_AFTER,
            )(scope, receive, send)
            return
        if capped:
            self.in_flight[client] = self.in_flight.get(client, 0) + 1
        try:
            await self._guarded(scope, receive, send)
        finally:
            if capped:
                self.in_flight[client] -= 1
                if not self.in_flight[client]:
                    del self.in_flight[client]

    async def _guarded(self, scope: Any, receive: Any, send: Any) -> None:
        received, started, answered = 0, False, False

        async def guarded_send(message: Any) -> None:
            """The app's reply, unless a 413 went out first."""
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

        try:
            await self.app(scope, counted, guarded_send)
        except ClientDisconnect:  # the client left, or the 413 above went out and stopped it
            if not started:
                await error(400, "the request body ended early")(scope, receive, guarded_send)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:  # half an answer is out: the connection is all that can be closed
                raise
            await error(500, "internal server error (logged on the server)")(
                scope, receive, guarded_send
            )


def arrived(request: Request) -> float:
    """``time.perf_counter()`` when :class:`Guard` saw the request arrive (before its body was
    read), or now for an app without the guard."""
    return float(request.scope.get("state", {}).get(ARRIVED, time.perf_counter()))


async def read_body(request: Request, max_body_bytes: int) -> bytes:
    """The body, refusing (413) more than ``max_body_bytes`` even without a Content-Length."""
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > max_body_bytes:
            raise ClientError(413, f"request body exceeds the limit of {max_body_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
