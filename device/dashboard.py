"""The device's live dashboard: ``GET /dashboard`` (one self-contained page, no CDN) polls
``GET /dashboard/state``, which this module assembles: the link's rate over time, the controller's
state, accuracy and latency so far, and the last requests with the patches each one sent.

Accuracy counts only requests whose client passed the true class (parameter ``label``); the device
cannot know it otherwise. On-time accuracy counts an answer right only if it also met its
deadline; the share within the deadline counts frames refused late or dropped as missed.
"""

from __future__ import annotations

import base64
import io
import time
from collections import deque
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from semlink.device.answer import Answer
    from semlink.device.service import DeviceService

RECENT = 12  # requests shown with their images
HISTORY = 600  # points kept for the charts
SAMPLE_S = 0.5  # at most one link-rate point per this many seconds


def page() -> str:
    """The dashboard's self-contained HTML page."""
    return resources.files("semlink.device").joinpath("dashboard.html").read_text()


@dataclass
class Seen:
    """One answered request as the dashboard shows it."""

    answer: Answer
    image: np.ndarray  # (C, H, W) as the model saw it
    truth: int | None
    t: float


def thumbnail_png(image: np.ndarray) -> str:
    """A normalised (C, H, W) image as a base64 PNG, contrast-stretched to 0..255."""
    x = np.asarray(image, np.float32)
    lo, hi = float(x.min()), float(x.max())
    x = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    pixels = (x * 255.0).round().astype(np.uint8)
    img = Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


class Dashboard:
    """What the dashboard shows: recent requests, the link's rate, latency and accuracy so far."""

    def __init__(self, grid: int, clock=time.monotonic) -> None:  # type: ignore[no-untyped-def]
        self.grid = grid  # patches per side
        self.clock = clock
        self.start = clock()
        self.recent: deque[Seen] = deque(maxlen=RECENT)
        self.latency_ms: deque[float] = deque(maxlen=HISTORY)
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY)  # per request
        self.link: deque[dict[str, Any]] = deque(maxlen=HISTORY)  # link rate samples
        self.right = self.labelled = 0
        self.right_on_time = self.on_time = self.answered = 0

    def record(self, answer: Answer, image: np.ndarray, truth: int | None) -> None:
        """Keeps one answered request (its image and, if the client sent it, the true label)."""
        now = self.clock()
        self.sample_link(answer.channel.get("bandwidth_bps"))
        self.recent.append(Seen(answer, image, truth, now))
        self.latency_ms.append(answer.timing_ms["total_ms"])
        self.answered += 1
        self.on_time += int(answer.on_time)
        if truth is not None:
            self.labelled += 1
            self.right += int(answer.label == truth)
            self.right_on_time += int(answer.label == truth and answer.on_time)
        self.history.append(
            {
                "t": now - self.start,
                "latency_ms": answer.timing_ms["total_ms"],
                "bytes": answer.request_bytes,
                "offloaded": answer.exit == "server",
                "degraded": answer.degraded,
            }
        )

    def sample_link(self, bandwidth_bps: float | None) -> None:
        """Adds a point to the link-rate chart (at most one per sampling period)."""
        now = self.clock() - self.start
        if bandwidth_bps is None or (self.link and now - self.link[-1]["t"] < SAMPLE_S):
            return
        self.link.append({"t": now, "bandwidth_bps": bandwidth_bps})

    def state(self, service: DeviceService) -> dict[str, Any]:
        """Everything the page polls: link, latency, accuracy, controller and recent requests."""
        channel = service.monitor.current
        self.sample_link(channel.bandwidth_bps)
        lat = np.array(self.latency_ms) if self.latency_ms else None
        return {
            "model": {"name": service.model.name, "version": service.model.version},
            "uptime_s": self.clock() - self.start,
            "server": service.replicas.state,
            "breaker": service.replicas.breaker_state(),
            "replicas": service.replicas.snapshot(),
            "channel": channel.as_dict(),
            "controller": {"name": service.controller.name, **service.controller.state()},
            "counts": dict(service.counts),
            "accuracy": self.right / self.labelled if self.labelled else None,
            "on_time_accuracy": self.right_on_time / self.labelled if self.labelled else None,
            "within_deadline": self.on_time / asked if (asked := self.frames(service)) else None,
            "labelled": self.labelled,
            "latency_ms": {
                "p50": float(np.percentile(lat, 50)) if lat is not None else None,
                "p95": float(np.percentile(lat, 95)) if lat is not None else None,
            },
            "grid": self.grid,
            "link": list(self.link),
            "history": list(self.history),
            "recent": [self._describe(s) for s in reversed(self.recent)],
        }

    def frames(self, service: DeviceService) -> int:
        """Frames the device was asked for: answered, and refused late or dropped."""
        return self.answered + service.counts["late"] + service.counts["dropped"]

    def _describe(self, s: Seen) -> dict[str, Any]:
        a = s.answer
        return {
            "request_id": a.request_id,
            "label": a.label,
            "truth": s.truth,
            "exit": a.exit,
            "degraded": a.degraded,
            "reason": a.degraded_reason,
            "budget": a.budget,
            "rate": a.rate,
            "tokens_sent": a.tokens_sent,
            "kept": a.kept_indices,
            "bytes": a.request_bytes,
            "latency_ms": a.timing_ms["total_ms"],
            "confidence": max(a.probabilities),
            "image_png": thumbnail_png(s.image),
        }
