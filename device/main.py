"""``semlink device``: the device runtime behind its HTTP front."""

from __future__ import annotations

import asyncio
import logging

from semlink.device.http_app import create_app
from semlink.device.service import DeviceService
from semlink.device.settings import DeviceSettings
from semlink.runtime import security
from semlink.runtime.cpu_quota import limit_cpu, profile_share, release_cpu
from semlink.runtime.runner import serve_until_signal, uvicorn_server

log = logging.getLogger(__name__)


async def serve(settings: DeviceSettings) -> None:
    """Runs the device until SIGINT/SIGTERM: checks transport and keys, loads the model, serves HTTP."""
    settings.check_transport()
    share = settings.cpu_quota or profile_share(settings.device_profile)
    group = None
    if share is not None:  # before anything loads: the models' threads start under the quota
        group = limit_cpu(share, "device")
    if settings.insecure:
        log.warning("INSECURE: plaintext gRPC to the server (--insecure)")
    keys = settings.api_key_list()
    service = DeviceService(settings)
    app = create_app(service)
    security.install_api_keys(app, keys)
    if keys:
        log.info("HTTP API requires one of %d API key(s); health probes are open", len(keys))
    http = uvicorn_server(app, settings.host, settings.http_port, settings.http_header_timeout_s)
    task: asyncio.Task | None = None

    async def start() -> None:
        """Starts the background tasks and the HTTP server."""
        nonlocal task
        await service.start()
        task = asyncio.ensure_future(http.serve())
        log.info(
            "device ready: HTTP on %s:%d, model %s v%s, server %s",
            settings.host,
            settings.http_port,
            service.model.name,
            service.model.version,
            settings.server,
        )

    async def stop() -> None:
        """Finishes in-flight requests, then stops the background tasks."""
        http.should_exit = True  # uvicorn finishes in-flight requests before returning
        if task is not None:
            await task
        app.state.decoder.close()
        await service.close()

    try:
        await serve_until_signal(start, stop)
    finally:
        if group is not None:  # drained: tearing the process down is not the device's work
            release_cpu(group)


def main(settings: DeviceSettings) -> None:
    """Entry point of ``semlink device``."""
    asyncio.run(serve(settings))
