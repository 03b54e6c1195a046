"""``semlink demo``: server, link emulator and device as child processes on free loopback ports, a
camera's frames streamed to the device at a frame rate over a bandwidth-varying link, each with
its deadline, and a summary (on-time accuracy, accuracy of answered frames, bytes, latency, the
options the controller took) with a PNG timeline.

Ctrl-C or any error stops every child: they are terminated (then killed) in ``finally``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from semlink.procs import Processes, Stack
from semlink.runtime.repository import shipped_pipeline

log = logging.getLogger(__name__)


def profile_line(name: str) -> str:
    """What a device profile is, in words."""
    from semlink.runtime.cpu_quota import PROFILES

    p = PROFILES[name]
    if p.share is None:
        return "this machine's full speed, no quota"
    return f"{p.device_class}: a real CPU quota of {p.share:g} of a core, {p.period_us} us period"


def default_model(dataset: str, controller: str) -> str:
    """The shipped pipeline the demo runs: the dataset's any-split network, whose option space
    every controller chooses in (``scene-split``, ``digits-split``)."""
    return shipped_pipeline(dataset, "split")


@dataclass
class DemoConfig:
    """What ``semlink demo`` runs."""

    dataset: Literal["digits-scene", "digits-canvas"] = "digits-scene"
    """Whose test frames, and whose pipelines (scene-… or digits-…)."""
    requests: int = 300
    """How many frames the camera sends (the test split's first ones, in a seeded order)."""
    fps: float = 15.0
    """Frames per second the camera sends (open loop, on one WebSocket)."""
    deadline_ms: float = 100.0
    """Each frame's deadline from when it leaves the camera: an answer after it counts as wrong."""
    uplink: str | None = None
    """Mahimahi trace of the uplink (default: a generated Gilbert-Elliott trace switching between
    0.3 and 4 Mbit/s)."""
    delay_ms: float = 20.0
    """One-way delay of the link."""
    controller: Literal["planner", "lyapunov", "rl", "threshold", "growth", "fixed", "local"] = (
        "planner"
    )
    """planner (the default) takes the most accurate option predicted to answer in time, from
    the link's state, the device's measured stage times and the frames waiting; lyapunov holds
    long-term link and device utilisation; rl runs the trained options policy; fixed takes
    --option always; local never offloads."""
    option: str | None = None
    """fixed: the option every frame takes (e.g. s1:a0.25, exit2, jpeg75)."""
    model: str | None = None
    """Default: the dataset's any-split network (scene-split, digits-split)."""
    budget: float = 0.25
    """Token budget of the fixed controller on a token pipeline (--model scene-vit)."""
    channel_budget: float = 0.02
    """lyapunov on a JSCC pipeline: average channel uses per pixel."""
    latency_budget_ms: float | None = None
    """lyapunov: an average latency the controller holds too; None: none."""
    snr_trace: str | None = None
    """'t_ms snr_db' file (default: a generated random walk)."""
    out: str = "runs/demo"
    """Folder for the summary JSON and the timeline PNG."""
    seed: int = 0
    device_profile: Literal["none", "phone", "pi4", "pi-zero-2", "sensor", "camera"] = "camera"
    """Run the device under a CPU quota (camera: a tenth of a core, the default; phone: half;
    none: this machine's speed). Needs write access to cgroups (root); without it the demo says
    so and runs without one."""
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
    from semlink.runtime.cpu_quota import quota_available

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    model = cfg.model or default_model(cfg.dataset, cfg.controller)
    profile = cfg.device_profile
    if profile != "none" and not quota_available():
        print(
            f"no write access to the cgroup file system: the device runs without the {profile} profile's CPU quota"
        )
        profile = "none"
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
            device_args=device_args(cfg, profile),
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
        rows = stream_frames(cfg, model, ports["device"])
        summary = summarize(rows, cfg, model, uplink, profile)
        (out / "summary.json").write_text(
            json.dumps({"config": asdict(cfg), "summary": summary, "requests": rows}, indent=2)
        )
        plot_timeline(rows, out / "timeline.png", cfg.deadline_ms)
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


def device_args(cfg: DemoConfig, profile: str) -> tuple[str, ...]:
    """The device's flags for the demo's controller and profile."""
    args = [
        "--dashboard",
        "--device-profile",
        profile,
        "--controller",
        cfg.controller,
        "--budget",
        str(cfg.budget),
    ]
    if cfg.option is not None:
        args += ["--option", cfg.option]
    if cfg.controller == "lyapunov":
        args += ["--channel-budget", str(cfg.channel_budget)]
        if cfg.latency_budget_ms is not None:
            args += ["--latency-budget-ms", str(cfg.latency_budget_ms)]
    return tuple(args)


def stream_frames(cfg: DemoConfig, model: str, port: int) -> list[dict[str, Any]]:
    """Streams the frames (their true labels with them, for the dashboard's accuracy) and keeps
    one row per frame: what was decided, what it cost, and whether it was right on time."""
    from semlink.stream import StreamConfig, frames_of, send

    logging.getLogger("websockets").setLevel(logging.WARNING)
    seconds = cfg.requests / cfg.fps
    scfg = StreamConfig(
        f"ws://127.0.0.1:{port}/v1/stream", cfg.fps, seconds, cfg.deadline_ms, model, seed=cfg.seed
    )
    pixels, labels, _ = frames_of(model, cfg.seed, cfg.requests)
    print(f"streaming {cfg.requests} frames at {cfg.fps:g}/s, deadline {cfg.deadline_ms:g} ms ...")
    n, sent, answers, labels = asyncio.run(send(scfg, pixels, labels, {"answer": True}))
    t0 = min(sent.values())
    rows = []
    for i in range(n):
        doc, at = answers.get(i, ({"outcome": "lost"}, float("inf")))
        a = doc.get("answer") or {}
        right = doc.get("label") == int(labels[i % len(labels)])
        latency = 1000.0 * (at - sent[i])
        rows.append(
            {
                "t_s": sent[i] - t0,
                "outcome": doc["outcome"],
                "correct": right,
                "on_time": right and latency <= cfg.deadline_ms,
                "latency_ms": latency if np.isfinite(latency) else None,
                "option": doc.get("option"),
                "bytes": doc.get("bytes_up", 0),
                "tokens": a.get("tokens_sent", 0),
                "split": a.get("split"),
                "degraded": a.get("degraded", False),
                "channel_uses": a.get("channel_uses"),
                "bandwidth_bps": (a.get("channel") or {}).get("bandwidth_bps"),
                "snr_db": (a.get("channel") or {}).get("snr_db"),
                "device_cpu_ms": doc.get("device_cpu_ms"),
            }
        )
    return rows


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def summarize(
    rows: list[dict[str, Any]], cfg: DemoConfig, model: str, uplink: str, profile: str
) -> dict[str, Any]:
    """The run in figures: on-time accuracy first (with n and its 95 % interval)."""
    from semlink.models.stats import wilson

    answered = [r for r in rows if r["outcome"] in ("server", "device", "degraded")]
    lat = np.array([r["latency_ms"] for r in answered]) if answered else np.zeros(1)
    options, counts = np.unique([r["option"] for r in answered] or ["none"], return_counts=True)
    top = sorted(zip(counts, options, strict=True), reverse=True)[:6]
    uses = [r["channel_uses"] for r in answered if r["channel_uses"] is not None]
    on_time = float(np.mean([r["on_time"] for r in rows]))
    return {
        "requests": len(rows),
        "fps": cfg.fps,
        "deadline_ms": cfg.deadline_ms,
        "model": model,
        "controller": cfg.controller,
        "device_profile": profile,
        "on_time": on_time,
        "on_time_ci95": list(wilson(on_time, len(rows))),
        "accuracy": float(np.mean([r["correct"] for r in answered])) if answered else 0.0,
        "within_deadline": float(
            np.mean(
                [r["latency_ms"] is not None and r["latency_ms"] <= cfg.deadline_ms for r in rows]
            )
        ),
        "late": sum(r["outcome"] == "late" for r in rows),
        "dropped": sum(r["outcome"] == "dropped" for r in rows),
        "mean_bytes_per_request": float(np.mean([r["bytes"] for r in answered]))
        if answered
        else 0.0,
        "mean_device_cpu_ms": float(np.mean([r["device_cpu_ms"] or 0.0 for r in answered]))
        if answered
        else 0.0,
        "latency_ms": {q: float(np.percentile(lat, int(q[1:]))) for q in ("p50", "p95", "p99")},
        "offloaded": sum(r["outcome"] == "server" for r in rows),
        "degraded": sum(r["outcome"] == "degraded" for r in rows),
        "decisions": {d: int(c) for c, d in top},
        "avg_channel_uses": float(np.mean(uses)) if uses else None,
        "uplink_trace": uplink,
    }


def print_summary(s: dict[str, Any], out: Path) -> None:
    lat, (lo, hi) = s["latency_ms"], s["on_time_ci95"]
    print(
        f"\nsemlink demo: {s['requests']} frames at {s['fps']:g}/s, deadline {s['deadline_ms']:g} ms, "
        f"model {s['model']}, controller {s['controller']}, uplink {s['uplink_trace']}"
    )
    print(
        f"  on time           {100 * s['on_time']:.1f} % right within the deadline [{100 * lo:.1f}, {100 * hi:.1f}]"
    )
    print(
        f"  accuracy          {100 * s['accuracy']:.1f} % of the answered frames; {100 * s['within_deadline']:.1f} % answered in time"
    )
    print(f"  late, dropped     {s['late']}, {s['dropped']} (answered at once, never held)")
    print(
        f"  bytes / frame     {s['mean_bytes_per_request']:.0f} B up; device CPU {s['mean_device_cpu_ms']:.1f} ms / frame"
    )
    print(
        f"  latency           p50 {lat['p50']:.1f} ms   p95 {lat['p95']:.1f} ms   p99 {lat['p99']:.1f} ms"
    )
    print(
        f"  answered          {s['offloaded']} by the server, {s['degraded']} degraded (locally), the rest on the device"
    )
    print(f"  options taken     {', '.join(f'{d}: {c}' for d, c in s['decisions'].items())}")
    if s["avg_channel_uses"] is not None:
        print(
            f"  channel uses      {s['avg_channel_uses']:.4f} per pixel on average (JSCC offloads)"
        )
    print(f"  device profile    {s['device_profile']} ({profile_line(s['device_profile'])})")
    print(f"  written           {out / 'summary.json'}, {out / 'timeline.png'}")


def plot_timeline(rows: list[dict[str, Any]], path: Path, deadline_ms: float) -> None:
    """The run over time: the link, the option taken, what it cost, latency against the deadline,
    and on-time accuracy so far. Every axis starts at zero (or spans its whole range) and names
    its unit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.array([r["t_s"] for r in rows])
    fig, axes = plt.subplots(5, 1, figsize=(8, 11), sharex=True)
    axes[0].plot(t, [(r["bandwidth_bps"] or 0) / 1e6 for r in rows], color="tab:blue")
    axes[0].set_ylabel("link rate\n(Mbit/s)")
    axes[0].set_ylim(bottom=0)
    names = sorted({r["option"] for r in rows if r["option"]}, key=lambda n: (n[0] != "e", n))
    rank = {n: i for i, n in enumerate(names)}
    ax = axes[1]
    for kind, colour in (("exit", "tab:green"), ("s", "tab:purple"), ("jpeg", "tab:orange")):
        pts = [
            (r["t_s"], rank[r["option"]])
            for r in rows
            if r["option"] and r["option"].startswith(kind)
        ]
        if pts:
            ax.plot(*zip(*pts, strict=True), ".", ms=4, color=colour)
    ax.set_yticks(range(len(names)), names, fontsize=6)
    ax.set_ylabel("option taken")
    axes[2].plot(t, [r["bytes"] / 1000 for r in rows], ".", ms=3, color="tab:orange")
    axes[2].set_ylabel("uplink per frame\n(kB)")
    axes[2].set_ylim(bottom=0)
    lat = [(r["t_s"], r["latency_ms"]) for r in rows if r["latency_ms"] is not None]
    if lat:
        axes[3].plot(*zip(*lat, strict=True), ".", ms=3, color="tab:red")
    axes[3].axhline(deadline_ms, color="k", lw=0.8, ls="--", label="deadline")
    axes[3].legend(fontsize=7, loc="upper right")
    axes[3].set_ylabel("latency\n(ms)")
    axes[3].set_ylim(bottom=0)
    acc = np.cumsum([r["on_time"] for r in rows]) / np.arange(1, len(rows) + 1)
    axes[4].plot(t, 100 * acc, color="tab:green")
    axes[4].set_ylabel("on time so far\n(%)")
    axes[4].set_ylim(0, 100)
    axes[-1].set_xlabel("time since the first frame (s)")
    for a in axes:
        a.grid(alpha=0.3)
    fig.suptitle("semlink demo: what the controller took as the link changed")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
