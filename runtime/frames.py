"""What the device knows of a frame when it decides, and what the frame cost: the vocabulary that
the device's controllers, the stream simulator of the benchmarks and the RL environment share.
numpy-free dataclasses."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from semlink.runtime.pipelines.base import Option


@dataclass(frozen=True)
class ChannelState:
    """What the device knows of the link right now (from the emulator's state feedback)."""

    bandwidth_bps: float | None = None
    rtt_ms: float | None = None
    snr_db: float | None = None
    queued_bytes: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """The state as a JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class FrameState:
    """What the device knows when one frame starts on it."""

    request: dict[str, Any]  # the validated request parameters (may be empty)
    channel: ChannelState
    deadline_ms: float  # from the frame's arrival
    elapsed_ms: float = 0.0  # since its arrival: receiving, decoding, waiting for the device
    waiting: int = 0  # frames waiting behind it for the device
    interval_ms: float | None = None  # recent time between frames (None: one at a time)

    @property
    def left_ms(self) -> float:
        """What is left of the deadline."""
        return self.deadline_ms - self.elapsed_ms


@dataclass(frozen=True)
class ExitState:
    """Where the device stands at one of its exits."""

    k: int  # position among the device's stretches, 0-based
    num_exits: int  # how many stretches the device holds
    split: int  # model blocks behind this exit
    confidence: float  # max probability at this exit
    prev_confidence: float | None  # at the previous device exit
    elapsed_ms: float  # since the frame arrived
    deadline_ms: float

    @property
    def last(self) -> bool:
        """Whether this is the device's last exit."""
        return self.k == self.num_exits - 1


@dataclass
class Outcome:
    """What one frame cost, as the controller learns it after the answer."""

    option: Option  # the option taken
    bytes_up: int = 0  # on the wire towards the server (0: answered on the device)
    channel_uses: float = 0.0  # JSCC: complex channel uses per source value
    latency_ms: float = 0.0  # arrival to answer
    device_ms: float = 0.0  # the device's CPU time on it
    server_queue_ms: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


__all__ = ["ChannelState", "ExitState", "FrameState", "Outcome"]
