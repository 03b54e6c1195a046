"""``semlink bench link``: does the emulator deliver the rate it is told to?

For each rate, a sender saturates the link for ``seconds`` (after a warm-up) towards a sink on
loopback; the measured goodput is compared with the schedule's average rate. Target: within 5 %
from 100 kbit/s to 100 Mbit/s.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from semlink.link.shaper import Direction, LinkEmulator, SnrProcess
from semlink.link.traces import ConstantSchedule, Schedule

RATES_BPS = (1e5, 1e6, 1e7, 1e8)


async def measure(
    schedule: Schedule, seconds: float, delay_ms: float = 0.0, warmup_s: float = 0.5
) -> dict[str, float]:
    """Saturates one link direction; returns measured bit/s, first-byte delay (ms) and the link state."""
    received = 0
    first: list[float] = []

    async def sink(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        nonlocal received
        while chunk := await r.read(1 << 16):
            if not first:
                first.append(time.monotonic())
            received += len(chunk)
        w.close()

    upstream = await asyncio.start_server(sink, "127.0.0.1", 0)
    queue = max(64_000, int(schedule.average_bps() / 8 * 0.05))  # 50 ms of buffering
    link = LinkEmulator(
        ("127.0.0.1", upstream.sockets[0].getsockname()[1]),
        Direction("uplink", schedule, delay_ms, queue),
        Direction("downlink", schedule, delay_ms, queue),
        SnrProcess(),
    )
    server, port = await link.start("127.0.0.1", 0)
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    t0 = time.monotonic()

    async def feed() -> None:
        payload = b"x" * (1 << 16)
        while True:
            writer.write(payload)
            await writer.drain()

    feeder = asyncio.ensure_future(feed())
    await asyncio.sleep(warmup_s)
    start_bytes, start = received, time.monotonic()
    await asyncio.sleep(seconds)
    measured = (received - start_bytes) * 8 / (time.monotonic() - start)
    state = link.state()
    feeder.cancel()
    writer.close()
    await link.close()
    server.close()
    upstream.close()
    await asyncio.gather(server.wait_closed(), upstream.wait_closed(), return_exceptions=True)
    return {
        "measured_bps": measured,
        "first_byte_ms": (first[0] - t0) * 1000.0 if first else float("nan"),
        **{
            "state_capacity_bps": state["uplink"]["capacity_bps"],
            "state_throughput_bps": state["uplink"]["throughput_bps"],
        },
    }


def run(seconds: float = 10.0) -> list[dict[str, float]]:
    rows = []
    for rate in RATES_BPS:
        m = asyncio.run(measure(ConstantSchedule(rate), seconds))
        rows.append({"rate_bps": rate, **m, "error": m["measured_bps"] / rate - 1.0})
    return rows


def main(seconds: float, json_path: str | None) -> int:
    rows = run(seconds)
    print(f"link emulator accuracy, {seconds:g} s per rate (target: within 5 %)")
    print(f"{'set rate':>12} {'measured':>12} {'error':>8}")
    for r in rows:
        print(
            f"{r['rate_bps'] / 1e6:>9.3f} Mb {r['measured_bps'] / 1e6:>9.3f} Mb {100 * r['error']:>7.2f}%"
        )
    if json_path:
        Path(json_path).write_text(json.dumps({"link": rows}, indent=2) + "\n")
    return 0 if all(abs(r["error"]) <= 0.05 for r in rows) else 1
