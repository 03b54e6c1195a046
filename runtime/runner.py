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


def uvicorn_server(app: FastAPI, host: str, port: int) -> uvicorn.Server:
    """A uvicorn server for ``app`` that leaves signal handling to :func:`serve_until_signal`."""
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False, lifespan="off"
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
