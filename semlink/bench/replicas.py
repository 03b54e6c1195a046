"""``semlink bench replicas``: one device fleet, several edge servers, on real processes.

Three server replicas on loopback, one slowed by a real CPU quota (cgroups: ``--cpu-quota``),
and ``devices`` devices, each behind its own link emulator that it uses as an HTTP CONNECT proxy
to every replica (one shaped uplink per device), under ``concurrency`` requests in flight each.

- **choice**: the same load with ``--balance expected-delay`` and with ``--balance round-robin``
  (the devices restarted between the two, the servers kept): p50 / p95 / p99 of the client's
  latency and the share of requests each replica answered.
- **churn** (expected-delay): a request stream during which one healthy replica is killed
  (SIGKILL, no drain) and, later, a fourth replica starts on an address the devices were given
  up front (a static list; DNS names that gain an address are covered in the unit tests).
  ``lost``: requests without an HTTP 200; ``duplicated``: request ids a device handled more than
  once (its log); ``server_repeats``: ids two servers both computed (the device retries only on
  ``UNAVAILABLE`` / ``RESOURCE_EXHAUSTED``, before any work, so a repeat can only be a request
  the killed server had computed but not yet sent back); ``join_s``: from the new replica
  answering ``ready`` to the first request it answered.

Every process shares this machine's cores, the load generator included; the CPU quota is the one
real difference between the replicas.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from semlink.bench import FULL_SPEED, model_and_test_split, run_and_report
from semlink.bench.reliability import Outcome, handled_ids, stream
from semlink.procs import Processes, reserve_port, start_replica

JOIN_WINDOW_S = 6.0  # the least time a replica added under load is given under that load


@dataclass
class ReplicasBenchConfig:
    servers: int = 3
    """Replicas at the start (the churn phase kills one and adds one)."""
    slow_quota: float = 0.05
    """CPU cores of the slowed replica's quota."""
    devices: int = 2
    concurrency: int = 6
    """Requests in flight per device."""
    seconds: float = 20.0
    """Length of each load phase."""
    rate_per_s: float = 40.0
    """Requests per second per device (paced; 0: as fast as the answers come)."""
    model: str = "scene-vit"
    """a token-selection pipeline of the zoo (digits-vit: the digits-canvas fixture's)"""
    out: str = "runs/bench-replicas"


class Fleet:
    """Servers and devices (each behind its own link) on loopback, for this benchmark and the
    integration test of the replica choice."""

    def __init__(self, procs: Processes, cfg: ReplicasBenchConfig, spare: int = 1) -> None:
        self.procs, self.cfg = procs, cfg
        # every replica's port is known up front: the links allow them, the devices list them
        self.grpc = [reserve_port() for _ in range(cfg.servers + spare)]
        self.http = [reserve_port() for _ in range(cfg.servers + spare)]
        self.links = [(reserve_port(), reserve_port()) for _ in range(cfg.devices)]
        self.device_ports = [reserve_port() for _ in range(cfg.devices)]

    def targets(self) -> str:
        return ",".join(f"127.0.0.1:{p}" for p in self.grpc)

    def start_server(self, i: int, quota: float | None = None) -> None:
        start_replica(
            self.procs, f"server-{i}", self.grpc[i], self.http[i], quota, (self.cfg.model,)
        )

    def start_links(self) -> None:
        for d, (port, state) in enumerate(self.links):
            self.procs.start(
                f"link-{d}",
                "link",
                "--listen",
                f"127.0.0.1:{port}",
                "--upstream",
                self.targets(),
                "--state-port",
                str(state),
                "--rate",
                "100mbit",
                "--delay-ms",
                "2",
            )
        for d, (_, state) in enumerate(self.links):
            self.procs.wait_http(f"link-{d}", f"http://127.0.0.1:{state}/state")

    def start_devices(self, policy: str, *extra: str) -> None:
        for d, (port, state) in enumerate(self.links):
            self.procs.start(
                f"device-{d}",
                "device",
                "--server",
                self.targets(),
                "--proxy",
                f"127.0.0.1:{port}",
                "--link-state-url",
                f"http://127.0.0.1:{state}/state",
                "--balance",
                policy,
                "--server-probe-s",
                "0.5",
                "--resolve-s",
                "0.5",
                "--http-port",
                str(self.device_ports[d]),
                "--model-name",
                self.cfg.model,
                "--deadline-ms",
                "10000",
                "--insecure",
                *extra,
            )
        for d, port in enumerate(self.device_ports):
            self.procs.wait_http(f"device-{d}", f"http://127.0.0.1:{port}/v2/health/ready")
        # every device sees every running replica before the load starts
        deadline = time.monotonic() + 15.0
        running = sum(1 for n in self.procs.children if n.startswith("server-"))
        while time.monotonic() < deadline:
            docs = [
                httpx.get(f"http://127.0.0.1:{p}/v2/health/ready", timeout=2).json()
                for p in self.device_ports
            ]
            if all(doc["replicas_ready"] >= running for doc in docs):
                return
            time.sleep(0.2)
        raise TimeoutError(f"devices do not see {running} ready replicas: {docs}")

    def stop_devices(self) -> None:
        self.procs.stop(*(f"device-{d}" for d in range(self.cfg.devices)))

    def load(
        self,
        images: np.ndarray,
        prefix: str,
        seconds: float,
        events: Sequence[tuple[float, Any]] = (),
    ) -> tuple[list[Outcome], float]:
        """Every device streams for ``seconds``; each ``(t, fn)`` of ``events`` runs at ``t``
        seconds (in a thread, so the stream goes on). Returns the outcomes and the start time."""
        cfg = self.cfg
        rate = cfg.rate_per_s or None
        n = int(seconds * cfg.rate_per_s) if rate else int(seconds * 50)
        t0 = time.perf_counter()

        async def run() -> list[list[Outcome]]:
            async def at(t: float, fn: Any) -> None:
                await asyncio.sleep(max(0.0, t - (time.perf_counter() - t0)))
                await asyncio.to_thread(fn)

            jobs = [
                stream(
                    f"http://127.0.0.1:{port}/v2/models/{cfg.model}/infer",
                    images,
                    f"{prefix}{d}",
                    n,
                    cfg.concurrency,
                    t0,
                    rate_per_s=rate,
                )
                for d, port in enumerate(self.device_ports)
            ]
            timed = asyncio.gather(*(at(t, fn) for t, fn in events))  # runs beside the streams
            outcomes = await asyncio.gather(*jobs)
            await timed
            return outcomes

        return [o for per in asyncio.run(run()) for o in per], t0


def latency(outs: list[Outcome]) -> dict[str, Any]:
    """Client latency percentiles, outcomes and who answered."""
    ok = [o for o in outs if o.status == 200]
    lat = np.array([1000 * (o.answered_s - o.sent_s) for o in ok]) if ok else np.array([np.nan])
    return {
        "requests": len(outs),
        "answered": len(ok),
        "lost": sum(o.status == 0 for o in outs),
        "degraded": sum(o.degraded for o in ok),
        "p50_ms": float(np.percentile(lat, 50)),
        "p95_ms": float(np.percentile(lat, 95)),
        "p99_ms": float(np.percentile(lat, 99)),
        "by_replica": dict(Counter(o.replica or "device" for o in ok)),
    }


def server_repeats(procs: Processes) -> int:
    """Request ids that more than one server computed."""
    pattern = re.compile(r"request (\S+): \S+ v\S+,")
    seen: Counter = Counter()
    for path in procs.log_dir.glob("server-*.log"):
        seen.update(set(pattern.findall(path.read_text())))
    return sum(1 for c in seen.values() if c > 1)


def churn(fleet: Fleet, images: np.ndarray) -> dict[str, Any]:
    """Kill a healthy replica a third of the way in, start a spare one at two thirds."""
    cfg = fleet.cfg
    fleet.start_devices("expected-delay")
    seconds = max(cfg.seconds, 12.0)
    ready_at: list[float] = []  # perf_counter when the new replica answered ready
    spare = cfg.servers

    def kill() -> None:
        fleet.procs.kill("server-0")

    def add() -> None:
        fleet.start_server(spare)
        ready_at.append(time.perf_counter())

    outs, t0 = fleet.load(images, "churn", seconds, [(seconds / 3, kill), (2 * seconds / 3, add)])
    # a loaded machine can take most of the last third to start the spare: the load goes on
    # until the spare has had JOIN_WINDOW_S of it, so its join is measured, not cut off
    short_s = JOIN_WINDOW_S - (t0 + seconds - ready_at[0]) if ready_at else 0.0
    if short_s > 0:
        more, t1 = fleet.load(images, "churn-tail", max(short_s, 2.0))
        outs += [
            replace(o, sent_s=o.sent_s + t1 - t0, answered_s=o.answered_s + t1 - t0) for o in more
        ]
    fleet.stop_devices()
    joined = f"127.0.0.1:{fleet.grpc[spare]}"
    firsts = [t0 + o.answered_s for o in outs if o.replica == joined and o.status == 200]
    # the new replica's share of what was sent once it was ready: a count alone depends on how
    # fast this machine answered at all in the last third
    after = (
        [o for o in outs if o.status == 200 and t0 + o.sent_s >= ready_at[0]] if ready_at else []
    )
    result = latency(outs)
    result.update(
        duplicated=sum(
            1
            for c in handled_ids(fleet.procs, [f"device-{d}" for d in range(cfg.devices)]).values()
            if c > 1
        ),
        server_repeats=server_repeats(fleet.procs),
        killed_at_s=seconds / 3,
        join_s=(min(firsts) - ready_at[0]) if firsts and ready_at else None,
        after_join=len(after),
        joined_share=sum(o.replica == joined for o in after) / max(len(after), 1),
    )
    return result


def bench(cfg: ReplicasBenchConfig) -> dict[str, Any]:
    """Both choices under the same load, then churn; the servers stay up between phases."""
    from semlink.models.progress import progress_bar

    logging.getLogger("httpx").setLevel(logging.WARNING)
    procs = Processes(Path(cfg.out) / "logs")
    fleet = Fleet(procs, cfg)
    images = model_and_test_split(cfg.model)[1].images
    result: dict[str, Any] = {"config": asdict(cfg)}
    try:
        for i in range(cfg.servers):
            fleet.start_server(i, cfg.slow_quota if i == cfg.servers - 1 else None)
        fleet.start_links()
        result["slow_replica"] = f"127.0.0.1:{fleet.grpc[cfg.servers - 1]}"
        for policy in progress_bar(
            ("expected-delay", "round-robin"), desc="bench replicas", unit="policy"
        ):
            fleet.start_devices(policy)
            outs, _ = fleet.load(images, policy, cfg.seconds)
            fleet.stop_devices()
            result[policy] = latency(outs)
        ed, rr = result["expected-delay"], result["round-robin"]
        result["p95_reduction"] = 1.0 - ed["p95_ms"] / rr["p95_ms"]
        result["churn"] = churn(fleet, images)
    finally:
        procs.stop()
    return result


def format_table(r: dict[str, Any]) -> str:
    """The comparison and the churn as a text table."""
    cfg = r["config"]
    lines = [
        f"{cfg['servers']} replicas (one under a CPU quota of {cfg['slow_quota']} cores: "
        f"{r['slow_replica']}), {cfg['devices']} devices x {cfg['rate_per_s']:g} req/s, "
        f"{cfg['concurrency']} in flight each, {cfg['seconds']:g} s per policy; loopback, "
        "plaintext, every device through its own link emulator (100 Mbit/s, 2 ms)",
        FULL_SPEED,
        "",
        f"{'choice':<16} {'answered':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}  "
        "share on the slowed replica",
    ]
    for policy in ("expected-delay", "round-robin"):
        p = r[policy]
        slow = p["by_replica"].get(r["slow_replica"], 0) / max(p["answered"], 1)
        lines.append(
            f"{policy:<16} {p['answered']:>5}/{p['requests']:<3} {p['p50_ms']:>8.1f} "
            f"{p['p95_ms']:>8.1f} {p['p99_ms']:>8.1f}  {100 * slow:.1f} %"
        )
    target = "met" if r["p95_reduction"] >= 0.30 else "MISSED"
    lines.append(
        f"expected-delay p95 is {100 * r['p95_reduction']:.0f} % lower than round robin's "
        f"(target >= 30 %: {target})"
    )
    c = r["churn"]
    join = "never" if c["join_s"] is None else f"{c['join_s']:.2f} s"
    lines += [
        "",
        f"churn: one replica killed at {c['killed_at_s']:.0f} s, one added later: "
        f"answered {c['answered']}/{c['requests']}, lost {c['lost']}, duplicated "
        f"{c['duplicated']}, computed twice {c['server_repeats']}, degraded {c['degraded']}; "
        f"the new replica's first answer {join} after it was ready (target <= 5 s), and "
        f"{100 * c['joined_share']:.0f} % of the {c['after_join']} answers sent from then on",
    ]
    return "\n".join(lines)


def main(cfg: ReplicasBenchConfig, json_path: str | None = None) -> int:
    """Runs the benchmark, prints its table, writes the JSON when asked."""
    return run_and_report(bench, format_table, cfg, json_path)
