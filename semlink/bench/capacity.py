"""``semlink bench capacity``: how many devices one server sustains, and how many replicas a fleet
needs, from measured service times; the formula checked against real replicas.

Each replica is a real ``semlink server`` process under a CPU quota of ``quota`` cores (cgroups),
so that R replicas are R fixed units of compute on this 2-core machine, with the load generator
outside them. Requests are the real offload requests of each pipeline (the device's head run
in-process on test images, packed as the device packs them), sent over gRPC.

1. **Service time per pipeline**: one replica, requests one at a time (``S``, ms, what one
   request costs an idle replica, client to client) and saturated with ``clients`` in flight
   (``mu``, requests/s: the replica's capacity, dynamic batching included), with the CPU time
   the replica process spent a request while saturated and the share of its quota it used (read
   from ``/proc``: near 100 % means the quota, not the client, set ``mu``).
2. **The formula** (docs/capacity.md): a replica run at utilisation ``rho`` serves
   ``rho * mu`` requests/s, so one server sustains ``rho * mu / (rate * offload)`` devices that
   each send ``rate`` requests/s and offload a share ``offload`` of them, and a fleet of F such
   devices needs ``ceil(F * rate * offload / (rho * mu))`` replicas.
3. **Checked against replicas**: R = 1 .. ``max_replicas`` replicas behind the device's own
   replica choice (expected delay), saturated: measured throughput against ``R * mu``; then
   Poisson arrivals at ``rho * R * mu``: measured p50/p95 against a simulation of batching
   replicas (a batch of b takes ``a + c * b`` ms, fitted to the two measurements of step 1;
   power-of-two dispatch).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from semlink.bench import FULL_SPEED, run_and_report
from semlink.procs import Processes, reserve_port, start_replica


@dataclass
class CapacityBenchConfig:
    quota: float = 0.25
    """CPU cores of each replica's quota."""
    max_replicas: int = 3
    clients: int = 8
    """Requests in flight when saturating."""
    rho: float = 0.6
    """Utilisation the formula plans for (and the latency check offers)."""
    seconds: float = 8.0
    """Length of each measurement."""
    models: str = "scene-vit,scene-vit-jscc,scene-ee"
    """Pipelines whose service time is measured (the first is used for the replica check)."""
    device_rate: float = 2.0
    """Requests per second per device, for the sizing example."""
    offload: float = 0.5
    """Share of a device's requests offloaded, for the sizing example."""
    out: str = "runs/bench-capacity"


def requests_for(model: str, n: int = 32) -> list[Any]:
    """``n`` offload requests of ``model`` as its device sends them (head run on test images)."""
    from semlink.bench import model_and_test_split
    from semlink.device.client import build_request
    from semlink.runtime.pipelines import WireOptions, make_pipeline
    from semlink.runtime.pipelines.base import OFFLOAD

    mv, data = model_and_test_split(model)
    pipe = make_pipeline(mv)
    pipe.open(pipe.device_graphs(), threads=1)
    first = min(o.split for o in pipe.options() if o.action == OFFLOAD)
    offloads = [o for o in pipe.options() if o.action == OFFLOAD and o.split == first]
    option = min(offloads, key=lambda o: (abs(o.budget - 0.25), abs((o.rate or 0.25) - 0.25)))
    out = []
    for i in range(n):
        _, off = pipe.run_device(
            data.images[i][None], option, WireOptions("fp16", 10.0, "awgn"), 10.0
        )
        out.append(build_request(mv.name, mv.version, f"cap-{i}", off.tensors, off.params))
    return out


class Replicas:
    """R server replicas under CPU quotas on loopback, and a device-side chooser over them."""

    def __init__(self, procs: Processes, quota: float, models: tuple[str, ...] = ()) -> None:
        self.procs, self.quota, self.models = procs, quota, models
        self.ports: list[int] = []

    def start(self, count: int) -> None:
        for i in range(len(self.ports), count):
            grpc_port = reserve_port()
            start_replica(
                self.procs, f"server-{i}", grpc_port, reserve_port(), self.quota, self.models
            )
            self.ports.append(grpc_port)

    def replica_set(self, count: int) -> Any:
        from semlink.device.breaker import CircuitBreaker
        from semlink.device.client import ServerClient
        from semlink.device.replicas import ReplicaSet, parse_targets

        targets = ",".join(f"127.0.0.1:{p}" for p in self.ports[:count])
        return ReplicaSet(
            parse_targets(targets),
            lambda address, name: ServerClient(address),
            lambda: CircuitBreaker(3, 2.0),
            probe_s=0.5,
            seed=0,
        )


async def _drive(
    replicas: Replicas,
    count: int,
    requests: list[Any],
    seconds: float,
    clients: int = 0,
    rate: float = 0.0,
) -> dict[str, Any]:
    """Closed loop with ``clients`` in flight, or Poisson arrivals at ``rate``/s, for
    ``seconds``, to the first ``count`` replicas; every request through the device's choice."""
    rs = replicas.replica_set(count)  # in this event loop: its channels belong to it
    rs.start()
    await rs.probe()
    lat: list[float] = []
    errors = 0
    rng = random.Random(0)
    t_end = time.perf_counter() + seconds

    async def send(i: int) -> None:
        nonlocal errors
        chosen = rs.choose()
        if chosen is None:
            errors += 1
            return
        t0 = time.perf_counter()
        try:
            await chosen[0].infer(requests[i % len(requests)], 30.0)
        except Exception:
            errors += 1
            return
        lat.append(1000.0 * (time.perf_counter() - t0))

    t0 = time.perf_counter()
    if clients:

        async def loop(c: int) -> None:
            i = c
            while time.perf_counter() < t_end:
                await send(i)
                i += clients

        await asyncio.gather(*(loop(c) for c in range(clients)))
    else:
        tasks = []
        i = 0
        next_t = time.perf_counter()
        while next_t < t_end:
            await asyncio.sleep(max(0.0, next_t - time.perf_counter()))
            tasks.append(asyncio.ensure_future(send(i)))
            i += 1
            next_t += rng.expovariate(rate)
        await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - t0
    await rs.close()
    arr = np.asarray(lat) if lat else np.asarray([np.nan])
    return {
        "answered": len(lat),
        "errors": errors,
        "throughput_rps": len(lat) / elapsed,
        "elapsed_s": elapsed,
        "p50_ms": float(np.percentile(arr, 50)),
        "p95_ms": float(np.percentile(arr, 95)),
        "samples_ms": lat,
    }


def batch_model(single_ms: float, mu_rps: float, batch: int) -> tuple[float, float]:
    """``(a, c)`` of a replica that serves a batch of ``b`` requests in ``a + c * b`` ms, fitted
    to the two measurements: one request alone takes ``single_ms``, and ``batch`` at a time
    give ``mu_rps`` (``batch / (a + c * batch)`` per ms)."""
    full_ms = 1000.0 * batch / mu_rps
    c = max((full_ms - single_ms) / max(batch - 1, 1), 0.0)
    return max(single_ms - c, 0.0), c


def simulate(
    a_ms: float,
    c_ms: float,
    max_batch: int,
    replicas: int,
    rate: float,
    n: int = 20000,
    seed: int = 0,
) -> dict[str, float]:
    """Replicas with dynamic batching (each, when free, serves up to ``max_batch`` waiting
    requests in ``a + c * b`` ms), Poisson arrivals at ``rate``/s, each request sent to the
    replica with fewer requests waiting of two drawn at random: p50 and p95 response, in ms."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1000.0 / rate, size=n))
    queues: list[list[float]] = [[] for _ in range(replicas)]
    free_at = np.zeros(replicas)
    resp: list[float] = []

    def serve(r: int, until: float) -> None:
        # batches replica r starts before ``until`` (each with what waits when it starts)
        while queues[r] and max(free_at[r], queues[r][0]) <= until:
            start = max(free_at[r], queues[r][0])
            batch = [t for t in queues[r] if t <= start][:max_batch]
            del queues[r][: len(batch)]
            free_at[r] = start + a_ms + c_ms * len(batch)
            resp.extend(free_at[r] - t for t in batch)

    for t in arrivals:
        for r in range(replicas):
            serve(r, t)
        pair = rng.choice(replicas, size=min(2, replicas), replace=False)
        r = min(pair, key=lambda k: len(queues[k]) + (free_at[k] > t))
        queues[r].append(float(t))
    for r in range(replicas):
        serve(r, float("inf"))
    out = np.asarray(resp[n // 10 :])  # past the warm-up
    return {"p50_ms": float(np.percentile(out, 50)), "p95_ms": float(np.percentile(out, 95))}


def bench(cfg: CapacityBenchConfig) -> dict[str, Any]:
    """Service times per pipeline, then the replica check (see the module's docstring)."""
    from semlink.models.progress import progress_bar

    result: dict[str, Any] = {"config": asdict(cfg), "pipelines": {}, "replicas": []}
    models = [m.strip() for m in cfg.models.split(",") if m.strip()]
    procs = Processes(Path(cfg.out) / "logs")
    replicas = Replicas(procs, cfg.quota, tuple(models))
    try:
        replicas.start(1)
        reqs: dict[str, list[Any]] = {}
        for model in progress_bar(models, desc="service times", unit="pipeline"):
            reqs[model] = requests_for(model)
            asyncio.run(_drive(replicas, 1, reqs[model], 1.0, clients=1))  # warm-up
            single = asyncio.run(_drive(replicas, 1, reqs[model], cfg.seconds, clients=1))
            cpu0 = procs.cpu_seconds("server-0")
            sat = asyncio.run(_drive(replicas, 1, reqs[model], cfg.seconds, clients=cfg.clients))
            cpu = procs.cpu_seconds("server-0") - cpu0  # the replica's own, not the client's
            mu = sat["throughput_rps"]
            result["pipelines"][model] = {
                "service_ms_mean": float(np.mean(single["samples_ms"])),
                "service_ms_p50": single["p50_ms"],
                "service_ms_p95": single["p95_ms"],
                "mu_rps": mu,
                # what a request costs the replica, and how much of its quota it got to use
                "cpu_ms_per_request": 1000 * cpu / max(sat["answered"], 1),
                "quota_used": cpu / (cfg.quota * sat["elapsed_s"]),
                "devices_per_server": cfg.rho * mu / (cfg.device_rate * cfg.offload),
            }
        main = models[0]
        pipe = result["pipelines"][main]
        for r in progress_bar(range(1, cfg.max_replicas + 1), desc="replicas", unit="replica set"):
            replicas.start(r)
            sat = asyncio.run(_drive(replicas, r, reqs[main], cfg.seconds, clients=cfg.clients * r))
            rate = cfg.rho * r * pipe["mu_rps"]
            load = asyncio.run(_drive(replicas, r, reqs[main], cfg.seconds, rate=rate))
            # the median: the CPU quota's throttling (up to a 100 ms period) puts rare long pauses
            # into the mean that a batching queue model does not describe
            a, c = batch_model(pipe["service_ms_p50"], pipe["mu_rps"], cfg.clients)
            sim = simulate(a, c, cfg.clients, r, rate)
            result["replicas"].append(
                {
                    "replicas": r,
                    "predicted_rps": r * pipe["mu_rps"],
                    "measured_rps": sat["throughput_rps"],
                    "offered_rps": rate,
                    "answered_rps": load["throughput_rps"],
                    "errors": load["errors"] + sat["errors"],
                    "measured_p50_ms": load["p50_ms"],
                    "measured_p95_ms": load["p95_ms"],
                    "predicted_p50_ms": sim["p50_ms"],
                    "predicted_p95_ms": sim["p95_ms"],
                }
            )
    finally:
        procs.stop()
    return result


def replicas_needed(fleet: int, rate: float, offload: float, mu: float, rho: float) -> int:
    """Replicas a fleet of ``fleet`` devices needs (the formula of docs/capacity.md)."""
    return max(1, math.ceil(fleet * rate * offload / (rho * mu)))


def format_table(r: dict[str, Any]) -> str:
    """The service times, the sizing and the check as text."""
    cfg = r["config"]
    lines = [
        f"each replica: one semlink server under a CPU quota of {cfg['quota']} cores (cgroups), "
        f"loopback gRPC, plaintext; saturation = {cfg['clients']} requests in flight per replica",
        FULL_SPEED,
        "",
        f"{'pipeline':<18} {'S p50 ms':>9} {'S mean ms':>9} {'S p95 ms':>9} {'mu req/s':>9} "
        f"{'CPU ms/req':>10} {'quota used':>10} {'devices/server':>15}",
    ]
    for name, p in r["pipelines"].items():
        lines.append(
            f"{name:<18} {p['service_ms_p50']:>9.2f} {p['service_ms_mean']:>9.2f} "
            f"{p['service_ms_p95']:>9.2f} {p['mu_rps']:>9.1f} {p['cpu_ms_per_request']:>10.2f} "
            f"{100 * p['quota_used']:>9.0f}% {p['devices_per_server']:>15.0f}"
        )
    main = next(iter(r["pipelines"].values()))
    lines += [
        f"(devices/server at rho = {cfg['rho']}, {cfg['device_rate']:g} req/s per device, "
        f"{100 * cfg['offload']:.0f} % offloaded; a fleet of 1000 such devices needs "
        f"{replicas_needed(1000, cfg['device_rate'], cfg['offload'], main['mu_rps'], cfg['rho'])}"
        " replicas of the first pipeline)",
        "",
        "check (the first pipeline): saturated throughput of R replicas against the formula's R*mu;"
        " latency under Poisson load at rho*R*mu against the batching-queue simulation",
        f"{'replicas':>8} {'R*mu req/s':>11} {'measured':>9} {'offered':>8} {'answered':>9} "
        f"{'p50 sim':>8} {'p50 meas':>9} {'p95 sim':>8} {'p95 meas':>9}",
    ]
    for row in r["replicas"]:
        lines.append(
            f"{row['replicas']:>8} {row['predicted_rps']:>11.1f} {row['measured_rps']:>9.1f} "
            f"{row['offered_rps']:>8.1f} {row['answered_rps']:>9.1f} "
            f"{row['predicted_p50_ms']:>8.1f} {row['measured_p50_ms']:>9.1f} "
            f"{row['predicted_p95_ms']:>8.1f} {row['measured_p95_ms']:>9.1f}"
        )
    return "\n".join(lines)


def main(cfg: CapacityBenchConfig, json_path: str | None = None) -> int:
    """Runs the benchmark, prints its table, writes the JSON when asked."""
    return run_and_report(bench, format_table, cfg, json_path)
