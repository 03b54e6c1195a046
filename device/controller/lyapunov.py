"""Lyapunov drift-plus-penalty control of budget and rate (METHODS §3). numpy only.

Per request ``t``, with the channel's SNR observed, choose the action ``a = (alpha, r)`` from the
calibration table minimising

    -V * acc(SNR_t, a) + sum_j Z_j * cost_j(a)

and update each virtual queue ``Z_j <- max(0, Z_j + mu_j * (cost_j(a_t) - budget_j))``. A queue
grows while its long-term average exceeds the budget, which makes costly actions dearer until the
average comes back under; ``V`` trades accuracy against how long that takes.

Constraints (each optional, one virtual queue each):

- ``channel_use``: complex symbols per source value, ``k * m / (H W C)`` (the table's ``gamma``);
- ``energy``: device energy in joules, ``e_compute + e_bit * bits`` (a simple radio model);
- ``latency``: ms, ``bits / bandwidth + rtt`` from the link's state feedback.

The table is read *conservatively*: at an observed SNR between calibrated points the lower
point's accuracy is used (never a better channel than observed); below the lowest calibrated SNR
every action is assumed to be a guess, so the controller spends as little as it can.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from semlink.device.controller.base import ChannelState, Controller, Decision

CALIBRATION_VERSION = 1
SYMBOL_BITS = 2 * 16  # one complex symbol as two fp16 values on the wire


@dataclass
class CalibrationTable:
    """Accuracy per (SNR, action) and the actions' channel uses, from ``semlink calibrate``."""

    snrs: np.ndarray  # (S,) dB, ascending
    alphas: np.ndarray  # (A,)
    rates: np.ndarray  # (A,)
    tokens: np.ndarray  # (A,) k
    symbols: np.ndarray  # (A,) m per token
    channel_use: np.ndarray  # (A,) gamma
    accuracy: np.ndarray  # (S, A)
    chance: float = 0.1

    @classmethod
    def from_rows(cls, rows: list[dict[str, Any]], chance: float = 0.1) -> CalibrationTable:
        """The table from calibration rows ``{snr_db, alpha, rate, accuracy, ...}``; SNRs missing
        for an action count as ``chance`` accuracy.
        """
        snrs = np.array(sorted({r["snr_db"] for r in rows}))
        actions = sorted({(r["alpha"], r["rate"]) for r in rows})
        index = {a: i for i, a in enumerate(actions)}
        acc = np.full((len(snrs), len(actions)), np.nan)
        per_action: dict[int, dict[str, Any]] = {}
        for r in rows:
            a = index[(r["alpha"], r["rate"])]
            acc[np.searchsorted(snrs, r["snr_db"]), a] = r["accuracy"]
            per_action[a] = r
        if np.isnan(acc).any():
            raise ValueError(
                "calibration table is not a full grid: some (SNR, alpha, rate) points are missing"
            )
        col = [per_action[i] for i in range(len(actions))]
        return cls(
            snrs,
            np.array([a for a, _ in actions]),
            np.array([r for _, r in actions]),
            np.array([c["k"] for c in col]),
            np.array([c["m"] for c in col]),
            np.array([c["channel_uses"] for c in col]),
            acc,
            chance,
        )

    @classmethod
    def load(cls, path: str | Path, model_hash: str | None = None) -> CalibrationTable:
        """Reads a ``calibration.json``; refuses another format or another model's table."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"calibration table {path} does not exist; run `semlink calibrate --model-dir {path.parent}`"
            )
        doc = json.loads(path.read_text())
        if doc.get("calibration_version") != CALIBRATION_VERSION:
            raise ValueError(
                f"{path}: calibration_version {doc.get('calibration_version')!r} is not {CALIBRATION_VERSION}; "
                "re-run `semlink calibrate`"
            )
        if model_hash is not None and doc.get("model_hash") != model_hash:
            raise ValueError(
                f"{path} was calibrated for model {doc.get('model_hash')!r}, not {model_hash!r}; "
                "re-run `semlink calibrate` for this model"
            )
        return cls.from_rows(doc["grid"])

    def accuracy_at(self, snr_db: float | None) -> np.ndarray:
        """(A,) accuracy per action at the lower calibrated SNR (conservative)."""
        if snr_db is None:  # no channel feedback: assume the worst calibrated channel
            return self.accuracy[0]
        i = int(np.searchsorted(self.snrs, snr_db, side="right")) - 1
        if i < 0:
            return np.full(self.accuracy.shape[1], self.chance)
        return self.accuracy[i]

    def bits(self) -> np.ndarray:
        """Bits on the wire per action (tokens x symbols x bits per symbol)."""
        return self.tokens * self.symbols * SYMBOL_BITS


@dataclass
class Constraint:
    """One long-term average constraint with its virtual queue."""

    name: str  # channel_use | energy | latency
    budget: float
    mu: float = 1.0
    queue: float = 0.0
    total: float = 0.0  # running sum of the realised cost

    def __post_init__(self) -> None:
        if self.name not in ("channel_use", "energy", "latency"):
            raise ValueError(
                f"unknown constraint {self.name!r}; choose channel_use, energy or latency"
            )
        if not self.budget > 0:
            raise ValueError(f"the {self.name} budget must be positive, got {self.budget}")
        if not self.mu > 0:
            raise ValueError(f"mu for {self.name} must be positive, got {self.mu}")


@dataclass
class EnergyModel:
    """Device energy per request: compute of the head plus radio energy per bit (joules)."""

    compute_j: float = 5e-3
    per_bit_j: float = 5e-8


@dataclass
class LyapunovController(Controller):
    """Drift-plus-penalty control (METHODS §5): per request, the action (alpha, r) maximising
    ``V * accuracy - sum_i Z_i * cost_i`` at the current SNR, with one virtual queue ``Z_i`` per
    long-term average constraint.
    """

    table: CalibrationTable
    constraints: list[Constraint]
    V: float = 10.0
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

    def costs(self, channel: ChannelState) -> dict[str, np.ndarray]:
        """(A,) cost of every action for each constraint, given the channel now."""
        bits = self.table.bits()
        out = {
            "channel_use": self.table.channel_use,
            "energy": self.energy.compute_j + self.energy.per_bit_j * bits,
        }
        bw = channel.bandwidth_bps or 0.0
        out["latency"] = (bits / bw * 1000.0 if bw > 0 else np.full(len(bits), np.inf)) + (
            channel.rtt_ms or 0.0
        )
        return out

    def choose(self, snr_db: float | None, channel: ChannelState) -> int:
        """Index of the action minimising the drift-plus-penalty objective."""
        score = -self.V * self.table.accuracy_at(snr_db)
        costs = self.costs(channel)
        for c in self.constraints:
            if c.queue > 0:
                score = score + c.queue * costs[c.name]
        return int(np.argmin(score))

    def decide(self, request: dict[str, Any], channel: ChannelState) -> Decision:
        """The action with the best drift-plus-penalty score at the channel's (or request's) SNR."""
        a = self.choose(request.get("snr_db", channel.snr_db), channel)
        budget = float(request.get("budget", self.table.alphas[a]))
        rate = float(request.get("rate", self.table.rates[a]))
        reason = (
            "request override"
            if ("budget" in request or "rate" in request)
            else f"drift-plus-penalty action {a}"
        )
        return Decision(budget=budget, rate=rate, reason=reason)

    def update(self, realised: dict[str, float]) -> None:
        """Queue update with what the request actually cost."""
        self.requests += 1
        for c in self.constraints:
            cost = realised[c.name]
            c.total += cost
            c.queue = max(0.0, c.queue + c.mu * (cost - c.budget))

    def observe(self, decision: Decision, outcome: dict[str, Any]) -> None:
        """Updates the virtual queues with what the request cost."""
        self.update(
            {
                "channel_use": outcome.get("channel_uses") or 0.0,
                "energy": self.energy.compute_j
                + self.energy.per_bit_j * 8 * outcome.get("payload_bytes", 0),
                "latency": outcome.get("latency_ms", 0.0),
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
