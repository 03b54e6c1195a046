"""``semlink bench profile``: how much slower the device profile makes the device than the server.

The device answers by itself with its whole model (its head, then the tail it also holds): that
is timed in a child process under the profile's CPU quota (cgroups; see
:mod:`semlink.runtime.cpu_quota`), the server's whole model (the same head and tail) in a process
without one. Both run the same ONNX Runtime graphs at batch 1 on one thread, ``repeats`` times
back to back, and each costs the total time over ``repeats``: a quota is a budget per period, so
only sustained work shows the device's speed. Target: the device at least 8× the server.
"""

from __future__ import annotations

import multiprocessing
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from semlink.bench import run_and_report

TARGET_RATIO = 8.0


@dataclass
class ProfileBenchConfig:
    model: str = "scene-vit"
    """A pipeline of the shipped zoo."""
    profile: str = "camera"
    """none | phone | camera (the device's CPU quota)."""
    repeats: int = 200
    out: str = "runs/bench-profile"


def full_model_ms(model: str, share: float | None, repeats: int) -> float:
    """Sustained time of one whole-model answer (head, then the local tail) in ms, in this
    process, under the CPU quota ``share`` when given (the process stays under it)."""
    from semlink.bench import model_and_test_split
    from semlink.runtime.pipelines import make_pipeline

    # the frames are drawn before the quota: composing them is not the device's work
    mv, test = model_and_test_split(model)
    images = test.images[:16]
    if share is not None:
        from semlink.runtime.cpu_quota import limit_cpu

        limit_cpu(share, "profile")
    pipe = make_pipeline(mv)
    pipe.open(pipe.device_graphs(), threads=1)

    local = pipe.local_option()

    def answer(image: np.ndarray) -> None:
        stretch, off = pipe.run_device(image, local)  # every stretch the device holds
        assert stretch is not None
        pipe.answer_locally(stretch, off)

    for i in range(10):
        answer(images[i % len(images)][None])
    t0 = time.perf_counter()
    for i in range(repeats):
        answer(images[i % len(images)][None])
    return 1000.0 * (time.perf_counter() - t0) / repeats


def bench(cfg: ProfileBenchConfig) -> dict[str, Any]:
    """The whole model under the profile (a child process) and without it (another)."""
    from semlink.runtime.cpu_quota import profile_share

    share = profile_share(cfg.profile)
    ctx = multiprocessing.get_context("spawn")  # fresh processes: the quota is the child's own
    with ctx.Pool(1) as pool:
        server_ms = pool.apply(full_model_ms, (cfg.model, None, cfg.repeats))
    with ctx.Pool(1) as pool:
        device_ms = pool.apply(full_model_ms, (cfg.model, share, cfg.repeats))
    return {
        "config": asdict(cfg),
        "cpu_share": share,
        "device_ms": device_ms,
        "server_ms": server_ms,
        "ratio": device_ms / server_ms,
    }


def format_table(r: dict[str, Any]) -> str:
    """The two timings and their ratio as text."""
    cfg = r["config"]
    share = "no quota" if r["cpu_share"] is None else f"{r['cpu_share']:g} of a core"
    target = "met" if r["ratio"] >= TARGET_RATIO else "MISSED"
    return "\n".join(
        [
            f"{cfg['model']}, whole model (head and tail) at batch 1, one thread, "
            f"{cfg['repeats']} answers back to back",
            f"  device, profile {cfg['profile']} ({share}, cgroups)  {r['device_ms']:8.2f} ms",
            f"  server, no quota                         {r['server_ms']:8.2f} ms",
            f"  the device is {r['ratio']:.1f}x slower (target >= {TARGET_RATIO:g}x: {target})",
        ]
    )


def main(cfg: ProfileBenchConfig, json_path: str | None = None) -> int:
    """Runs the benchmark, prints its table, writes the JSON when asked."""
    return run_and_report(bench, format_table, cfg, json_path)
