"""The link emulator: a TCP proxy that shapes the real byte stream in each direction.

Each direction is one shared bottleneck, as in Mahimahi: bytes from every connection join one
FIFO queue; at every delivery opportunity of the direction's :class:`~link.traces.Schedule`
up to 1500 bytes leave it (an opportunity that finds the queue empty is lost); delivered bytes
reach the far side after the one-way delay.

The queue is bounded in bytes. A TCP proxy cannot drop bytes from the middle of a stream without
corrupting it, so "drop-tail" is realised the way TCP itself experiences it: when the queue is
full the proxy stops reading, the kernel's flow control pushes back, and the sender waits.

A device that talks to several server replicas reaches all of them through the one link (its
uplink is one radio): it sends an HTTP ``CONNECT host:port`` first (gRPC's ``grpc.http_proxy``
channel argument), and the emulator forwards that connection to the replica it names, if the
replica is one of its upstreams (a name, or an address that name resolves to now): it is not an
open proxy. A connection that does not start with ``CONNECT`` goes to the first upstream. The
CONNECT exchange itself (about 100 B each way) is not shaped.

The emulator reports its state (capacity and measured throughput over the last window, queued
bytes, RTT estimate, SNR) on ``GET /state`` of a small HTTP endpoint: the device's channel-state
feedback.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import math
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from semlink.link.sniff import GrpcSniffer
from semlink.link.traces import PACKET_BYTES, Schedule, TraceError, quote, read_lines
from semlink.runtime.channel import SNR_MAX_DB, SNR_MIN_DB

log = logging.getLogger(__name__)

READ_CHUNK = 64 * 1024
TICK_S = 0.001
MAX_CONNECT_HEADER = 4096  # bytes of a CONNECT request before its blank line; longer is refused
CONNECT_TIMEOUT_S = 5.0
MAX_QUEUE_DELAY_MS = 60_000.0  # the longest queue delay the link reports (ms)


@dataclass
class _Conn:
    writer: asyncio.StreamWriter
    delay_line: collections.deque = field(
        default_factory=collections.deque
    )  # (release_s, bytes | None)
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class Direction:
    """One direction of the link: shared FIFO, schedule, delay, byte-bounded queue."""

    def __init__(
        self,
        name: str,
        schedule: Schedule,
        delay_ms: float,
        queue_bytes: int,
        window_s: float = 1.0,
    ) -> None:
        self.name = name
        self.schedule = schedule
        self.delay_s = delay_ms / 1000.0
        self.queue_bytes = queue_bytes
        self.window_s = window_s
        self.fifo: collections.deque[tuple[_Conn, bytes | None]] = collections.deque()
        self.queued = 0
        self.delivered_total = 0
        self._delivered: collections.deque[tuple[float, int]] = collections.deque()
        self._space = asyncio.Condition()
        self._data = asyncio.Event()
        self._t0 = time.monotonic()
        self._used = 0

    def now_ms(self) -> float:
        """Milliseconds since this direction started (or was last replayed)."""
        return (time.monotonic() - self._t0) * 1000.0

    def replay(self) -> None:
        """Restarts the schedule from its beginning now; what is queued stays queued."""
        self._t0 = time.monotonic()
        self._used = self.schedule.opportunities_until(0.0)

    async def enqueue(self, conn: _Conn, chunk: bytes | None) -> None:
        """Queues a chunk (``None`` = end of stream), waiting while the queue is full."""
        async with self._space:
            await self._space.wait_for(lambda: self.queued < self.queue_bytes or chunk is None)
            self.fifo.append((conn, chunk))
            self.queued += len(chunk) if chunk else 0
        self._data.set()

    async def run(self) -> None:
        """The shaper: hands out the schedule's opportunities to the FIFO, forever."""
        while True:
            if not self.fifo:
                self._data.clear()
                await self._data.wait()
                self._used = self.schedule.opportunities_until(self.now_ms())  # idle time is lost
            now_ms = self.now_ms()
            total = self.schedule.opportunities_until(now_ms)
            budget = (total - self._used) * PACKET_BYTES
            self._used = total
            release = time.monotonic() + self.delay_s
            sent = 0
            while self.fifo and (budget > 0 or self.fifo[0][1] is None):
                conn, chunk = self.fifo[0]
                if chunk is None:
                    self.fifo.popleft()
                    conn.delay_line.append((release, None))
                    conn.wake.set()
                    continue
                part = chunk[:budget]
                if len(part) < len(chunk):
                    self.fifo[0] = (conn, chunk[len(part) :])
                else:
                    self.fifo.popleft()
                budget -= len(part)
                sent += len(part)
                conn.delay_line.append((release, part))
                conn.wake.set()
            if sent:
                self.queued -= sent
                self.delivered_total += sent
                self._delivered.append((time.monotonic(), sent))
                async with self._space:
                    self._space.notify_all()
            await asyncio.sleep(TICK_S)

    def throughput_bps(self) -> float:
        """Bytes delivered over the last window, as bits per second."""
        cutoff = time.monotonic() - self.window_s
        while self._delivered and self._delivered[0][0] < cutoff:
            self._delivered.popleft()
        return sum(n for _, n in self._delivered) * 8 / self.window_s

    def state(self) -> dict[str, float]:
        """Capacity, throughput and queue of this direction over the last window."""
        now = self.now_ms()
        capacity = self.schedule.capacity_bps(now, self.window_s * 1000)
        return {
            "capacity_bps": capacity,
            "throughput_bps": self.throughput_bps(),
            "queued_bytes": float(self.queued),
            # over a window without capacity (a trace's outage) the drain time is unknown: the
            # estimate stops at MAX_QUEUE_DELAY_MS rather than dividing by nothing
            "queue_delay_ms": min(
                self.queued * 8 / max(capacity, 1.0) * 1000.0, MAX_QUEUE_DELAY_MS
            ),
            "delivered_bytes": float(self.delivered_total),
            "average_bps": self.schedule.average_bps(),
        }


def load_snr_trace(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Times (ms) and SNRs (dB) of a ``t_ms snr_db`` trace, streamed and size-capped; every SNR
    within the protocol's range, times finite, non-negative and non-decreasing. Raises
    :class:`TraceError` naming the file and line, when the trace is read, not per request."""
    times: list[float] = []
    values: list[float] = []
    for lineno, line in read_lines(path, "SNR trace"):
        if not line:
            continue
        parts = line.split()
        try:
            t, v = (float(x) for x in parts) if len(parts) == 2 else (math.nan, math.nan)
        except ValueError:
            t = v = math.nan
        if not (math.isfinite(t) and math.isfinite(v)):
            raise TraceError(f"{path}:{lineno}: expected 't_ms snr_db', got {quote(line)}")
        if not SNR_MIN_DB <= v <= SNR_MAX_DB:
            raise TraceError(
                f"{path}:{lineno}: SNR {v:g} dB is outside [{SNR_MIN_DB:g}, {SNR_MAX_DB:g}] dB"
            )
        if t < 0 or (times and t < times[-1]):
            raise TraceError(f"{path}:{lineno}: times must be non-negative and non-decreasing")
        times.append(t)
        values.append(v)
    if not times:
        raise TraceError(f"{path}: the SNR trace is empty; write one 't_ms snr_db' pair per line")
    return np.asarray(times), np.asarray(values)


class SnrProcess:
    """SNR the link reports: constant, or a stepwise ``t_ms snr_db`` trace that wraps."""

    def __init__(self, snr_db: float = 20.0, trace: str | Path | None = None) -> None:
        self.constant = snr_db
        self.times: np.ndarray | None = None
        if trace is not None:
            self.times, self.values = load_snr_trace(trace)

    def at(self, t_ms: float) -> float:
        """The SNR in dB at ``t_ms`` (the trace wraps), or the constant one."""
        if self.times is None:
            return self.constant
        period = max(float(self.times[-1]), 1.0)
        i = int(np.searchsorted(self.times, t_ms % period, side="right")) - 1
        return float(self.values[max(i, 0)])


class LinkEmulator:
    """Accepts on ``listen`` and forwards each connection through two Directions to the first of
    ``upstreams``, or to the upstream its ``CONNECT`` request names."""

    def __init__(
        self,
        upstreams: tuple[str, int] | list[tuple[str, int]],
        uplink: Direction,
        downlink: Direction,
        snr: SnrProcess,
    ) -> None:
        self.upstreams = [upstreams] if isinstance(upstreams, tuple) else list(upstreams)
        if not self.upstreams:
            raise ValueError("the link needs at least one upstream")
        self.upstream = self.upstreams[0]
        self.uplink = uplink
        self.downlink = downlink
        self.snr = snr
        self.connections = 0
        self.active = 0
        self._ids = itertools.count()
        self._tasks: set[asyncio.Task] = set()

    async def start(self, host: str, port: int) -> tuple[asyncio.AbstractServer, int]:
        """Starts shaping and listening on ``host:port``; returns the server and the bound port."""
        for d in (self.uplink, self.downlink):
            self._spawn(d.run())
        server = await asyncio.start_server(self._handle, host, port)
        return server, server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stops shaping: cancels every pump, deliverer and shaper and waits for them; the
        connection handlers then close both sockets of their connections."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0)  # let the connection handlers run their finally blocks

    def _spawn(self, coro) -> asyncio.Task:  # type: ignore[no-untyped-def]
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def allowed(self, host: str, port: int) -> bool:
        """Whether ``host:port`` is one of the upstreams: the same name, or an address one of
        their names resolves to now (replicas come and go behind one name)."""
        if (host, port) in self.upstreams:
            return True
        loop = asyncio.get_running_loop()
        for name, up_port in self.upstreams:
            if up_port != port:
                continue
            with contextlib.suppress(OSError):
                infos = await loop.getaddrinfo(name, port, type=socket.SOCK_STREAM)
                if any(info[4][0] == host for info in infos):
                    return True
        return False

    async def _target(
        self, cid: int, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> tuple[tuple[str, int] | None, bytes, bool]:
        """Where this connection goes, the bytes already read that belong to it, and whether it
        came by ``CONNECT`` (then it is answered 200 once connected): the upstream a ``CONNECT``
        names, else the first upstream; ``None`` when the connection is refused or closed."""
        try:
            first = await asyncio.wait_for(client_r.read(READ_CHUNK), CONNECT_TIMEOUT_S)
        except (TimeoutError, ConnectionError, OSError):
            return self.upstream, b"", False  # a client that waits for the server to speak
        if not first.startswith(b"CONNECT "):
            return self.upstream, first, False
        head = first
        while b"\r\n\r\n" not in head and len(head) <= MAX_CONNECT_HEADER:
            try:
                more = await asyncio.wait_for(client_r.read(READ_CHUNK), CONNECT_TIMEOUT_S)
            except (TimeoutError, ConnectionError, OSError):
                more = b""
            if not more:
                return None, b"", True
            head += more
        line, _, rest = head.partition(b"\r\n")
        _, _, after = rest.partition(b"\r\n\r\n")
        parts = line.decode("latin-1").split()
        reason = ""
        target: tuple[str, int] | None = None
        if len(head) > MAX_CONNECT_HEADER and b"\r\n\r\n" not in head:
            reason = "CONNECT request too long"
        elif len(parts) != 3 or not parts[1].rpartition(":")[2].isdigit():
            reason = "malformed CONNECT request"
        else:
            host, _, port = parts[1].rpartition(":")
            target = (host.strip("[]"), int(port))
            if not await self.allowed(*target):
                reason = (
                    f"{parts[1]} is not an upstream of this link; add it (or a name that "
                    "resolves to it) to the link's --upstream list"
                )
        if reason:
            log.warning("connection %d refused: %s", cid, quote(reason))
            client_w.write(f"HTTP/1.1 403 Forbidden\r\n\r\n{reason}\n".encode())
            with contextlib.suppress(Exception):
                await client_w.drain()
            return None, b"", True
        return target, after, True

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        cid = next(self._ids)
        target, pending, via_connect = await self._target(cid, client_r, client_w)
        if target is None:
            client_w.close()
            return
        try:
            up_r, up_w = await asyncio.open_connection(*target)
        except OSError as exc:
            log.warning(
                "connection %d: upstream %s:%d unreachable (%s); closing client",
                cid,
                *target,
                exc,
            )
            if via_connect:
                client_w.write(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
            client_w.close()
            return
        if via_connect:
            client_w.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        self.connections += 1
        self.active += 1
        to_up, to_client = _Conn(up_w), _Conn(client_w)
        on_chunk = self._request_logger(cid)
        tasks = [
            self._spawn(self._pump(client_r, self.uplink, to_up, on_chunk, pending)),
            self._spawn(_deliver(to_up)),
            self._spawn(self._pump(up_r, self.downlink, to_client)),
            self._spawn(_deliver(to_client)),
        ]
        try:
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            self.active -= 1
            for w in (up_w, client_w):
                with contextlib.suppress(Exception):
                    w.close()

    def _request_logger(self, cid: int) -> Callable[[bytes], None]:
        """One log line per inference request entering the uplink, under the request id the
        device and the server use (plaintext hops only: see :mod:`link.sniff`)."""
        sniffer = GrpcSniffer()

        def on_chunk(chunk: bytes) -> None:
            """Logs each plaintext request that entered the uplink, with what was queued ahead."""
            was_readable = sniffer.readable
            for request_id, model, wire_bytes in sniffer.feed(chunk):
                ahead = self.uplink.queued
                log.info(
                    "request %s: %d B into the uplink, %d B queued ahead",
                    request_id,
                    wire_bytes,
                    ahead,
                    extra={
                        "request": {
                            "request_id": request_id,
                            "model": model,
                            "connection": cid,
                            "wire_bytes": wire_bytes,
                            "queued_bytes_ahead": ahead,
                            "capacity_bps": self.uplink.state()["capacity_bps"],
                        }
                    },
                )
            if was_readable and not sniffer.readable:
                log.info("connection %d is encrypted (TLS): no per-request lines for it", cid)

        return on_chunk

    @staticmethod
    async def _pump(
        reader: asyncio.StreamReader,
        direction: Direction,
        conn: _Conn,
        on_chunk: Callable[[bytes], None] | None = None,
        first: bytes = b"",
    ) -> None:
        try:
            if first:
                if on_chunk is not None:
                    on_chunk(first)
                await direction.enqueue(conn, first)
            while chunk := await reader.read(READ_CHUNK):
                if on_chunk is not None:
                    on_chunk(chunk)
                await direction.enqueue(conn, chunk)
        except (ConnectionError, OSError):
            pass
        await direction.enqueue(conn, None)

    def replay(self) -> dict:
        """Restarts both directions' traces (and the SNR trace, which follows the uplink's
        clock) from their beginning, so runs measured one after another see the same stretch
        of a trace; returns the state after."""
        self.uplink.replay()
        self.downlink.replay()
        return self.state()

    def state(self) -> dict:
        """The link's state as devices read it from ``/state``."""
        t = self.uplink.now_ms()
        up, down = self.uplink.state(), self.downlink.state()
        return {
            "time_ms": t,
            "uplink": up,
            "downlink": down,
            "bandwidth_bps": up["capacity_bps"],
            "rtt_ms": 1000.0 * (self.uplink.delay_s + self.downlink.delay_s) + up["queue_delay_ms"],
            "snr_db": self.snr.at(t),
            "connections_total": self.connections,
            "connections_active": self.active,
        }


async def _deliver(conn: _Conn) -> None:
    """Writes delivered bytes once their one-way delay has passed; closes on end of stream."""
    try:
        while True:
            while not conn.delay_line:
                conn.wake.clear()
                await conn.wake.wait()
            release, chunk = conn.delay_line[0]
            wait = release - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            conn.delay_line.popleft()
            if chunk is None:
                with contextlib.suppress(Exception):
                    conn.writer.write_eof()
                return
            conn.writer.write(chunk)
            await conn.writer.drain()
    except (ConnectionError, OSError):
        return
