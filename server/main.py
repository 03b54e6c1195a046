"""``semlink server``: the edge server, OIP over gRPC and HTTP in one process."""

from __future__ import annotations

import asyncio
import logging

from semlink.runtime import security
from semlink.runtime.cpu_quota import limit_cpu, release_cpu
from semlink.runtime.runner import serve_until_signal, uvicorn_server
from semlink.server.core import InferenceCore
from semlink.server.grpc_service import create_server
from semlink.server.http_app import create_app
from semlink.server.settings import ServerSettings

log = logging.getLogger(__name__)


async def serve(settings: ServerSettings) -> None:
    """Runs the server until SIGINT/SIGTERM: gRPC (TLS unless insecure) and HTTP."""
    settings.check_transport()
    group = None
    if settings.cpu_quota is not None:  # before the models load: their threads start under it
        group = limit_cpu(settings.cpu_quota, "server")
    credentials = None
    if settings.insecure:
        log.warning("INSECURE: gRPC without TLS (--insecure); anyone on the network can connect")
    else:
        assert settings.tls_cert is not None and settings.tls_key is not None
        credentials = security.server_credentials(
            settings.tls_cert, settings.tls_key, settings.tls_client_ca
        )
        log.info(
            "gRPC over TLS%s; clients that fail the handshake (plaintext, an unknown CA, no "
            "certificate) are refused without a log line each (GRPC_VERBOSITY=INFO shows them)",
            " with client certificates (mutual TLS)" if settings.tls_client_ca else "",
        )
    keys = settings.api_key_list()
    core = InferenceCore(settings)
    grpc_server, grpc_port = create_server(
        core, f"{settings.host}:{settings.grpc_port}", settings.max_message_bytes, credentials
    )
    app = create_app(core)
    security.install_api_keys(app, keys)
    if keys:
        log.info("HTTP API requires one of %d API key(s); health probes are open", len(keys))
    http = uvicorn_server(app, settings.host, settings.http_port, settings.http_header_timeout_s)
    http_task: asyncio.Task | None = None

    async def start() -> None:
        """Starts gRPC and HTTP."""
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
        """Drains gRPC for ``drain_seconds``, then stops HTTP and the core."""
        core.draining = True  # open streams end at their next request: clients move on
        await grpc_server.stop(grace=settings.drain_seconds)  # finishes in-flight RPCs
        http.should_exit = True
        if http_task is not None:
            await http_task
        await core.close()
        log.info("server stopped")

    try:
        await serve_until_signal(start, stop)
    finally:
        if group is not None:  # drained: tearing the process down is not the emulated work
            release_cpu(group)


def main(settings: ServerSettings) -> None:
    """Entry point of ``semlink server``."""
    asyncio.run(serve(settings))
