"""Traces and the link emulator (in-process asyncio, real sockets on loopback)."""

import asyncio

import numpy as np
import pytest

from semlink.bench.link import measure
from semlink.link.traces import (
    ConstantSchedule,
    TraceError,
    TraceSchedule,
    parse_mahimahi,
    parse_rate,
    rates_to_timestamps,
    synthetic_rates,
)


def test_parse_mahimahi_reports_the_bad_line():
    assert list(parse_mahimahi("0\n5\n5\n9\n")) == [0, 5, 5, 9]
    with pytest.raises(TraceError, match=r"t:3: timestamp 4 is smaller than the previous 5"):
        parse_mahimahi("1\n5\n4\n", "t")
    with pytest.raises(TraceError, match=r"t:2: '1.5' is not an integer"):
        parse_mahimahi("1\n1.5\n", "t")
    with pytest.raises(TraceError, match="no timestamps"):
        parse_mahimahi("\n\n", "t")


def test_trace_schedule_wraps():
    s = TraceSchedule(
        np.array([1, 1, 2, 10])
    )  # period 10 ms, 4 opportunities per period (3 before t=10)
    assert s.opportunities_until(0) == 0
    assert s.opportunities_until(2) == 2
    assert s.opportunities_until(10) == 3
    assert s.opportunities_until(12) == 5
    assert s.average_bps() == pytest.approx(3 * 12000 / 0.010)


@pytest.mark.parametrize(
    "schedule",
    [
        ConstantSchedule(1e6),
        ConstantSchedule(333_333.0),
        TraceSchedule(np.array([1, 1, 2, 10])),
        TraceSchedule(np.array([5, 5, 5])),
        TraceSchedule(rates_to_timestamps(synthetic_rates("gilbert-elliott", 5, seed=2), 100)),
    ],
)
def test_the_cumulative_table_is_opportunities_until_at_every_millisecond(schedule):
    # the replay reads the vectorised table; the emulator asks opportunities_until: one answer
    want = [schedule.opportunities_until(t) for t in range(7000)]
    assert schedule.cumulative(7000).tolist() == want


@pytest.mark.parametrize("kind", ["constant", "step", "gilbert-elliott", "random-walk"])
def test_synthetic_traces_hit_their_rate(kind):
    rates = synthetic_rates(kind, 20, seed=1, low_bps=1e6, high_bps=4e6)
    sched = TraceSchedule(rates_to_timestamps(rates, 100))
    assert sched.average_bps() == pytest.approx(rates.mean(), rel=0.02)
    assert rates.min() >= 1e6 * 0.99 and rates.max() <= 4e6 * 1.01


def test_parse_rate():
    assert (
        parse_rate("5mbit") == 5e6 and parse_rate("100kbit") == 1e5 and parse_rate("2000") == 2000
    )
    with pytest.raises(ValueError, match="500kbit"):
        parse_rate("fast")


@pytest.mark.parametrize("rate", [2e5, 2e6, 2e7])
def test_link_shapes_to_the_rate(rate):
    m = asyncio.run(measure(ConstantSchedule(rate), 2.0))
    assert m["measured_bps"] == pytest.approx(rate, rel=0.08)
    assert m["state_capacity_bps"] == pytest.approx(rate, rel=0.05)


def test_link_follows_a_trace():
    sched = TraceSchedule(rates_to_timestamps(synthetic_rates("constant", 5, high_bps=3e6), 100))
    m = asyncio.run(measure(sched, 2.0))
    assert m["measured_bps"] == pytest.approx(3e6, rel=0.08)


def test_link_adds_the_one_way_delay():
    m = asyncio.run(measure(ConstantSchedule(1e7), 0.5, delay_ms=80.0))
    assert 75.0 <= m["first_byte_ms"] <= 200.0


def test_connect_reaches_an_allowed_upstream_and_an_open_proxy_is_refused():
    """A device reaches each replica through its one link by HTTP CONNECT; the link forwards only
    to its upstreams (by name, or an address the name resolves to), and plain connections still
    go to the first upstream."""
    from semlink.link.shaper import Direction, LinkEmulator, SnrProcess

    async def run() -> tuple[bytes, bytes, bytes, bytes]:
        async def echo(tag: bytes):
            async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                w.write(tag + await r.readexactly(5))
                await w.drain()
                w.close()

            server = await asyncio.start_server(handle, "127.0.0.1", 0)
            return server, server.sockets[0].getsockname()[1]

        (a, pa), (b, pb) = await echo(b"A:"), await echo(b"B:")
        fast = ConstantSchedule(1e8)
        link = LinkEmulator(
            [("127.0.0.1", pa), ("localhost", pb)],
            Direction("uplink", fast, 0.0, 100_000),
            Direction("downlink", fast, 0.0, 100_000),
            SnrProcess(),
        )
        server, port = await link.start("127.0.0.1", 0)

        async def dial(first: bytes, then: bytes = b"") -> bytes:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(first)
            await w.drain()
            if then:
                head = await r.readuntil(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200"), head
                w.write(then)
            data = await asyncio.wait_for(r.read(), 5)
            w.close()
            return data

        plain = await dial(b"hello")
        # "localhost" is an upstream name: its address is allowed by what the name resolves to
        by_address = await dial(f"CONNECT 127.0.0.1:{pb} HTTP/1.1\r\n\r\n".encode(), b"howdy")
        by_name = await dial(
            f"CONNECT localhost:{pb} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), b"hi!!!"
        )
        refused = await dial(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n".encode())
        server.close()
        await link.close()
        a.close()
        b.close()
        return plain, by_address, by_name, refused

    plain, by_address, by_name, refused = asyncio.run(run())
    assert plain == b"A:hello"
    assert by_address == b"B:howdy" and by_name == b"B:hi!!!"
    assert refused.startswith(b"HTTP/1.1 403") and b"not an upstream" in refused
    assert b"--upstream" in refused  # the refusal names the fix


def test_replay_restarts_the_trace_and_an_outage_reports_a_bounded_queue_delay():
    from semlink.link.shaper import (
        MAX_QUEUE_DELAY_MS,
        Direction,
        LinkEmulator,
        SnrProcess,
        _Conn,
    )

    # 20 ms of opportunities, then an outage to 10 s (the trace wraps there)
    trace = TraceSchedule(np.array([*range(20), 10_000]))

    async def run() -> tuple[float, float, dict, float]:
        up = Direction("uplink", trace, 0.0, 1_000_000, window_s=0.02)
        down = Direction("downlink", trace, 0.0, 1_000_000)
        link = LinkEmulator([("127.0.0.1", 1)], up, down, SnrProcess())
        await asyncio.sleep(0.05)  # into the outage
        late = up.now_ms()
        await up.enqueue(_Conn(None), b"x" * 30_000)  # type: ignore[arg-type]  # queued, nothing drains it in an outage
        stuck = up.state()
        state = link.replay()
        return late, up.now_ms(), stuck, state["rtt_ms"]

    late, after, stuck, _ = asyncio.run(run())
    assert late >= 50 and after < 20  # the clock starts again at the trace's start
    # no capacity over the last window: the queue's drain time is unknown, reported as the bound
    assert stuck["capacity_bps"] == 0 and stuck["queue_delay_ms"] == MAX_QUEUE_DELAY_MS
