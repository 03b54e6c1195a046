"""``semlink stream``: a camera's stream of frames to a device, open loop, and what came of each.

Frames (the test split of the model's dataset, as a camera's 8-bit pixels) leave at ``fps`` a
second whatever the answers do, on one WebSocket to the device's ``/v1/stream``
(:mod:`semlink.device.stream`), each with its deadline and its true label. Every frame gets one
answer; a frame counts as right on time when its answer is right and arrives (at the camera)
within the deadline after it was sent. The summary: on-time accuracy with n and its 95 %
interval, accuracy of the answered frames, the share within the deadline, late and dropped
frames, latency, bytes up per frame and the device's CPU per frame, and the options taken.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from semlink.models.stats import wilson
from semlink.protocol.stream import frame_message


@dataclass
class StreamConfig:
    url: str = "ws://127.0.0.1:8080/v1/stream"
    """The device's stream endpoint (wss:// for a device behind TLS)."""
    fps: float = 15.0
    """Frames per second, sent open loop."""
    seconds: float = 10.0
    deadline_ms: float = 100.0
    """Each frame's deadline, from when it leaves the camera."""
    model: str = "scene-split"
    """The device's model: its test frames are what the camera sends."""
    option: str | None = None
    """Ask every frame for this option (e.g. exit2, s1:a0.25, jpeg75); default: the device's controller."""
    api_key: str | None = None
    """Sent as ``Authorization: Bearer`` when the device wants one (or SEMLINK_API_KEY)."""
    seed: int = 0

    @property
    def frames(self) -> int:
        """How many frames the stream sends: ``fps`` for ``seconds``, at least one."""
        return frame_count(self.fps, self.seconds)


def frame_count(fps: float, seconds: float) -> int:
    """Frames a camera sends at ``fps`` for ``seconds`` (at least one)."""
    return max(1, int(fps * seconds))


def frames_of(
    model: str, seed: int, count: int | None = None
) -> tuple[np.ndarray, np.ndarray, Any]:
    """The test split's frames as 8-bit pixels (F, H, W, C) in an order drawn from ``seed``,
    their labels, and the manifest; with ``count``, only the split's first ``count`` frames
    (a digits-scene split composes no more than those: 13 s for scene-split's whole test split)."""
    from semlink.bench import model_and_test_split

    if count is not None and count < 1:
        raise ValueError(f"count must be at least 1 (or None: the whole split), got {count}")
    mv, test = model_and_test_split(model, count)
    norm = mv.manifest.normalisation
    n = len(test.labels) if count is None else min(count, len(test.labels))
    order = np.random.default_rng(seed).permutation(n)
    pixels = np.stack([norm.invert(test.images[i]) for i in order])
    return pixels, test.labels[order], mv.manifest


async def run(cfg: StreamConfig, pixels: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Sends the stream and collects an answer to every frame (waiting at most the deadline
    plus 5 s after the last one left); returns the summary."""
    return summarise(cfg, *await send(cfg, pixels, labels))


async def send(
    cfg: StreamConfig, pixels: np.ndarray, labels: np.ndarray, extra: dict[str, Any] | None = None
) -> tuple[int, dict[int, float], dict[int, tuple[dict[str, Any], float]], np.ndarray]:
    """Sends the stream (``extra``: more header fields for every frame); returns the frame count,
    when each frame left and each answer with when it came (camera clock, s), and the labels in
    the order sent."""
    import websockets

    n = cfg.frames
    sent: dict[int, float] = {}
    answers: dict[int, tuple[dict[str, Any], float]] = {}
    headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else None
    params: dict[str, Any] = {"deadline_ms": cfg.deadline_ms, **(extra or {})}
    if cfg.option:
        params["option"] = cfg.option
    async with websockets.connect(
        cfg.url, additional_headers=headers, max_size=2**20, compression=None
    ) as ws:

        async def receive() -> None:
            while len(answers) < n:
                doc = json.loads(await ws.recv())
                answers[doc["id"]] = (doc, time.perf_counter())

        reader = asyncio.ensure_future(receive())
        t0 = time.perf_counter()
        for i in range(n):
            await asyncio.sleep(max(0.0, t0 + i / cfg.fps - time.perf_counter()))
            j = i % len(labels)
            sent[i] = time.perf_counter()
            await ws.send(frame_message(i, pixels[j], {**params, "label": int(labels[j])}))
        try:
            await asyncio.wait_for(reader, cfg.deadline_ms / 1000.0 + 5.0)
        except TimeoutError:
            reader.cancel()
    return n, sent, answers, labels


def summarise(
    cfg: StreamConfig,
    n: int,
    sent: dict[int, float],
    answers: dict[int, tuple[dict[str, Any], float]],
    labels: np.ndarray,
) -> dict[str, Any]:
    """On-time accuracy and the rest of the summary, from the camera's clock."""
    right: list[bool] = []
    on_time: list[bool] = []
    latency: list[float] = []
    bytes_up: list[float] = []
    cpu: list[float] = []
    outcomes: Counter[str] = Counter()
    options: Counter[str] = Counter()
    for i in range(n):
        doc, at = answers.get(i, ({"outcome": "lost"}, float("inf")))
        outcomes[doc["outcome"]] += 1
        ok = doc.get("label") == int(labels[i % len(labels)])
        ms = 1000.0 * (at - sent[i])
        right.append(ok)
        on_time.append(ok and ms <= cfg.deadline_ms)
        if doc["outcome"] in ("server", "device", "degraded"):
            latency.append(ms)
            options[doc["option"]] += 1
            bytes_up.append(doc.get("bytes_up", 0))
            cpu.append(doc.get("device_cpu_ms", 0.0))
    answered = len(latency)
    acc = float(np.mean(on_time))
    lo, hi = wilson(acc, n)
    return {
        "frames": n,
        "on_time": acc,
        "ci95": [lo, hi],
        "answered_accuracy": float(sum(right) / answered) if answered else 0.0,
        "within_deadline": float(np.mean([x <= cfg.deadline_ms for x in latency]) * answered / n)
        if answered
        else 0.0,
        "outcomes": dict(outcomes),
        "options": dict(options.most_common()),
        "p50_ms": float(np.percentile(latency, 50)) if latency else None,
        "p95_ms": float(np.percentile(latency, 95)) if latency else None,
        "bytes_up": float(np.mean(bytes_up)) if bytes_up else 0.0,
        "device_cpu_ms": float(np.mean(cpu)) if cpu else 0.0,
    }


def format_summary(cfg: StreamConfig, r: dict[str, Any]) -> str:
    """The summary as a few lines."""
    lo, hi = r["ci95"]
    p50 = "-" if r["p50_ms"] is None else f"{r['p50_ms']:.1f}"
    p95 = "-" if r["p95_ms"] is None else f"{r['p95_ms']:.1f}"
    top = ", ".join(f"{k} {v}" for k, v in list(r["options"].items())[:6])
    return "\n".join(
        [
            f"{r['frames']} frames at {cfg.fps:g}/s, deadline {cfg.deadline_ms:g} ms",
            f"  on time (right within the deadline)  {100 * r['on_time']:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}]",
            f"  accuracy of answered frames           {100 * r['answered_accuracy']:.1f} %",
            f"  answered within the deadline          {100 * r['within_deadline']:.1f} %",
            f"  outcomes                              {r['outcomes']}",
            f"  latency p50 / p95                     {p50} / {p95} ms",
            f"  per frame: bytes up {r['bytes_up']:.0f}, device CPU {r['device_cpu_ms']:.1f} ms",
            f"  options taken                         {top}",
        ]
    )


__all__ = ["StreamConfig", "format_summary", "frame_count", "frames_of", "run", "send", "summarise"]
