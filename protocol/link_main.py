"""``semlink link``: runs the link emulator and its state endpoint."""

from __future__ import annotations

import asyncio
import logging

from fastapi import FastAPI

from protocol.link import Direction, LinkEmulator, SnrProcess
from protocol.traces import ConstantSchedule, Schedule, load_trace, parse_rate
from semlink.runner import serve_until_signal, uvicorn_server

log = logging.getLogger(__name__)


def schedule_from(trace: str | None, rate: str | None) -> Schedule:
    if trace:
        return load_trace(trace)
    return ConstantSchedule(parse_rate(rate or "10mbit"))


def split_address(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"address must be HOST:PORT, got {addr!r}")
    return host.strip("[]"), int(port)


async def serve(
    listen: str,
    upstream: str,
    uplink: Schedule,
    downlink: Schedule,
    delay_ms: float,
    queue_bytes: int,
    snr: SnrProcess,
    state_port: int,
) -> None:
    link = LinkEmulator(
        split_address(upstream),
        Direction("uplink", uplink, delay_ms, queue_bytes),
        Direction("downlink", downlink, delay_ms, queue_bytes),
        snr,
    )
    app = FastAPI(title="semlink link emulator")
    app.get("/state")(link.state)
    app.get("/health")(lambda: {"live": True})
    host, port = split_address(listen)
    http = uvicorn_server(app, host, state_port)
    servers: list = []

    async def start() -> None:
        server, bound = await link.start(host, port)
        servers.append(server)
        servers.append(asyncio.ensure_future(http.serve()))
        log.info(
            "link ready: %s:%d -> %s, uplink %.3f Mbit/s avg, downlink %.3f Mbit/s avg, delay %g ms, state on :%d",
            host,
            bound,
            upstream,
            uplink.average_bps() / 1e6,
            downlink.average_bps() / 1e6,
            delay_ms,
            state_port,
        )

    async def stop() -> None:
        servers[0].close()
        http.should_exit = True
        await servers[1]

    await serve_until_signal(start, stop)
