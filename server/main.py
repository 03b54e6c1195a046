"""``semlink server``: the edge server, OIP over gRPC and HTTP in one process."""

from __future__ import annotations

import asyncio
import logging

from semlink.runner import serve_until_signal, uvicorn_server
from server.core import InferenceCore
from server.grpc_service import create_server
from server.http_app import create_app
from server.settings import ServerSettings

log = logging.getLogger(__name__)


async def serve(settings: ServerSettings) -> None:
    core = InferenceCore(settings)
    grpc_server, grpc_port = create_server(
        core, f"{settings.host}:{settings.grpc_port}", settings.max_message_bytes
    )
    http = uvicorn_server(create_app(core), settings.host, settings.http_port)
    http_task: asyncio.Task | None = None

    async def start() -> None:
        nonlocal http_task
        await grpc_server.start()
        http_task = asyncio.ensure_future(http.serve())
        log.info(
            "server live: gRPC on %s:%d, HTTP on %s:%d; loading models from %s",
            settings.host,
            grpc_port,
            settings.host,
            settings.http_port,
            settings.model_repository,
        )
        await core.load()
        log.info("server ready: %d model(s): %s", len(core.models), ", ".join(sorted(core.models)))

    async def stop() -> None:
        await grpc_server.stop(grace=settings.drain_seconds)  # finishes in-flight RPCs
        http.should_exit = True
        if http_task is not None:
            await http_task
        await core.close()
        log.info("server stopped")

    await serve_until_signal(start, stop)


def main(settings: ServerSettings) -> None:
    asyncio.run(serve(settings))
