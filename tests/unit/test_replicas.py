"""The device's replica set: parsing targets, membership as names resolve, and the choice.

The choice is tested on the replicas' bookkeeping (loads as servers report them); the requests,
failover and a killed or added replica run on real servers in
``tests/integration/test_replicas.py``.
"""

from __future__ import annotations

import asyncio
import functools
import socket

import pytest

from semlink.device.breaker import CircuitBreaker
from semlink.device.client import ServerClient
from semlink.device.replicas import ReplicaSet, Target, parse_targets
from semlink.device.settings import DeviceSettings
from semlink.protocol.reply import Load


def run(test):
    """Runs an async test on a fresh event loop (the suite has no asyncio plugin)."""

    @functools.wraps(test)
    def sync(*args, **kwargs):
        return asyncio.run(test(*args, **kwargs))

    return sync


def replica_set(targets: str, policy: str = "expected-delay") -> ReplicaSet:
    return ReplicaSet(
        parse_targets(targets),
        lambda address, name: ServerClient(address, server_name=name),
        lambda: CircuitBreaker(3, 2.0),
        policy=policy,  # type: ignore[arg-type]
    )


def test_targets_parse_and_bad_ones_name_the_fix():
    assert parse_targets("a:1, 10.0.0.2:8001,[::1]:9") == [
        Target("a", 1),
        Target("10.0.0.2", 8001),
        Target("::1", 9),
    ]
    for bad in ("", "a", "a:b", ":80", "a:0", "a:70000"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_targets(bad)
    with pytest.raises(ValueError, match="HOST:PORT"):
        DeviceSettings(server="a:1,b")
    with pytest.raises(ValueError, match="HOST:PORT"):
        DeviceSettings(server="a:1", proxy="link")


def test_load_from_trailing_metadata_ignores_what_another_server_sends():
    assert Load.from_metadata(
        (("semlink-queue-depth", "3"), ("semlink-service-ms", "4.5"))
    ) == Load(3, 4.5)
    assert Load.from_metadata(()) is None
    assert Load.from_metadata((("semlink-queue-depth", "x"), ("semlink-service-ms", "1"))) is None
    assert Load.from_metadata((("semlink-queue-depth", "-1"), ("semlink-service-ms", "1"))) is None


@run
async def test_expected_delay_prefers_the_faster_replica_until_its_queue_outweighs_it():
    rs = replica_set("10.0.0.1:1,10.0.0.2:1")
    fast, slow = rs.replicas["10.0.0.1:1"], rs.replicas["10.0.0.2:1"]
    fast.network_ms = slow.network_ms = 2.0
    fast.observe(Load(0, 5.0), 0)
    slow.observe(Load(0, 50.0), 0)
    assert rs.choose()[0] is fast
    # (q + 1) * 5 > 50 from q = 10 requests ahead on the fast one
    fast.observe(Load(10, 5.0), 0)
    replica, expected = rs.choose()
    assert replica is slow and expected == pytest.approx(52.0)
    # this device's own requests in flight count, and the ones the report included do not twice
    fast.observe(Load(4, 5.0), 4)
    fast.in_flight = 4
    assert fast.queue_estimate() == 4
    await asyncio.gather(*(r.client.close() for r in rs.replicas.values()))


@run
async def test_a_replica_never_measured_is_tried_at_once_and_round_robin_cycles():
    rs = replica_set("10.0.0.1:1,10.0.0.2:1,10.0.0.3:1")
    known = rs.replicas["10.0.0.1:1"]
    known.network_ms = 3.0
    known.observe(Load(2, 10.0), 0)
    assert rs.choose()[0].address != known.address  # optimistic for the unmeasured ones
    rr = replica_set("10.0.0.1:1,10.0.0.2:1,10.0.0.3:1", "round-robin")
    picks = [rr.choose()[0].address for _ in range(6)]
    assert sorted(picks[:3]) == sorted(rr.replicas) and picks[:3] == picks[3:]
    for s in (rs, rr):
        await asyncio.gather(*(r.client.close() for r in s.replicas.values()))


@run
async def test_open_breakers_and_unready_replicas_are_skipped_tried_ones_come_last():
    rs = replica_set("10.0.0.1:1,10.0.0.2:1")
    a, b = rs.replicas["10.0.0.1:1"], rs.replicas["10.0.0.2:1"]
    a.observe(Load(0, 1.0), 0)
    b.observe(Load(0, 9.0), 0)
    assert rs.choose(exclude=[a.address])[0] is b
    for _ in range(3):
        a.breaker.failure()
    assert rs.choose()[0] is b
    b.ready = False  # the probe said not ready, but nothing else is left: it is tried
    assert rs.choose()[0] is b
    a.breaker.success()  # a is back: the unready one is skipped
    assert rs.choose()[0] is a
    for _ in range(3):
        a.breaker.failure()
    b.ready = None
    for _ in range(3):
        b.breaker.failure()
    assert rs.choose() is None and rs.breaker_state() == "open"
    assert 0 < rs.retry_in_s() <= 2.0
    await asyncio.gather(*(r.client.close() for r in rs.replicas.values()))


@run
async def test_names_resolve_to_replicas_that_join_and_leave(monkeypatch):
    answers = {"svc": ["10.1.0.1", "10.1.0.2"]}
    loop = asyncio.get_running_loop()

    async def getaddrinfo(host, port, type=0):  # noqa: A002 (asyncio's own keyword)
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, type, 6, "", (a, port)) for a in answers[host]]

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    rs = replica_set("svc:8001")
    assert rs.replicas == {}
    await rs.resolve()
    assert sorted(rs.replicas) == ["10.1.0.1:8001", "10.1.0.2:8001"]
    assert rs.replicas["10.1.0.1:8001"].client.address == "10.1.0.1:8001"
    answers["svc"] = ["10.1.0.2", "10.1.0.3"]  # one scaled in, one out
    leaving = rs.replicas["10.1.0.1:8001"]
    leaving.in_flight = 1  # a request still out to it: it stays, out of the choice
    await rs.resolve()
    assert sorted(rs.replicas) == ["10.1.0.1:8001", "10.1.0.2:8001", "10.1.0.3:8001"]
    assert all(r is not leaving for _, r in rs.ranked())
    leaving.in_flight = 0
    await rs.resolve()
    assert sorted(rs.replicas) == ["10.1.0.2:8001", "10.1.0.3:8001"]
    del answers["svc"]  # DNS down: keep what the name gave
    await rs.resolve()
    assert sorted(rs.replicas) == ["10.1.0.2:8001", "10.1.0.3:8001"]
    await rs.close()


@run
async def test_localhost_is_one_replica_not_one_per_address_family():
    rs = replica_set("localhost:65000")
    await rs.resolve()
    assert list(rs.replicas) == ["127.0.0.1:65000"]
    await rs.close()


@run
async def test_a_stream_to_no_server_fails_fast_as_unavailable_like_a_call():
    import grpc
    import numpy as np

    from semlink.device.client import build_request
    from semlink.procs import reserve_port

    client = ServerClient(f"127.0.0.1:{reserve_port()}", stream=True)
    request = build_request("m", "", "r1", {"tokens": np.zeros((1, 4, 32), np.float16)}, {})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.infer(request, 2.0)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert request.id == "r1"  # the stream's own id never leaks into the caller's request
    await client.close()


@run
async def test_a_stream_that_dies_under_a_write_is_unavailable_and_so_retried_elsewhere():
    """A server killed mid-stream can make the write fail with INTERNAL ("Internal error from
    Core", seen in bench replicas' churn): the request reached no live server, so the client
    reports UNAVAILABLE, which the device retries on another replica."""
    import grpc
    import numpy as np

    from semlink.device.client import build_request
    from semlink.procs import reserve_port

    class DeadStream:  # the open call, as grpc.aio leaves it after its transport died
        def done(self) -> bool:
            return False

        def cancel(self) -> None:
            pass

        async def write(self, request) -> None:
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.INTERNAL,
                grpc.aio.Metadata(),
                grpc.aio.Metadata(),
                "Internal error from Core",
            )

    client = ServerClient(f"127.0.0.1:{reserve_port()}", stream=True)
    client._call = DeadStream()
    request = build_request("m", "", "r1", {"tokens": np.zeros((1, 4, 32), np.float16)}, {})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.infer(request, 2.0)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "INTERNAL" in err.value.details() and request.id == "r1"
    await client.close()
