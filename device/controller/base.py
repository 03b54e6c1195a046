"""The controller seam: per frame, choose one option of the pipeline's option space.

A controller sees what the device knows when a frame starts (:class:`FrameState`: the request,
the link's state, the deadline, how long the frame has waited and how many wait behind it, the
device's measured costs) and plans an :class:`~semlink.runtime.pipelines.base.Option`
(:meth:`Controller.decide`). At each exit the device reaches on the way, it may change its mind
(:meth:`Controller.at_exit`): answer there, offload there, or go on with the plan. After the
answer it learns what the frame cost (:meth:`Controller.observe`).
"""

from __future__ import annotations

import abc
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


class Controller(abc.ABC):
    """Chooses each frame's option; implementations keep their own long-term state."""

    name: str = "base"

    @abc.abstractmethod
    def decide(self, frame: FrameState) -> Option:
        """The option planned for a frame."""

    def at_exit(self, state: ExitState, frame: FrameState, plan: Option) -> Option:
        """At a device exit on the way to ``plan``: the option to take now (an exit or an
        offload at ``state.split``), or ``plan`` to go on. By default the plan stands."""
        return plan

    def observe(self, outcome: Outcome) -> None:  # noqa: B027 - an optional hook
        """Called after each frame with what it cost."""

    def state(self) -> dict[str, Any]:
        """Controller state to report in answers, metrics and the dashboard."""
        return {}
