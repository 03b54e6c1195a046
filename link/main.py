"""``semlink link``: runs the link emulator and its state endpoint."""

from __future__ import annotations

import asyncio
import logging

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from semlink.link.shaper import Direction, LinkEmulator, SnrProcess
from semlink.link.traces import ConstantSchedule, Schedule, load_trace, parse_rate
from semlink.runtime import metrics
from semlink.runtime.runner import serve_until_signal, uvicorn_server

log = logging.getLogger(__name__)


class LinkSettings(BaseSettings):
    """Runtime configuration of the link emulator: flags or ``SEMLINK_LINK_*`` variables."""

    model_config = SettingsConfigDict(env_prefix="SEMLINK_LINK_")

    listen: str = Field("127.0.0.1:9001", description="HOST:PORT devices connect to")
    upstream: str = Field(
        "127.0.0.1:8001",
        description="HOST:PORT of the server's gRPC; several, comma-separated, for replicas a "
        "device reaches by CONNECT (a name may resolve to several); the first takes the rest",
    )
    uplink: str | None = Field(None, description="Mahimahi trace towards the server")
    downlink: str | None = Field(None, description="Mahimahi trace towards the device")
    rate: str = Field("10mbit", description="constant rate where no trace is given")
    delay_ms: float = Field(10.0, ge=0.0, le=10_000.0, description="one-way delay")
    queue_bytes: int = Field(1_000_000, ge=1500, description="queue bound per direction")
    snr_db: float = Field(20.0, ge=-50.0, le=100.0, description="SNR reported without an SNR trace")
    snr_trace: str | None = Field(None, description="file of 't_ms snr_db' lines")
    state_port: int = Field(9002, ge=0, le=65535, description="HTTP port of GET /state")


class LinkCollector:
    """Prometheus view of the link's state, read at scrape time."""

    def __init__(self, link: LinkEmulator) -> None:
        self.link = link

    def collect(self):  # type: ignore[no-untyped-def]
        """The link's state as Prometheus metrics, read at scrape time."""
        state = self.link.state()
        capacity = GaugeMetricFamily(
            "semlink_link_capacity_bits_per_second",
            "Schedule capacity over the last second",
            labels=["direction"],
        )
        throughput = GaugeMetricFamily(
            "semlink_link_throughput_bits_per_second",
            "Bytes delivered over the last second",
            labels=["direction"],
        )
        queued = GaugeMetricFamily(
            "semlink_link_queued_bytes", "Bytes waiting in the queue", labels=["direction"]
        )
        delivered = CounterMetricFamily(
            "semlink_link_delivered_bytes", "Bytes delivered", labels=["direction"]
        )
        for d in ("uplink", "downlink"):
            capacity.add_metric([d], state[d]["capacity_bps"])
            throughput.add_metric([d], state[d]["throughput_bps"])
            queued.add_metric([d], state[d]["queued_bytes"])
            delivered.add_metric([d], state[d]["delivered_bytes"])
        yield from (capacity, throughput, queued, delivered)
        yield GaugeMetricFamily(
            "semlink_link_snr_db", "SNR the link reports", value=state["snr_db"]
        )
        yield GaugeMetricFamily(
            "semlink_link_rtt_seconds", "Round-trip time estimate", value=state["rtt_ms"] / 1000.0
        )
        yield GaugeMetricFamily(
            "semlink_link_connections_active",
            "Open proxied connections",
            value=state["connections_active"],
        )


def schedule_from(trace: str | None, rate: str | None) -> Schedule:
    """The trace's schedule, else a constant rate (10 Mbit/s by default)."""
    if trace:
        return load_trace(trace)
    return ConstantSchedule(parse_rate(rate or "10mbit"))


def split_address(addr: str) -> tuple[str, int]:
    """``(host, port)`` from ``HOST:PORT`` (``[::1]:9001`` too); raises ``ValueError``."""
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"address must be HOST:PORT, got {addr!r}")
    return host.strip("[]"), int(port)


async def serve(settings: LinkSettings) -> None:
    """Runs the proxy and its state endpoint until SIGTERM / SIGINT."""
    listen, upstream, delay_ms = settings.listen, settings.upstream, settings.delay_ms
    queue_bytes, state_port = settings.queue_bytes, settings.state_port
    uplink = schedule_from(settings.uplink, settings.rate)
    downlink = schedule_from(settings.downlink, settings.rate)
    snr = SnrProcess(settings.snr_db, settings.snr_trace)
    link = LinkEmulator(
        [split_address(a.strip()) for a in upstream.split(",") if a.strip()],
        Direction("uplink", uplink, delay_ms, queue_bytes),
        Direction("downlink", downlink, delay_ms, queue_bytes),
        snr,
    )
    app = FastAPI(title="semlink link emulator")
    app.get("/state")(link.state)
    app.post("/replay")(link.replay)
    app.get("/health")(lambda: {"live": True})
    registry = CollectorRegistry()
    registry.register(LinkCollector(link))
    metrics.mount(app, registry)
    host, port = split_address(listen)
    http = uvicorn_server(app, host, state_port)
    proxy: asyncio.AbstractServer | None = None
    http_task: asyncio.Task | None = None

    async def start() -> None:
        """Starts the proxy and the state server."""
        nonlocal proxy, http_task
        proxy, bound = await link.start(host, port)
        http_task = asyncio.ensure_future(http.serve())
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
        """Stops the proxy, the shaping tasks and the state server."""
        if proxy is not None:
            proxy.close()
        await link.close()
        http.should_exit = True
        if http_task is not None:
            await http_task

    await serve_until_signal(start, stop)
