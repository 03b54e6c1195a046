"""``semlink bench compare``: semlink against what a user would do instead, on the same emulated
links (0.1, 1, 10, 100 Mbit/s, 10 ms each way), all real processes.

semlink: the device with the fixed controller (token budget 0.25, int8 tokens), the Lyapunov
controller (JSCC model), and the RL offloading policy (early-exit model), device -> server over
mutual TLS. Instead: (a) the camera's JPEG uploaded to a plain FastAPI server running the whole
model on ONNX Runtime, (b) the same behind LitServe, (c) semlink's device sending every token in
fp32, (d) a small model run on the device only (the early-exit network's first exit).

Per system and rate: accuracy, bytes per request on the link (both ways, as the link counted
them: TLS, HTTP/2 and gRPC framing included), p50/p95 latency of sequential requests, the share
answered within the deadline (semlink's own systems get it as a request parameter; the others
just wait), and throughput with 4 requests in flight. A few warm-up requests go first: a
connection and its TLS session are set up once, not per request. Accuracy is measured on
the whole test split at 100 Mbit/s and on the first ``requests`` images at the slower rates (a
system that needs more than ``cell_seconds`` for them stops early, after at least 10: sending
every token in fp32 at 0.1 Mbit/s takes 1.3 s a request).
"""

from __future__ import annotations

import asyncio
import base64
import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from tqdm import tqdm

from semlink.bench import write_figures
from semlink.bench.baselines import to_jpeg
from semlink.models.stats import pm
from semlink.procs import Processes, Stack, free_port
from semlink.protocol.http_codec import build_infer_request
from semlink.runtime.repository import DEFAULT_REPOSITORY

RATES_MBIT = (0.1, 1.0, 10.0, 100.0)
FULL_SPLIT_RATE = 100.0  # accuracy on the whole test split is measured here
DELAY_MS = 10.0
WARM_UP = 3  # requests before measuring: connections (and TLS sessions) are set up once
NO_DEADLINE_MS = 600_000.0
MIN_REQUESTS = 10  # a cell stopped early by cell_seconds still measures this many


@dataclass
class CompareBenchConfig:
    requests: int = 60  # sequential requests per system and rate (the whole split at 100 Mbit/s)
    burst: int = 24  # requests for the throughput figure, ``in_flight`` at a time
    in_flight: int = 4
    cell_seconds: float = 30.0  # a slow system stops after this long (and at least 10 requests)
    deadline_ms: float = 500.0
    rates_mbit: tuple[float, ...] = RATES_MBIT
    out: str = "runs/bench-compare"


@dataclass(frozen=True)
class System:
    name: str
    kind: str  # "semlink" (a device) | "plain" | "litserve"
    model: str = "digits-vit"
    device_args: tuple[str, ...] = ()
    uses_link: bool = True
    deadline: bool = True  # semlink's deadline applies; baselines just wait for the answer


SYSTEMS = (
    System("semlink fixed (α 0.25, int8)", "semlink", "digits-vit", ("--token-format", "int8")),
    System("semlink Lyapunov (JSCC)", "semlink", "digits-vit-jscc", ("--controller", "lyapunov")),
    System("semlink RL (early exits)", "semlink", "digits-ee", ("--controller", "rl")),
    System("JPEG → FastAPI, full model", "plain"),
    System("JPEG → LitServe, full model", "litserve"),
    System(
        "all tokens, fp32",
        "semlink",
        "digits-vit",
        ("--budget", "1.0", "--token-format", "fp32"),
        deadline=False,
    ),
    System(
        "small model, local only",
        "semlink",
        "digits-ee",
        ("--controller", "threshold", "--exit-threshold", "0"),
        uses_link=False,
        deadline=False,
    ),
)


@dataclass
class Endpoint:
    """Where one system at one link rate takes requests, once its processes are ready."""

    url: str
    state_url: str | None  # the link's state (None: the system does not use the link)
    names: tuple[str, ...]  # its processes
    wait: Callable[[], None]


def start_system(
    procs: Processes, base: Stack, baseline_ports: dict[str, int], system: System, rate: float
) -> Endpoint:
    """Starts the link (and for semlink the device) of ``system`` at ``rate``, without waiting."""
    tag = f"{SYSTEMS.index(system)}-{rate:g}"
    link = ("--rate", f"{rate:g}mbit", "--delay-ms", f"{DELAY_MS:g}")
    if system.kind == "semlink":
        stack = replace(base.sibling(f"-{tag}"), model=system.model)
        stack.start_link(*link, wait=False)
        stack.start_device(*system.device_args, wait=False)

        def ready() -> None:
            stack.wait_link()
            stack.wait_device()

        state = stack.state_url if system.uses_link else None
        return Endpoint(stack.device_url, state, (f"link-{tag}", f"device-{tag}"), ready)
    port, state_port = free_port(), free_port()
    name = f"link-{tag}"
    procs.start(
        name,
        "link",
        "--listen",
        f"127.0.0.1:{port}",
        "--upstream",
        f"127.0.0.1:{baseline_ports[system.kind]}",
        "--state-port",
        str(state_port),
        *link,
    )
    state_url = f"http://127.0.0.1:{state_port}/state"
    return Endpoint(
        f"http://127.0.0.1:{port}", state_url, (name,), lambda: procs.wait_http(name, state_url)
    )


def link_bytes(state_url: str) -> tuple[int, int]:
    s = httpx.get(state_url, timeout=5).json()
    return s["uplink"]["delivered_bytes"], s["downlink"]["delivered_bytes"]


class Client:
    """One way of asking one system for a label: ``ask(client, i) -> (label, parameters)``."""

    def __init__(self, url: str, build: Callable[[int], tuple[bytes, dict[str, str]]]) -> None:
        self.url, self.build = url, build

    def parse(self, doc: dict) -> tuple[int, dict]:
        if "outputs" in doc:  # OIP, from a semlink device
            label = next(o for o in doc["outputs"] if o["name"] == "label")["data"][0]
            return int(label), doc["parameters"]
        return int(doc["label"]), {}

    def ask(self, client: httpx.Client, i: int) -> tuple[int, dict, float]:
        body, headers = self.build(i)
        t0 = time.perf_counter()
        resp = client.post(self.url, content=body, headers=headers)
        ms = (time.perf_counter() - t0) * 1000.0
        resp.raise_for_status()
        return (*self.parse(resp.json()), ms)

    async def burst(self, n: int, in_flight: int) -> float:
        """Requests per second with ``in_flight`` requests outstanding."""
        gate = asyncio.Semaphore(in_flight)

        async def one(client: httpx.AsyncClient, i: int) -> None:
            async with gate:
                body, headers = self.build(i)
                (await client.post(self.url, content=body, headers=headers)).raise_for_status()

        t0 = time.perf_counter()
        async with httpx.AsyncClient(timeout=120) as client:
            await asyncio.gather(*(one(client, i) for i in range(n)))
        return n / (time.perf_counter() - t0)


def make_client(system: System, url: str, images: np.ndarray, deadline_ms: float) -> Client:
    if system.kind == "semlink":
        params = {"deadline_ms": deadline_ms if system.deadline else NO_DEADLINE_MS}

        def oip(i: int) -> tuple[bytes, dict[str, str]]:
            return build_infer_request({"image": images[i : i + 1]}, params)

        return Client(f"{url}/v2/models/{system.model}/infer", oip)
    jpegs = [to_jpeg(im) for im in images]
    if system.kind == "plain":
        return Client(f"{url}/predict", lambda i: (jpegs[i], {"content-type": "image/jpeg"}))

    def lit(i: int) -> tuple[bytes, dict[str, str]]:
        body = json.dumps({"image": base64.b64encode(jpegs[i]).decode()}).encode()
        return body, {"content-type": "application/json"}

    return Client(f"{url}/predict", lit)


def measure(
    client: Client,
    labels: np.ndarray,
    n: int,
    state_url: str | None,
    cfg: CompareBenchConfig,
    desc: str,
) -> dict[str, Any]:
    rows = []
    with httpx.Client(timeout=120) as http:
        for i in range(WARM_UP):
            client.ask(http, len(labels) - 1 - i)
        before = link_bytes(state_url) if state_url else (0, 0)
        t0 = time.perf_counter()
        for i in tqdm(range(n), desc=desc, unit="req", leave=False):
            label, params, ms = client.ask(http, i)
            rows.append((label == labels[i], ms, bool(params.get("degraded", False))))
            if i >= MIN_REQUESTS and time.perf_counter() - t0 > cfg.cell_seconds:
                break
    time.sleep(0.1)  # let the link count the last replies
    after = link_bytes(state_url) if state_url else (0, 0)
    n = len(rows)
    throughput = asyncio.run(client.burst(min(cfg.burst, n), cfg.in_flight))
    correct, ms, degraded = (np.array(c) for c in zip(*rows, strict=True))
    return {
        "requests": n,
        "accuracy": float(correct.mean()),
        "bytes_up": (after[0] - before[0]) / n,
        "bytes_down": (after[1] - before[1]) / n,
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "within_deadline": float((ms <= cfg.deadline_ms).mean()),
        "degraded": int(degraded.sum()),
        "throughput_rps": throughput,
    }


def run(cfg: CompareBenchConfig) -> dict[str, Any]:
    from semlink.models.data import load_digits_canvas

    data = load_digits_canvas("test")
    out = Path(cfg.out)
    procs = Processes(out / "logs")
    base = Stack(procs, tls=True)
    baseline_ports = {"plain": free_port(), "litserve": free_port()}
    results: list[dict[str, Any]] = []
    try:
        base.start_server()
        for kind, port in baseline_ports.items():
            procs.start(
                f"baseline-{kind}",
                "baseline-server",
                kind,
                "--port",
                str(port),
                "--model-repository",
                str(DEFAULT_REPOSITORY),
            )
            procs.wait_http(f"baseline-{kind}", f"http://127.0.0.1:{port}/health")
        for system in tqdm(SYSTEMS, desc="systems, each at every link rate", unit="system"):
            # one link (and device) per rate, started together: start-up overlaps
            endpoints = [
                start_system(procs, base, baseline_ports, system, r) for r in cfg.rates_mbit
            ]
            try:
                for ready in endpoints:
                    ready.wait()
                for rate, ready in zip(cfg.rates_mbit, endpoints, strict=True):
                    n = len(data) if rate == FULL_SPLIT_RATE else min(cfg.requests, len(data))
                    client = make_client(system, ready.url, data.images, cfg.deadline_ms)
                    row = measure(
                        client, data.labels, n, ready.state_url, cfg, f"{system.name} @ {rate:g}"
                    )
                    results.append({"system": system.name, "rate_mbit": rate, **row})
            finally:
                procs.stop(*(name for ready in endpoints for name in ready.names))
    finally:
        procs.stop()
    report = {"machine": machine(), "deadline_ms": cfg.deadline_ms, "results": results}
    report["targets"] = targets(report)
    plot(report, out / "compare.png")
    return report


def machine() -> dict[str, Any]:
    import os

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


def _row(report: dict[str, Any], system: str, rate: float) -> dict[str, Any]:
    return next(r for r in report["results"] if r["system"] == system and r["rate_mbit"] == rate)


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, per semlink controller, against the JPEG-upload baseline."""
    out = []
    rates = {r["rate_mbit"] for r in report["results"]}
    jpeg = SYSTEMS[3].name
    for s in (s.name for s in SYSTEMS[:3]):
        if 1.0 in rates and FULL_SPLIT_RATE in rates:
            mine, theirs = _row(report, s, 1.0), _row(report, jpeg, 1.0)
            loss = 100 * (
                _row(report, jpeg, FULL_SPLIT_RATE)["accuracy"]
                - _row(report, s, FULL_SPLIT_RATE)["accuracy"]
            )
            ratio = mine["p50_ms"] / theirs["p50_ms"]
            out.append(
                {
                    "target": "1 Mbit/s: p50 ≤ 1/3 of JPEG upload at ≤ 1 point accuracy loss",
                    "system": s,
                    "p50_ratio": ratio,
                    "accuracy_loss_points": loss,
                    "met": ratio <= 1 / 3 + 1e-9 and loss <= 1.0 + 1e-9,
                }
            )
        if 0.1 in rates:
            within = _row(report, s, 0.1)["within_deadline"]
            out.append(
                {
                    "target": f"0.1 Mbit/s: ≥ 99 % answered within {report['deadline_ms']:g} ms",
                    "system": s,
                    "within_deadline": within,
                    "met": within >= 0.99,
                }
            )
    return out


def format_report(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"machine: {m['processor']}, {m['cpus']} CPUs, {m['platform']}, Python {m['python']}",
        f"links: constant rate, {DELAY_MS:g} ms each way; deadline {report['deadline_ms']:g} ms",
        "",
    ]
    head = (
        "| system | accuracy | bytes up / down | p50 ms | p95 ms | ≤ deadline | degraded | req/s |"
    )
    for rate in sorted({r["rate_mbit"] for r in report["results"]}):
        lines += [f"**{rate:g} Mbit/s**", "", head, "|" + " --- |" * 8]
        for r in (r for r in report["results"] if r["rate_mbit"] == rate):
            lines.append(
                f"| {r['system']} | {pm(r['accuracy'], r['requests'])} % (n={r['requests']}) "
                f"| {r['bytes_up']:.0f} / {r['bytes_down']:.0f} | {r['p50_ms']:.1f} "
                f"| {r['p95_ms']:.1f} | {100 * r['within_deadline']:.0f} % | {r['degraded']} "
                f"| {r['throughput_rps']:.1f} |"
            )
        lines.append("")
    lines.append("targets:")
    for t in report["targets"]:
        detail = (
            f"p50 {t['p50_ratio']:.2f}× JPEG's, accuracy {-t['accuracy_loss_points']:+.1f} pt"
            if "p50_ratio" in t
            else f"{100 * t['within_deadline']:.1f} % within the deadline"
        )
        lines.append(f"  {'✓' if t['met'] else '✗'} {t['system']}: {t['target']} ({detail})")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for s in SYSTEMS:
        rows = sorted(
            (r for r in report["results"] if r["system"] == s.name), key=lambda r: r["rate_mbit"]
        )
        if not rows:
            continue
        style = "-o" if s.name.startswith("semlink") else "--s"
        rates = [r["rate_mbit"] for r in rows]
        ax1.plot(rates, [r["p50_ms"] for r in rows], style, label=s.name)
        ax2.plot(rates, [max(r["bytes_up"], 1) for r in rows], style, label=s.name)
    ax1.axhline(report["deadline_ms"], color="grey", lw=0.8, ls=":")
    for ax, title in ((ax1, "p50 latency (ms)"), (ax2, "bytes up per request")):
        ax.set(xscale="log", yscale="log", xlabel="link rate (Mbit/s)", title=title)
        ax.grid(alpha=0.3, which="both")
    ax1.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(cfg: CompareBenchConfig, json_path: str | None) -> int:
    report = run(cfg)
    print(format_report(report))
    print(f"plot: {Path(cfg.out) / 'compare.png'}")
    write_figures(json_path, report)
    return 0
