"""Runs an asyncio service with uvicorn in the same loop and drains it on SIGTERM / SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Iterator

import uvicorn
from fastapi import FastAPI

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn without its signal handling: it would re-raise SIGTERM once HTTP has stopped and
    kill the process before the gRPC side drained. :func:`serve_until_signal` owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Leaves signals alone: :func:`serve_until_signal` owns them."""
        yield


HEADER_TIMEOUT_S = 10.0  # a client has this long to send a request's headers


class _HeaderDeadline:
    """Closes a connection whose client has not finished sending a request's headers within
    ``header_timeout_s`` of connecting, or of its previous response (slow clients would
    otherwise hold a socket forever: uvicorn has no header-read timeout of its own)."""

    header_timeout_s = HEADER_TIMEOUT_S
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:
        """Accepts the connection and starts its header deadline."""
        super().connection_made(transport)  # type: ignore[misc]
        self._arm()

    def on_response_complete(self) -> None:
        """After each response, the next request's headers get the same deadline."""
        super().on_response_complete()  # type: ignore[misc]
        if not self.transport.is_closing():  # type: ignore[attr-defined]
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        """Drops the deadline with the connection."""
        if self._header_timer is not None:
            self._header_timer.cancel()
        super().connection_lost(exc)  # type: ignore[misc]

    def _arm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        waiting_after = self.cycle  # type: ignore[attr-defined]

        def check() -> None:
            """Closes the connection if no request's headers completed since arming (unless it
            was upgraded to a WebSocket meanwhile: a stream's transport is its protocol's now)."""
            if self.transport.get_protocol() is not self:  # type: ignore[attr-defined]
                return
            cycle = self.cycle  # type: ignore[attr-defined]
            if cycle is waiting_after and (cycle is None or cycle.response_complete):
                self.transport.close()  # type: ignore[attr-defined]

        self._header_timer = self.loop.call_later(self.header_timeout_s, check)  # type: ignore[attr-defined]


def _protocol(header_timeout_s: float) -> type:
    """uvicorn's HTTP/1.1 protocol (httptools if installed, else h11) with a header deadline."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    except ImportError:  # httptools is optional
        from uvicorn.protocols.http.h11_impl import H11Protocol as base  # type: ignore[assignment]
    return type(
        "HeaderDeadlineProtocol", (_HeaderDeadline, base), {"header_timeout_s": header_timeout_s}
    )


def uvicorn_server(
    app: FastAPI, host: str, port: int, header_timeout_s: float = HEADER_TIMEOUT_S
) -> uvicorn.Server:
    """A uvicorn server for ``app`` that leaves signal handling to :func:`serve_until_signal`
    and closes connections that take over ``header_timeout_s`` to send a request's headers."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        log_config=None,  # uvicorn's records go to the root logger, in the process's log format
        access_log=False,
        lifespan="off",
        http=_protocol(header_timeout_s),
        # a camera's frames are pixels, which deflate costs CPU on both ends to compress a little
        ws_per_message_deflate=False,
        ws_max_size=16 * 1024 * 1024,
    )
    return _Server(config)


async def serve_until_signal(
    start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]]
) -> None:
    """Starts the service, waits for SIGTERM or SIGINT, then stops it (which drains in-flight work).

    If starting fails (a configuration error found while loading), what did start is stopped
    before the error propagates, so the process exits with its one error line and nothing after.
    """
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stopping.set)
    try:
        await start()
    except BaseException:
        with contextlib.suppress(Exception):
            await stop()
        raise
    await stopping.wait()
    log.info("signal received: draining")
    await stop()
