"""``semlink bench profile``: what each device class is, and what a frame costs there, stage by stage.

Per device profile (a real CPU quota with the smallest period the kernel accepts; see
:mod:`semlink.runtime.cpu_quota`):

- **calibration**: MobileNetV1 (224x224, fp32, ONNX Runtime, one thread) under the quota against
  the published time of the class the profile stands for (the ncnn benchmark figures), and this
  machine's core without a quota (the basis of every share);
- **effective GFLOP/s** on the project's own graphs: the device blocks' FLOPs (the manifest's
  ``segment_flops``) over their sustained time under the quota;
- **every device stage** (each block with its exit, the selector, the coder, the JPEG encoder, the
  stream's front), each run back to back under the quota in a child process: sustained mean,
  p50 and p95 per call;
- **a real device** under the profile (a device process, a link emulator at 10 Mbit/s, a server)
  answering a camera's stream at a rate it keeps up with, once at its first exit and once
  offloading tokens: p50/p95 of the timings its answers report (the front and decode, the
  stretches, the pack, serialising and the gRPC round trip) and the device process's CPU per
  frame, read from ``/proc``, beyond what it spends a second with no frame at all (polling the
  link's state, probing the servers): the per-frame overhead and the reserved CPU the simulator
  charges (``front_ms``, ``after_ms``, ``idle_ms_per_s``).

The JSON (``--json``) is what ``semlink bench regimes`` predicts from.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from semlink.bench import run_and_report
from semlink.models.progress import progress_bar
from semlink.models.stream_sim import DeviceCosts

STREAM_OPTIONS = ("exit1", "s1:a0.25")  # the device's cheapest answer, and an offload


@dataclass
class ProfileBenchConfig:
    model: str = "scene-xl"
    """An any-split network of the zoo."""
    profiles: list[str] = field(
        default_factory=lambda: ["phone", "pi4", "pi-zero-2", "sensor", "camera"]
    )
    """Device profiles to measure (see ``semlink device --help``)."""
    repeats: int = 20
    """Runs of each stage (and of MobileNetV1) back to back under the quota."""
    frames: int = 24
    """Frames of the real device's stream, per option."""
    idle_seconds: float = 6.0
    """How long the real device is watched doing no frame (its reserved CPU per second)."""
    out: str = "runs/bench-profile"

    def __post_init__(self) -> None:
        if not self.idle_seconds > 0:
            raise ValueError(f"--idle-seconds must be positive, got {self.idle_seconds}")


FRAME_CPU_MS = 5.0  # about what a frame costs a device process here, all told (bench profile)
IDLE_S = ProfileBenchConfig.idle_seconds  # seconds a real device is watched doing no frame


def stream_costs(
    model: str, profile: str, frames: int, budget_ms: float, idle_s: float = IDLE_S
) -> dict[str, Any]:
    """A real device under ``profile`` (see the module docstring): its CPU per second with no
    frame (``idle_ms_per_s``: polling the link's state, probing the servers), then per option
    (``options``) the p50/p95 of its answers' timings on a stream it keeps up with, its process's
    CPU per frame beyond the idle one, and the CPU each frame's own path reports (receiving,
    parsing, the stages, packing)."""
    from semlink.procs import Processes, Stack
    from semlink.runtime.cpu_quota import PROFILES
    from semlink.stream import StreamConfig, frames_of, send

    procs = Processes(Path(tempfile.mkdtemp(prefix="semlink-profile-")))
    stack = Stack(procs, model=model)
    options: dict[str, Any] = {}
    try:
        stack.start_all(
            link_args=("--rate", "10mbit", "--delay-ms", "5"),
            device_args=("--device-profile", profile, "--controller", "fixed", "--option", "exit1"),
        )
        time.sleep(1.0)  # the start's own work done
        c0 = procs.cpu_seconds("device")
        time.sleep(idle_s)
        idle = 1000.0 * (procs.cpu_seconds("device") - c0) / idle_s
        pixels, labels, _ = frames_of(model, 0, frames)
        # a rate it keeps up with: a third of its stage's pace, and of what its quota's CPU
        # leaves for frames of about FRAME_CPU_MS (the sensor's background takes most of it)
        share = PROFILES[profile].share if profile in PROFILES else None
        room = 1000.0 * (share or 1.0) / (4.0 * FRAME_CPU_MS)
        fps = max(0.2, min(5.0, 1000.0 / (3.0 * budget_ms), room))
        url = f"ws://127.0.0.1:{stack.ports['device']}/v1/stream"
        for option in STREAM_OPTIONS:
            cfg = StreamConfig(url, fps, frames / fps, 60_000.0, model, option=option)
            c0, t0 = procs.cpu_seconds("device"), time.perf_counter()
            n, _, answers, _ = asyncio.run(send(cfg, pixels, labels, {"answer": True}))
            busy_s = time.perf_counter() - t0
            cpu = (1000.0 * (procs.cpu_seconds("device") - c0) - idle * busy_s) / n
            timings: dict[str, list[float]] = {}
            for doc, _ in answers.values():
                for k, v in (doc.get("answer") or {}).get("timing_ms", {}).items():
                    timings.setdefault(k, []).append(float(v))
            options[option] = {
                "cpu_ms_per_frame": max(cpu, 0.0),
                "stage_cpu_ms": float(
                    np.mean([d.get("device_cpu_ms", 0.0) for d, _ in answers.values()])
                ),
                "timings": {
                    k: {"p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95))}
                    for k, v in timings.items()
                },
            }
    finally:
        procs.stop()
    return {"idle_ms_per_s": idle, "options": options}


def device_costs(
    model: str, frames: int = 24, repeats: int = 20, idle_s: float = IDLE_S
) -> DeviceCosts:
    """What a frame costs the device in CPU at the machine's speed and the server's times: the
    simulator's costs, which a device class's quota then stretches
    (:class:`models.stream_sim.Cpu`). Each stage's CPU is measured alone; the rest comes from a
    real device process (from ``/proc``): its CPU per second with no frame (reserved from every
    quota), the CPU on a frame's path beyond its stages (receiving, parsing, packing: before
    the answer), the CPU after the answer (sending it, metrics, logs) and an offload's send."""
    from semlink.models.stream_costs import in_child, server_times, stage_times

    stages = in_child(stage_times, model, None, None, repeats)
    server = in_child(server_times, model, repeats)
    real = stream_costs(model, "none", frames, stages["stretch0"].mean, idle_s)
    normalise = stages.pop("front").mean
    cpu = {k: v.mean for k, v in stages.items()}
    exit1, offload = real["options"]["exit1"], real["options"]["s1:a0.25"]
    front = max(normalise, exit1["stage_cpu_ms"] - cpu["stretch0"])
    after = max(0.0, exit1["cpu_ms_per_frame"] - front - cpu["stretch0"])
    send = max(
        0.0, offload["cpu_ms_per_frame"] - exit1["cpu_ms_per_frame"] - cpu.get("select1", 0.0)
    )
    return DeviceCosts(cpu, front, server, after, send, idle_ms_per_s=real["idle_ms_per_s"])


def measure_profile(cfg: ProfileBenchConfig, name: str, flops: dict[str, Any]) -> dict[str, Any]:
    """One profile's calibration, stage times and real device (see the module docstring)."""
    from semlink.models.stream_costs import in_child, mobilenet_ms, stage_times
    from semlink.runtime.cpu_quota import PROFILES

    p = PROFILES[name]
    mobilenet = in_child(mobilenet_ms, p.share, p.period_us, max(5, cfg.repeats // 2))
    stages = in_child(stage_times, cfg.model, p.share, p.period_us, cfg.repeats)
    blocks = [k for k in stages if k.startswith("stretch")]
    block_flops = sum(flops["steps"][int(k[7:])] for k in blocks)
    gflops = block_flops / sum(stages[k].mean for k in blocks) / 1e6
    real = stream_costs(cfg.model, name, cfg.frames, stages["stretch0"].mean, cfg.idle_seconds)
    return {
        "cpu_share": p.share,
        "period_us": p.period_us,
        "device_class": p.device_class,
        "source": p.source,
        "published_mobilenet_ms": p.published_ms,
        "mobilenet_ms": asdict(mobilenet),
        "gflops": gflops,
        "stages_ms": {k: asdict(v) for k, v in stages.items()},
        "idle_ms_per_s": real["idle_ms_per_s"],
        "real": real["options"],
    }


def bench(cfg: ProfileBenchConfig) -> dict[str, Any]:
    """This machine's core, then every profile."""
    from semlink.models.stream_costs import in_child, mobilenet_ms
    from semlink.runtime.repository import DEFAULT_REPOSITORY, resolve, scan

    t0 = time.perf_counter()
    mv = resolve(scan(DEFAULT_REPOSITORY), cfg.model)
    flops = mv.manifest.doc["segment_flops"]
    core = in_child(mobilenet_ms, None, None, cfg.repeats)
    costs = device_costs(cfg.model, cfg.frames, cfg.repeats, cfg.idle_seconds)
    profiles = {}
    for name in progress_bar(cfg.profiles, desc="bench profile", unit="profile"):
        profiles[name] = measure_profile(cfg, name, flops)
    return {
        "config": asdict(cfg),
        "core_mobilenet_ms": asdict(core),
        "costs": asdict(costs),
        "segment_flops": flops,
        "profiles": profiles,
        "seconds": time.perf_counter() - t0,
    }


def format_table(r: dict[str, Any]) -> str:
    """Per profile: its class, quota, calibration, effective GFLOP/s and where a frame's time goes."""
    cfg, core = r["config"], r["core_mobilenet_ms"]
    lines = [
        f"{cfg['model']}: device classes as real CPU quotas. This machine's core: MobileNetV1 "
        f"{core['mean']:.1f} ms (ONNX Runtime, one thread).",
        f"{'profile':<10} {'share':>7} {'period':>8} {'MobileNetV1 ms':>15} {'published':>10} {'GFLOP/s':>8}  class",
    ]
    for name, p in r["profiles"].items():
        pub = "-" if p["published_mobilenet_ms"] is None else f"{p['published_mobilenet_ms']:.1f}"
        lines.append(
            f"{name:<10} {p['cpu_share']:>7.4f} {p['period_us'] / 1000:>6.1f}ms {p['mobilenet_ms']['mean']:>15.1f} "
            f"{pub:>10} {p['gflops']:>8.2f}  {p['device_class']}"
        )
    c = r["costs"]
    lines.append(
        f"\nCPU a frame at full speed beyond the stages: front {c['front_ms']:.2f} ms, after the answer "
        f"{c['after_ms']:.2f} ms, an offload's send {c['send_ms']:.2f} ms; with no frame "
        f"{c.get('idle_ms_per_s', 0.0):.1f} ms a second (a real device process, from /proc)"
    )
    for name, p in r["profiles"].items():
        stages = "  ".join(f"{k} {v['p50']:.1f}/{v['p95']:.1f}" for k, v in p["stages_ms"].items())
        lines.append(
            f"\n{name}: stage p50/p95 ms under the quota: {stages}; with no frame "
            f"{p.get('idle_ms_per_s', float('nan')):.1f} ms of CPU a second"
        )
        for option, real in p["real"].items():
            t = real["timings"]
            shown = "  ".join(
                f"{k.removesuffix('_ms')} {v['p50']:.1f}/{v['p95']:.1f}"
                for k, v in t.items()
                if k != "total_ms"
            )
            total = t.get("total_ms", {"p50": float("nan"), "p95": float("nan")})
            lines.append(
                f"  a real device, {option}: total {total['p50']:.1f}/{total['p95']:.1f} ms, "
                f"{real['cpu_ms_per_frame']:.1f} ms of CPU a frame; {shown}"
            )
    lines.append(f"\n({r['seconds']:.0f} s)")
    return "\n".join(lines)


def main(cfg: ProfileBenchConfig, json_path: str | None = None) -> int:
    """Runs the benchmark, prints its table, writes the JSON when asked."""
    return run_and_report(bench, format_table, cfg, json_path)


__all__ = ["ProfileBenchConfig", "bench", "format_table", "main"]
