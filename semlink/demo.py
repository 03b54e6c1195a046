"""``semlink demo``: server, link emulator and device as child processes on free loopback ports,
the test split streamed through the device's HTTP API over a bandwidth-varying link, and a
summary (accuracy, bytes, latency, decisions) with a PNG timeline.

Ctrl-C or any error stops every child: they are terminated (then killed) in ``finally``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from protocol.http_codec import build_infer_request
from semlink.procs import Processes, Stack

log = logging.getLogger(__name__)


@dataclass
class DemoConfig:
    requests: int = 269
    uplink: str | None = None
    delay_ms: float = 20.0
    budget: float = 0.25
    controller: str = "fixed"
    concurrency: int = 1
    out: str = "runs/demo"
    seed: int = 0


def run_demo(cfg: DemoConfig) -> int:
    from tqdm import tqdm

    from models.data import load_digits_canvas
    from protocol.traces import rates_to_timestamps, synthetic_rates, write_mahimahi

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    uplink = cfg.uplink
    if uplink is None:
        uplink = str(out / "uplink.trace")
        write_mahimahi(
            uplink,
            rates_to_timestamps(
                synthetic_rates("gilbert-elliott", 120, cfg.seed, low_bps=3e5, high_bps=4e6), 100
            ),
        )
    procs = Processes(out)
    stack = Stack(procs)
    try:
        stack.start_all(
            link_args=("--uplink", uplink, "--rate", "50mbit", "--delay-ms", str(cfg.delay_ms)),
            device_args=("--budget", str(cfg.budget), "--controller", cfg.controller),
        )
        ports = stack.ports
        print(
            f"server gRPC :{ports['grpc']}  link :{ports['link']} (uplink {uplink})  device HTTP :{ports['device']}"
        )

        data = load_digits_canvas("test", cfg.seed)
        n = min(cfg.requests, len(data))
        url = stack.infer_url()
        rows: list[dict[str, Any]] = []
        t_start = time.perf_counter()
        with httpx.Client(timeout=30.0) as client:
            for i in tqdm(range(n), desc="demo requests", unit="req"):
                body, headers = build_infer_request(
                    {"image": data.images[i : i + 1]}, request_id=f"demo-{i}"
                )
                t0 = time.perf_counter()
                resp = client.post(url, content=body, headers=headers)
                latency = (time.perf_counter() - t0) * 1000.0
                if resp.status_code != 200:
                    raise RuntimeError(
                        f"request {i} failed with HTTP {resp.status_code}: {resp.text[:300]}"
                    )
                doc = resp.json()
                p = doc["parameters"]
                label = int(next(o for o in doc["outputs"] if o["name"] == "label")["data"][0])
                rows.append(
                    {
                        "t_s": time.perf_counter() - t_start,
                        "correct": label == int(data.labels[i]),
                        "latency_ms": latency,
                        "bytes": p["request_bytes"],
                        "tokens": p["tokens_sent"],
                        "budget": p["budget"],
                        "exit": p["exit"],
                        "degraded": p["degraded"],
                        "bandwidth_bps": p.get("channel.bandwidth_bps"),
                        "network_ms": p.get("network_ms", 0.0),
                    }
                )
        summary = summarize(rows, cfg, uplink)
        (out / "summary.json").write_text(
            json.dumps({"config": asdict(cfg), "summary": summary, "requests": rows}, indent=2)
        )
        plot_timeline(rows, out / "timeline.png")
        print_summary(summary, out)
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted: stopping server, link and device", file=sys.stderr)
        return 130
    finally:
        procs.stop()


def summarize(rows: list[dict[str, Any]], cfg: DemoConfig, uplink: str) -> dict[str, Any]:
    lat = np.array([r["latency_ms"] for r in rows])
    budgets, counts = np.unique([r["budget"] for r in rows], return_counts=True)
    return {
        "requests": len(rows),
        "accuracy": float(np.mean([r["correct"] for r in rows])),
        "mean_bytes_per_request": float(np.mean([r["bytes"] for r in rows])),
        "mean_tokens_sent": float(np.mean([r["tokens"] for r in rows])),
        "latency_ms": {
            "p50": float(np.percentile(lat, 50)),
            "p95": float(np.percentile(lat, 95)),
            "p99": float(np.percentile(lat, 99)),
        },
        "offloaded": sum(r["exit"] == "server" for r in rows),
        "degraded": sum(bool(r["degraded"]) for r in rows),
        "budgets": {f"{b:g}": int(c) for b, c in zip(budgets, counts, strict=True)},
        "controller": cfg.controller,
        "uplink_trace": uplink,
    }


def print_summary(s: dict[str, Any], out: Path) -> None:
    lat = s["latency_ms"]
    print(
        f"\nsemlink demo: {s['requests']} requests, controller {s['controller']}, uplink {s['uplink_trace']}"
    )
    print(f"  accuracy          {100 * s['accuracy']:.1f} %")
    print(
        f"  bytes / request   {s['mean_bytes_per_request']:.0f} B ({s['mean_tokens_sent']:.1f} tokens)"
    )
    print(
        f"  latency           p50 {lat['p50']:.1f} ms   p95 {lat['p95']:.1f} ms   p99 {lat['p99']:.1f} ms"
    )
    print(
        f"  decisions         offloaded {s['offloaded']}, degraded {s['degraded']}, budgets {s['budgets']}"
    )
    print(f"  written           {out / 'summary.json'}, {out / 'timeline.png'}")


def plot_timeline(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["t_s"] for r in rows]
    fig, axes = plt.subplots(4, 1, figsize=(8, 8), sharex=True)
    axes[0].plot(t, [(r["bandwidth_bps"] or 0) / 1e6 for r in rows])
    axes[0].set_ylabel("link Mbit/s")
    axes[1].plot(t, [r["bytes"] for r in rows], ".")
    axes[1].set_ylabel("bytes / req")
    axes[2].plot(t, [r["latency_ms"] for r in rows], ".")
    axes[2].set_ylabel("latency ms")
    axes[3].plot(t, np.cumsum([r["correct"] for r in rows]) / np.arange(1, len(rows) + 1))
    axes[3].set_ylabel("accuracy so far")
    axes[3].set_xlabel("time (s)")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle("semlink demo timeline")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
