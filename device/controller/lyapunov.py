"""Lyapunov drift-plus-penalty control of each frame's option (docs/methods.md#lyapunov). numpy only.

Per frame ``t``, with the channel's SNR observed, choose the option ``a`` from the calibration
table (:class:`~semlink.runtime.calibration.CalibrationTable`) minimising

    -V * acc(SNR_t, a) + sum_j Z_j * cost_j(a)

among the options predicted to answer within the frame's deadline (the per-frame constraint;
when none is, the quickest), and update each virtual queue
``Z_j <- max(0, Z_j + mu_j * (cost_j(a_t) - budget_j))`` with what the frame actually cost. A
queue grows while its long-term average exceeds the budget, which makes costly options dearer
until the average comes back under; ``V`` trades accuracy against how long that takes.

Constraints (each optional, one virtual queue each):

- ``channel_use``: complex symbols per source value (JSCC: ``k m / (H W C)``);
- ``energy``: device energy in joules, ``e_compute + e_bit * bits`` (a simple radio model);
- ``latency``: ms, as predicted (or ``bits / bandwidth + rtt`` without a predictor);
- ``link``: the share of the link's rate the frame's bytes take over the time between frames
  (``8 bytes / (bandwidth * interval)``), against a target utilisation: what the link sustains;
- ``device``: the share of the time between frames the device computes
  (``device_ms / interval``), against a target utilisation: what the device's CPU sustains.

``link`` and ``device`` are utilisations, so one configuration holds for every link, device and
frame rate; with frames one at a time (no interval) they cost nothing.

The table is read *conservatively*: at an observed SNR between calibrated points the lower
point's accuracy is used (never a better channel than observed); below the lowest calibrated SNR
every coded option is assumed to be a guess.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from semlink.device.controller.base import ChannelState, Controller, FrameState, Outcome
from semlink.protocol import params as P
from semlink.runtime.calibration import CalibrationTable
from semlink.runtime.costs import Link, Predictor
from semlink.runtime.pipelines.base import Option

CONSTRAINTS = ("channel_use", "energy", "latency", "link", "device")


@dataclass
class Constraint:
    """One long-term average constraint with its virtual queue."""

    name: str  # one of CONSTRAINTS
    budget: float
    mu: float = 1.0
    queue: float = 0.0
    total: float = 0.0  # running sum of the realised cost

    def __post_init__(self) -> None:
        if self.name not in CONSTRAINTS:
            raise ValueError(
                f"unknown constraint {self.name!r}; choose one of {', '.join(CONSTRAINTS)}"
            )
        if not self.budget > 0:
            raise ValueError(f"the {self.name} budget must be positive, got {self.budget}")
        if not self.mu > 0:
            raise ValueError(f"mu for {self.name} must be positive, got {self.mu}")


@dataclass
class EnergyModel:
    """Device energy per frame: compute plus radio energy per bit (joules)."""

    compute_j: float = 5e-3
    per_bit_j: float = 5e-8


@dataclass
class LyapunovController(Controller):
    """Drift-plus-penalty control: per frame, the option maximising
    ``V * accuracy - sum_i Z_i * cost_i`` at the current SNR among those that meet the deadline,
    with one virtual queue ``Z_i`` per long-term average constraint."""

    table: CalibrationTable
    constraints: list[Constraint]
    V: float = 10.0
    predictor: Predictor | None = None
    energy: EnergyModel = field(default_factory=EnergyModel)
    requests: int = 0
    name: str = "lyapunov"

    def __post_init__(self) -> None:
        if not self.V > 0:
            raise ValueError(f"V must be positive, got {self.V}")
        if not self.constraints:
            raise ValueError(
                "the Lyapunov controller needs at least one constraint (e.g. a channel-use budget)"
            )

    def costs(
        self, channel: ChannelState, frame: FrameState | None = None
    ) -> dict[str, np.ndarray]:
        """(A,) cost of every option for each constraint, given the channel (and frame) now."""
        bits = self.table.bits()
        out = {
            "channel_use": self.table.channel_use,
            "energy": self.energy.compute_j + self.energy.per_bit_j * bits,
        }
        bw = channel.bandwidth_bps or 0.0
        if self.predictor is not None:
            link = Link(channel.bandwidth_bps, channel.rtt_ms, channel.queued_bytes)
            elapsed = frame.elapsed_ms if frame is not None else 0.0
            device, out["latency"] = self.predictor.predict_all(self.table.options, link, elapsed)
        else:
            wire = bits / bw * 1000.0 if bw > 0 else np.full(len(bits), np.inf)
            out["latency"] = wire + (channel.rtt_ms or 0.0)
            device = np.zeros(len(bits))
        interval = frame.interval_ms if frame is not None else None
        if interval and bw > 0:
            out["link"] = bits / (bw * interval / 1000.0)
            out["device"] = device / interval
        elif interval:
            out["link"] = np.zeros(len(bits))  # no rate reported yet: nothing to weigh bytes by
            out["device"] = device / interval
        else:
            out["link"] = out["device"] = np.zeros(len(bits))
        return out

    def choose(
        self, snr_db: float | None, channel: ChannelState, frame: FrameState | None = None
    ) -> int:
        """Index of the option minimising the drift-plus-penalty objective among those that meet
        the frame's deadline (the quickest when none does)."""
        score = -self.V * self.table.accuracy_at(snr_db)
        costs = self.costs(channel, frame)
        for c in self.constraints:
            if c.queue > 0:
                score = score + c.queue * costs[c.name]
        if frame is not None and self.predictor is not None:
            late = costs["latency"] > frame.deadline_ms
            if late.all():
                return int(np.argmin(costs["latency"]))
            score = np.where(late, np.inf, score)
        return int(np.argmin(score))

    def decide(self, frame: FrameState) -> Option:
        """The option with the best drift-plus-penalty score at the channel's (or request's) SNR;
        a request's ``option`` (or, for a JSCC pipeline, ``budget`` and ``rate``) overrides it."""
        request = frame.request
        if P.OPTION in request:
            return request[P.OPTION]
        a = self.choose(request.get(P.SNR_DB, frame.channel.snr_db), frame.channel, frame)
        chosen = self.table.options[a]
        if P.BUDGET in request or P.RATE in request:
            return Option(
                chosen.action,
                chosen.split,
                request.get(P.BUDGET, chosen.budget),
                request.get(P.RATE, chosen.rate),
            )
        return chosen

    def update(self, realised: dict[str, float]) -> None:
        """Queue update with what the frame actually cost."""
        self.requests += 1
        for c in self.constraints:
            cost = realised.get(c.name, 0.0)
            c.total += cost
            c.queue = max(0.0, c.queue + c.mu * (cost - c.budget))

    def observe(self, outcome: Outcome) -> None:
        """Updates the virtual queues with what the frame cost."""
        bits = 8.0 * outcome.bytes_up
        interval = outcome.extra.get("interval_ms")
        bw = outcome.extra.get("bandwidth_bps") or 0.0
        self.update(
            {
                "channel_use": outcome.channel_uses,
                "energy": self.energy.compute_j + self.energy.per_bit_j * bits,
                "latency": outcome.latency_ms,
                "link": bits / (bw * interval / 1000.0) if interval and bw > 0 else 0.0,
                "device": outcome.device_ms / interval if interval else 0.0,
            }
        )

    def state(self) -> dict[str, Any]:
        """V, the virtual queues and the running averages of each constrained cost."""
        out: dict[str, Any] = {"V": self.V, "requests": self.requests}
        for c in self.constraints:
            out[f"Z_{c.name}"] = c.queue
            out[f"avg_{c.name}"] = c.total / self.requests if self.requests else 0.0
            out[f"budget_{c.name}"] = c.budget
        return out


__all__ = ["CONSTRAINTS", "Constraint", "EnergyModel", "LyapunovController"]
