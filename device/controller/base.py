"""The controller seam: per request, decide budget, rate, split and whether to offload."""

from __future__ import annotations

import abc
from dataclasses import asdict, dataclass
from typing import Any


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
class Decision:
    """What a controller chose for one request."""

    budget: float  # alpha in (0, 1]
    rate: float = 1.0  # JSCC rate r in (0, 1]; 1.0 = no JSCC coding
    split: int | None = None  # None = the pipeline's own split
    offload: bool = True  # False = answer locally
    reason: str = ""


@dataclass(frozen=True)
class ExitState:
    """Where an early-exit network stands at one of the device's exits."""

    k: int  # position among the device's exits, 0-based
    num_exits: int  # how many exits the device holds
    confidence: float  # max probability at this exit
    prev_confidence: float | None  # at the previous device exit
    elapsed_ms: float  # since the request arrived
    deadline_ms: float

    @property
    def last(self) -> bool:
        """Whether this is the device's last exit."""
        return self.k == self.num_exits - 1


class Controller(abc.ABC):
    """Chooses what each request costs; implementations keep their own long-term state."""

    name: str = "base"

    @abc.abstractmethod
    def decide(self, request: dict[str, Any], channel: ChannelState) -> Decision:
        """``request`` holds the validated per-request parameters (may be empty)."""

    def observe(self, decision: Decision, outcome: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Called after each request with what it cost (bytes, latency, ...)."""

    def state(self) -> dict[str, Any]:
        """Controller state to report in responses and metrics."""
        return {}

    def at_exit(self, state: ExitState, channel: ChannelState) -> str:
        """Early-exit networks: ``"exit"``, ``"continue"`` or ``"offload"`` at a device exit.

        Controllers that decide only per request run the device's blocks and offload there.
        """
        return "offload" if state.last else "continue"
