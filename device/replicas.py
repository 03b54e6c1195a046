"""The edge servers a device offloads to, and which one gets each request.

A device may know several replicas of the server: a list of ``HOST:PORT`` targets, each a name
that may resolve to several addresses (a Kubernetes headless Service, a compose service scaled to
N), re-resolved every ``resolve_s``. Each replica has its own channel and circuit breaker, and
what the device knows of it:

- the **load** the server reports in the trailing metadata of every answer and of the readiness
  probe (``semlink-queue-depth``, ``semlink-service-ms``: see :mod:`semlink.protocol.params`);
- the **network time** of its path, an average of each round trip less the server's own time,
  and of the readiness probe's round trip (every ``probe_s``, so a replica no request went to
  lately is measured too; a server starved of CPU answers its probes late).

**Expected-delay choice** (the offloading literature's server selection by network plus
queueing delay):

    expected_ms = network_ms + (queue_depth + 1) * service_ms

where ``queue_depth`` is what the server last reported (less this device's requests it counted
then) plus this device's requests in flight to it now. Each request draws two replicas at random
and takes the one with the lower expected delay ("power of two choices", Mitzenmacher 2001): with
loads that are a few milliseconds stale, always taking the single best sends every device's
next requests to the same replica at once (herding); two random candidates keep almost all the
benefit without it. A replica never measured gets the smallest network and service time of the
others (optimistic), so a new replica takes traffic on its first requests. ``round-robin`` is the
baseline ``semlink bench replicas`` compares against.

A replica whose breaker is open is skipped; a request that finds no live server (``UNAVAILABLE``)
or a full queue (``RESOURCE_EXHAUSTED``: refused before any work) goes to another replica within
its deadline; a timed-out request is not resent (the server may still be computing it).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import random
import socket
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Literal

from semlink.device.background import Background
from semlink.device.breaker import CircuitBreaker
from semlink.device.client import ServerClient, ServerReply
from semlink.protocol.reply import Load

log = logging.getLogger(__name__)

Policy = Literal["expected-delay", "round-robin"]
POLICIES: tuple[Policy, ...] = ("expected-delay", "round-robin")
NETWORK_EWMA = 0.3  # weight of the newest round trip in a replica's network time
CLOSE_GRACE_S = 30.0  # a replica gone from DNS keeps its channel this long for requests in flight


@dataclass(frozen=True)
class Target:
    """One ``HOST:PORT`` the device was given; a name may stand for several replicas."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Target:
        """``HOST:PORT`` (``[::1]:8001`` too); raises ``ValueError`` naming the fix."""
        host, _, port = text.strip().rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"server must be HOST:PORT, got {text!r}")
        return cls(host, int(port))

    @property
    def is_address(self) -> bool:
        """Whether the host is a literal IP address (nothing to resolve)."""
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True


def parse_targets(text: str) -> list[Target]:
    """Comma-separated ``HOST:PORT`` targets; raises ``ValueError`` on a bad or empty list."""
    targets = [Target.parse(t) for t in text.split(",") if t.strip()]
    if not targets:
        raise ValueError("server needs at least one HOST:PORT")
    return targets


def join_host(host: str, port: int) -> str:
    """``host:port``, bracketing an IPv6 host."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Replica:
    """One server replica: its channel and breaker, and what the device has learned of it."""

    def __init__(self, address: str, client: ServerClient, breaker: CircuitBreaker) -> None:
        self.address, self.client, self.breaker = address, client, breaker
        self.load: Load | None = None
        self.mine_at_report = 0  # this device's requests the last reported depth included
        self.network_ms: float | None = None
        self.in_flight = 0
        self.ready: bool | None = None
        self.answered = 0
        self.gone_since: float | None = None  # no longer resolved: closes once idle

    def queue_estimate(self) -> int:
        """Requests ahead of a new one: the others' the server last reported, plus ours now."""
        others = 0 if self.load is None else max(self.load.queue_depth - self.mine_at_report, 0)
        return others + self.in_flight

    def expected_ms(self, default_network_ms: float, default_service_ms: float) -> float:
        """Network time plus the queue's and its own service time, in ms."""
        network = self.network_ms if self.network_ms is not None else default_network_ms
        service = (
            self.load.service_ms
            if self.load is not None and self.load.service_ms > 0
            else default_service_ms
        )
        return network + (self.queue_estimate() + 1) * service

    def observe(self, load: Load | None, in_flight_then: int) -> None:
        """Takes a load report that counted ``in_flight_then`` of this device's requests."""
        if load is not None:
            self.load, self.mine_at_report = load, in_flight_then

    async def infer(self, request: Any, timeout_s: float) -> ServerReply:
        """Sends one request to this replica, learning its load and network time from the reply;
        raises what :meth:`ServerClient.infer` raises."""
        self.in_flight += 1
        try:
            reply = await self.client.infer(request, timeout_s)
        finally:
            self.in_flight -= 1
        # the server decremented its count before answering: the report counts our others only
        self.observe(reply.load, self.in_flight)
        self.observe_network(reply.network_ms)
        self.answered += 1
        return reply

    def observe_network(self, ms: float) -> None:
        """Takes one measured network time (a round trip less the server's own time)."""
        self.network_ms = (
            ms
            if self.network_ms is None
            else (1 - NETWORK_EWMA) * self.network_ms + NETWORK_EWMA * ms
        )

    def snapshot(self, default_network_ms: float, default_service_ms: float) -> dict[str, Any]:
        """What the device knows of this replica, for ``/v2/health/ready`` and the dashboard."""
        return {
            "address": self.address,
            "ready": self.ready,
            "breaker": self.breaker.state,
            "queue_depth": None if self.load is None else self.load.queue_depth,
            "service_ms": None if self.load is None else round(self.load.service_ms, 3),
            "network_ms": None if self.network_ms is None else round(self.network_ms, 3),
            "in_flight": self.in_flight,
            "expected_ms": round(self.expected_ms(default_network_ms, default_service_ms), 3),
            "answered": self.answered,
        }


class ReplicaSet(Background):
    """The replicas behind the device's targets, kept current in the background, and the
    choice of one per request (see the module's docstring)."""

    def __init__(
        self,
        targets: list[Target],
        make_client: Callable[[str, str | None], ServerClient],
        make_breaker: Callable[[], CircuitBreaker],
        policy: Policy = "expected-delay",
        probe_s: float = 1.0,
        resolve_s: float = 2.0,
        seed: int | None = None,
    ) -> None:
        """``make_client(address, server_name)`` opens a channel to one replica (``server_name``
        is the name it was resolved from, for TLS); ``make_breaker()`` makes its breaker."""
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        self.targets, self.policy = targets, policy
        self.make_client, self.make_breaker = make_client, make_breaker
        self.probe_s, self.resolve_s = probe_s, resolve_s
        self.replicas: dict[str, Replica] = {}
        self._rr = itertools.count()
        self._random = random.Random(seed)
        self.state = "unknown"  # reachable (some replica ready) | unreachable | unknown
        self._resolve_failed: set[Target] = set()
        # literal addresses need no resolution: they are there from the start
        for t in targets:
            if t.is_address:
                self._add(join_host(t.host, t.port), None)

    # -- membership ---------------------------------------------------------------------------

    def _add(self, address: str, server_name: str | None) -> None:
        replica = self.replicas.get(address)
        if replica is not None:
            replica.gone_since = None
            return
        self.replicas[address] = Replica(
            address, self.make_client(address, server_name), self.make_breaker()
        )
        if len(self.replicas) > 1 or self.state != "unknown":
            log.info("replica %s joins (%d known)", address, len(self.replicas))

    async def resolve(self) -> None:
        """Resolves every named target now: new addresses become replicas, addresses no name
        gives any more leave (once their requests in flight are done). A failed lookup keeps
        what the name gave before."""
        loop = asyncio.get_running_loop()
        seen: set[str] = set()
        failed: set[Target] = set()
        for t in self.targets:
            if t.is_address:
                seen.add(join_host(t.host, t.port))
                continue
            try:
                infos = await loop.getaddrinfo(t.host, t.port, type=socket.SOCK_STREAM)
            except OSError as exc:
                failed.add(t)
                if t not in self._resolve_failed:
                    log.warning("cannot resolve server %s (%s): keeping its replicas", t.host, exc)
                continue
            # IPv4 where the name has it: "localhost" gives ::1 and 127.0.0.1, one server
            v4 = [str(i[4][0]) for i in infos if i[0] == socket.AF_INET]
            for host in dict.fromkeys(v4 or [str(i[4][0]) for i in infos]):
                address = join_host(host, t.port)
                seen.add(address)
                self._add(address, t.host)
        self._resolve_failed = failed
        if failed:  # what a failed name gave stays
            return
        now = time.monotonic()
        for address, replica in list(self.replicas.items()):
            if address in seen:
                continue
            if replica.gone_since is None:
                replica.gone_since = now
                log.info("replica %s left the name's answers", address)
            if replica.in_flight == 0 or now - replica.gone_since > CLOSE_GRACE_S:
                del self.replicas[address]
                await replica.client.close()

    async def probe(self) -> None:
        """``ServerReady`` to every replica at once: readiness and load; logs a change of the
        device's view (some replica reachable, or none)."""
        replicas = list(self.replicas.values())
        timeout = min(self.probe_s, 2.0)
        results = await asyncio.gather(*(self._timed_probe(r, timeout) for r in replicas))
        for replica, (ready, load, rtt_ms) in zip(replicas, results, strict=True):
            if replica.ready is not None and ready != replica.ready and len(replicas) > 1:
                log.info("replica %s %s", replica.address, "ready" if ready else "not ready")
            replica.ready = ready
            replica.observe(load, replica.in_flight)
            if ready:
                replica.observe_network(rtt_ms)
        state = "reachable" if any(ready for ready, _, _ in results) else "unreachable"
        if state != self.state:
            if state == "reachable":
                log.info("server %s answers: offloading", self.describe())
            else:
                log.warning(
                    "server %s is unreachable or not ready: answering on the device (degraded) "
                    "until it answers; check --server / SEMLINK_DEVICE_SERVER, the link and TLS",
                    self.describe(),
                )
        self.state = state

    @staticmethod
    async def _timed_probe(replica: Replica, timeout: float) -> tuple[bool, Load | None, float]:
        t0 = time.perf_counter()
        ready, load = await replica.client.probe(timeout)
        return ready, load, 1000.0 * (time.perf_counter() - t0)

    async def _poll(self) -> None:
        last_probe = -float("inf")
        while True:
            with contextlib.suppress(Exception):  # a bad answer never stops the loop
                await self.resolve()
            if time.monotonic() - last_probe >= self.probe_s:
                last_probe = time.monotonic()
                try:
                    await self.probe()
                except Exception:
                    log.exception("probing the replicas failed")
            await asyncio.sleep(min(self.resolve_s, self.probe_s))

    async def close(self) -> None:
        """Stops the background loop and closes every channel."""
        await self.stop()
        for replica in self.replicas.values():
            await replica.client.close()

    # -- the choice ---------------------------------------------------------------------------

    def defaults(self) -> tuple[float, float]:
        """The optimistic network and service times of a replica not yet measured."""
        nets = [r.network_ms for r in self.replicas.values() if r.network_ms is not None]
        services = [
            r.load.service_ms
            for r in self.replicas.values()
            if r.load is not None and r.load.service_ms > 0
        ]
        return (min(nets) if nets else 0.0), (min(services) if services else 0.0)

    def ranked(self, exclude: Collection[str] = ()) -> list[tuple[float, Replica]]:
        """Replicas still in service (not leaving, breaker not open), best first by the policy,
        each with its expected delay in ms; those in ``exclude`` (already tried) come last."""
        net, service = self.defaults()
        live = [
            r
            for r in self.replicas.values()
            if r.gone_since is None and r.breaker.state != "open" and r.ready is not False
        ]
        if not live:  # none known ready: try the ones whose breaker lets a request through
            live = [r for r in self.replicas.values() if r.breaker.state != "open"]
        scored = [(r.expected_ms(net, service), r) for r in live]
        if self.policy == "round-robin":
            start = next(self._rr) % max(len(scored), 1)
            order = sorted(scored, key=lambda p: p[1].address)
            scored = order[start:] + order[:start]
        else:  # two random candidates, the better first; the rest by expected delay after them
            untried = [p for p in scored if p[1].address not in exclude]
            pair = self._random.sample(untried, min(2, len(untried)))
            pair.sort(key=lambda p: p[0])
            rest = sorted(
                (p for p in scored if all(p[1] is not q[1] for q in pair)), key=lambda p: p[0]
            )
            scored = pair + rest
        return sorted(scored, key=lambda p: p[1].address in exclude)  # stable: keeps the order

    def choose(self, exclude: Collection[str] = ()) -> tuple[Replica, float] | None:
        """The replica for the next try and its expected delay, or ``None`` when every breaker
        is open. Calls the breaker's ``allow`` (a half-open breaker lets one trial through)."""
        for expected, replica in self.ranked(exclude):
            if replica.breaker.allow():
                return replica, expected
        return None

    def describe(self) -> str:
        """The targets as given, for log lines."""
        return ",".join(join_host(t.host, t.port) for t in self.targets)

    def retry_in_s(self) -> float:
        """Seconds until some replica's breaker lets a trial through."""
        return min((r.breaker.retry_in_s() for r in self.replicas.values()), default=0.0)

    def breaker_state(self) -> str:
        """``closed`` when some replica takes requests, else ``half-open`` or ``open``."""
        states = {r.breaker.state for r in self.replicas.values()}
        for state in ("closed", "half-open", "open"):
            if state in states:
                return state
        return "closed"

    def snapshot(self) -> list[dict[str, Any]]:
        """Every replica as the device sees it."""
        net, service = self.defaults()
        return [r.snapshot(net, service) for r in self.replicas.values()]
