"""``semlink demo``: server, link emulator and device as child processes on free loopback ports,
the test split streamed through the device's HTTP API over a bandwidth-varying link, and a
summary (accuracy, bytes, latency, decisions) with a PNG timeline.

Ctrl-C or any error stops every child: they are terminated (then killed) in ``finally``.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np

from semlink.procs import Processes, Stack
from semlink.protocol.http_codec import build_infer_request
from semlink.runtime.repository import shipped_pipeline

log = logging.getLogger(__name__)

# each controller's pipeline, after the dataset's prefix (scene-…, digits-…)
DEFAULT_MODELS = {
    "fixed": "vit",
    "lyapunov": "vit-jscc",
    "rl": "ee",
    "threshold": "ee",
    "growth": "ee",
}


def default_model(dataset: str, controller: str) -> str:
    """The shipped pipeline a controller runs on a dataset, e.g. ``scene-vit-jscc``."""
    return shipped_pipeline(dataset, DEFAULT_MODELS[controller])


@dataclass
class DemoConfig:
    """What ``semlink demo`` runs."""

    dataset: Literal["digits-scene", "digits-canvas"] = "digits-scene"
    """Whose test frames, and whose pipelines (scene-… or digits-…)."""
    requests: int = 300
    """How many test images to send, the first of the split (digits-scene has 2,152,
    digits-canvas 269)."""
    uplink: str | None = None
    """Mahimahi trace of the uplink (default: a generated Gilbert-Elliott trace switching between
    0.3 and 4 Mbit/s)."""
    delay_ms: float = 20.0
    """One-way delay of the link."""
    budget: float = 0.25
    """Token budget alpha of the fixed controller."""
    controller: Literal["fixed", "lyapunov", "rl", "threshold", "growth"] = "lyapunov"
    """lyapunov (the default) chooses budget and JSCC rate per request to hold the average
    latency and channel-use budgets as the link changes; fixed sends the same budget always;
    rl, threshold and growth run the dataset's early-exit network."""
    model: str | None = None
    """Default: the dataset's …-vit (fixed), …-vit-jscc (lyapunov), …-ee (rl, threshold, growth)."""
    channel_budget: float = 0.02
    """lyapunov: average channel uses per pixel."""
    latency_budget_ms: float | None = 80.0
    """lyapunov: average latency per request the controller holds (bits / link rate + RTT, from
    the link's state); None: no latency constraint."""
    snr_trace: str | None = None
    """'t_ms snr_db' file (default: a generated random walk)."""
    out: str = "runs/demo"
    """Folder for the summary JSON and the timeline PNG."""
    seed: int = 0
    device_profile: Literal["none", "phone", "camera"] = "none"
    """Run the device under a CPU quota (phone: half a core, camera: a tenth; needs root)."""
    hold: bool = False
    """Keep server, link and device running after the summary (to browse the dashboard) until
    Ctrl-C."""


def write_snr_trace(path: Path, seconds: float, seed: int) -> None:
    """A random walk of the SNR between -10 and 25 dB, one value per 200 ms (``t_ms snr_db``)."""
    rng = np.random.default_rng(seed + 1)
    snr, lines = 10.0, []
    for i in range(int(seconds * 5)):
        snr = float(np.clip(snr + rng.normal(0, 2.5), -10.0, 25.0))
        lines.append(f"{i * 200} {snr:.2f}")
    path.write_text("\n".join(lines) + "\n")


def run_demo(cfg: DemoConfig) -> int:
    from semlink.link.traces import rates_to_timestamps, synthetic_rates, write_mahimahi
    from semlink.models.datasets import load_dataset
    from semlink.models.progress import progress_bar

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request drowns the bar
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    model = cfg.model or default_model(cfg.dataset, cfg.controller)
    uplink = cfg.uplink
    if uplink is None:
        uplink = str(out / "uplink.trace")
        rates = synthetic_rates("gilbert-elliott", 120, cfg.seed, low_bps=3e5, high_bps=4e6)
        write_mahimahi(uplink, rates_to_timestamps(rates, 100))
    snr_trace = cfg.snr_trace
    if snr_trace is None:
        snr_trace = str(out / "snr.trace")
        write_snr_trace(Path(snr_trace), 120, cfg.seed)
    procs = Processes(out)
    stack = Stack(procs, model=model, tls=True)  # mutual TLS on the device -> server hop
    try:
        stack.start_all(
            link_args=(
                "--uplink",
                uplink,
                "--rate",
                "50mbit",
                "--delay-ms",
                str(cfg.delay_ms),
                "--snr-trace",
                snr_trace,
            ),
            device_args=(
                "--dashboard",
                "--device-profile",
                cfg.device_profile,
                "--budget",
                str(cfg.budget),
                "--controller",
                cfg.controller,
                "--channel-budget",
                str(cfg.channel_budget),
                *(
                    ("--latency-budget-ms", str(cfg.latency_budget_ms))
                    if cfg.latency_budget_ms is not None and cfg.controller == "lyapunov"
                    else ()
                ),
            ),
        )
        ports = stack.ports
        print(
            f"server gRPC :{ports['grpc']}  link :{ports['link']} (uplink {uplink}, SNR {snr_trace})  "
            f"device HTTP :{ports['device']}, model {model}, controller {cfg.controller}; "
            "device -> server over mutual TLS"
        )
        print(
            f"live dashboard: http://127.0.0.1:{ports['device']}/dashboard "
            + (
                "(kept up after the run: --hold)"
                if cfg.hold
                else "(until the demo ends; --hold keeps it)"
            )
        )
        data = load_dataset(cfg.dataset, "test", seed=cfg.seed)
        rows: list[dict[str, Any]] = []
        t_start = time.perf_counter()
        with httpx.Client(timeout=30.0) as client:
            for i in progress_bar(
                range(min(cfg.requests, len(data))), desc="demo requests", unit="req"
            ):
                body, headers = build_infer_request(
                    {"image": data.images[i : i + 1]},
                    {"label": int(data.labels[i])},  # the dashboard counts accuracy from it
                    request_id=f"demo-{i}",
                )
                t0 = time.perf_counter()
                resp = client.post(stack.infer_url(), content=body, headers=headers)
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
                        "rate": p["rate"],
                        "channel_uses": p.get("channel_uses"),
                        "snr_db": p.get("channel.snr_db"),
                        "queue": p.get("controller.Z_channel_use"),
                        "exit": p["exit"],
                        "degraded": p["degraded"],
                        "bandwidth_bps": p.get("channel.bandwidth_bps"),
                        "network_ms": p.get("network_ms", 0.0),
                        "split": p["split"],
                        "exit_actions": p.get("exit_actions"),
                    }
                )
        summary = summarize(rows, cfg, model, uplink)
        (out / "summary.json").write_text(
            json.dumps({"config": asdict(cfg), "summary": summary, "requests": rows}, indent=2)
        )
        plot_timeline(rows, out / "timeline.png")
        print_summary(summary, out)
        if cfg.hold:
            print(
                f"holding: dashboard at http://127.0.0.1:{ports['device']}/dashboard; Ctrl-C stops"
            )
            for sig in (signal.SIGTERM, signal.SIGINT):  # background jobs ignore SIGINT otherwise
                signal.signal(sig, _interrupt)
            while True:
                time.sleep(3600)
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted: stopping server, link and device", file=sys.stderr)
        return 130
    finally:
        procs.stop()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def summarize(
    rows: list[dict[str, Any]], cfg: DemoConfig, model: str, uplink: str
) -> dict[str, Any]:
    lat = np.array([r["latency_ms"] for r in rows])
    decisions, counts = np.unique([decision_label(r) for r in rows], return_counts=True)
    top = sorted(zip(counts, decisions, strict=True), reverse=True)[:5]
    uses = [r["channel_uses"] for r in rows if r["channel_uses"] is not None]
    return {
        "requests": len(rows),
        "model": model,
        "controller": cfg.controller,
        "device_profile": cfg.device_profile,
        "accuracy": float(np.mean([r["correct"] for r in rows])),
        "mean_bytes_per_request": float(np.mean([r["bytes"] for r in rows])),
        "mean_tokens_sent": float(np.mean([r["tokens"] for r in rows])),
        "latency_ms": {q: float(np.percentile(lat, int(q[1:]))) for q in ("p50", "p95", "p99")},
        "offloaded": sum(r["exit"] == "server" for r in rows),
        "degraded": sum(bool(r["degraded"]) for r in rows),
        "decisions": {d: int(c) for c, d in top},
        "avg_channel_uses": float(np.mean(uses)) if uses else None,
        "channel_budget": cfg.channel_budget if cfg.controller == "lyapunov" else None,
        "uplink_trace": uplink,
    }


def decision_label(r: dict[str, Any]) -> str:
    """What the controller chose for one request, in a few characters."""
    if r.get("exit_actions"):  # early exit: where the device stopped and what it did there
        where = "offload" if r["exit_actions"].endswith("offload") else "exit"
        return f"{where} after block {r['split']}"
    return f"α={r['budget']:g}" + (f", r={r['rate']:g}" if r["rate"] is not None else "")


def print_summary(s: dict[str, Any], out: Path) -> None:
    lat = s["latency_ms"]
    print(
        f"\nsemlink demo: {s['requests']} requests, model {s['model']}, controller {s['controller']}, uplink {s['uplink_trace']}"
    )
    print(f"  accuracy          {100 * s['accuracy']:.1f} %")
    tokens = f" ({s['mean_tokens_sent']:.1f} tokens)" if s["mean_tokens_sent"] else ""
    print(f"  bytes / request   {s['mean_bytes_per_request']:.0f} B{tokens}")
    print(
        f"  latency           p50 {lat['p50']:.1f} ms   p95 {lat['p95']:.1f} ms   p99 {lat['p99']:.1f} ms"
    )
    print(f"  answered          {s['offloaded']} by the server, {s['degraded']} degraded (locally)")
    print(f"  decisions         {', '.join(f'{d}: {c}' for d, c in s['decisions'].items())}")
    if s["avg_channel_uses"] is not None:
        budget = f" (budget {s['channel_budget']:g})" if s["channel_budget"] is not None else ""
        print(f"  channel uses      {s['avg_channel_uses']:.4f} per pixel on average{budget}")
    share = {
        "none": "this machine's full speed",
        "phone": "0.5 of a core",
        "camera": "0.1 of a core",
    }
    print(
        f"  device profile    {s['device_profile']} ({share[s['device_profile']]}, a real CPU quota)"
    )
    print(f"  written           {out / 'summary.json'}, {out / 'timeline.png'}")


def plot_timeline(rows: list[dict[str, Any]], path: Path) -> None:
    """The run over time: the link, what the controller chose, what it cost, and accuracy.
    Every axis starts at zero (or spans its whole range) and names its unit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.array([r["t_s"] for r in rows])
    jscc = any(r["channel_uses"] is not None for r in rows)
    exits = any(r.get("exit_actions") for r in rows)
    fig, axes = plt.subplots(5, 1, figsize=(8, 11), sharex=True)
    axes[0].plot(t, [(r["bandwidth_bps"] or 0) / 1e6 for r in rows], color="tab:blue")
    axes[0].set_ylabel("link rate\n(Mbit/s)")
    axes[0].set_ylim(bottom=0)
    ax = axes[1]
    if exits:  # where the device stopped, and the running share of offloads
        offload = np.array([r["exit"] == "server" for r in rows], float)
        ax.plot(t, np.cumsum(offload) / np.arange(1, len(rows) + 1), label="offloaded so far")
        ax.plot(
            t,
            [r["split"] / max(x["split"] for x in rows) for r in rows],
            ".",
            ms=3,
            label="blocks run on the device (share of the most)",
        )
        ax.set_ylabel("decision")
    else:
        ax.plot(t, [r["budget"] for r in rows], ".", ms=3, label="token budget α")
        if jscc:
            ax.plot(t, [r["rate"] for r in rows], ".", ms=3, label="JSCC rate r")
        ax.plot(
            t,
            [r["exit"] == "server" for r in rows],
            "|",
            ms=6,
            alpha=0.4,
            label="offloaded (1) / local (0)",
        )
        ax.set_ylabel("controller's\nchoice")
    ax.set_ylim(-0.05, 1.05)
    ax.legend(fontsize=7, loc="upper right", ncol=3)
    axes[2].plot(t, [r["bytes"] / 1000 for r in rows], ".", ms=3, color="tab:orange")
    axes[2].set_ylabel("uplink per request\n(kB)")
    axes[2].set_ylim(bottom=0)
    axes[3].plot(t, [r["latency_ms"] for r in rows], ".", ms=3, color="tab:red")
    axes[3].set_ylabel("latency\n(ms)")
    axes[3].set_ylim(bottom=0)
    acc = np.cumsum([r["correct"] for r in rows]) / np.arange(1, len(rows) + 1)
    axes[4].plot(t, 100 * acc, color="tab:green")
    axes[4].set_ylabel("accuracy so far\n(%)")
    axes[4].set_ylim(0, 100)
    axes[-1].set_xlabel("time since the first request (s)")
    for a in axes:
        a.grid(alpha=0.3)
    fig.suptitle("semlink demo: what the controller did as the link changed")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
