"""What an option will cost a frame, predicted from what the device measures (docs/methods.md#one-decision).

A frame's latency under an option is the time it has already spent (receiving, decoding,
waiting for the device), plus the device's compute for the option's stages, plus, when it leaves
the device, the wire (the link's queue and the option's bytes at the link's rate, plus the round
trip) and the server's time. The device's compute per stage is measured under its own CPU quota
(:class:`StageTimes`: seeded by a warm-up at start, then a running average of every frame); the
server's time per kind of work is the running average of what replies report. numpy only: the
device's controllers and the stream simulator of the benchmarks share it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from semlink.runtime.pipelines.base import Option

WIRE_OVERHEAD_BYTES = 250  # OIP, gRPC, HTTP/2 and TLS framing of one request and its reply
UNKNOWN_BANDWIDTH_BPS = 1e6  # what a device without link feedback assumes
UNKNOWN_RTT_MS = 40.0
EWMA = 0.2  # weight of the newest measurement


class StageTimes:
    """The device's measured compute per stage (ms): a running average, seeded by a warm-up.

    A stage never measured counts as ``unknown_ms`` (0 by default): a controller then finds out
    by trying it, as the seed usually covers every stage.
    """

    def __init__(
        self, seed: dict[str, float] | None = None, weight: float = EWMA, unknown_ms: float = 0.0
    ) -> None:
        self.ms: dict[str, float] = dict(seed or {})
        self.weight, self.unknown_ms = weight, unknown_ms

    def observe(self, stage: str, ms: float) -> None:
        """Takes one measured duration of ``stage``."""
        old = self.ms.get(stage)
        self.ms[stage] = ms if old is None else (1 - self.weight) * old + self.weight * ms

    def total(self, stages: Iterable[str]) -> float:
        """The predicted time of ``stages`` one after another."""
        return sum(self.ms.get(s, self.unknown_ms) for s in stages)


@dataclass(frozen=True)
class Link:
    """The link as the device sees it: rate, round trip and bytes queued ahead."""

    bandwidth_bps: float | None = None
    rtt_ms: float | None = None
    queued_bytes: float | None = None

    def wire_ms(self, nbytes: Any) -> Any:
        """Time (ms) for ``nbytes`` (a number or an array) to cross, behind what is queued, and
        the answer to come back."""
        bw = (
            self.bandwidth_bps
            if self.bandwidth_bps and self.bandwidth_bps > 0
            else UNKNOWN_BANDWIDTH_BPS
        )
        rtt = UNKNOWN_RTT_MS if self.rtt_ms is None else self.rtt_ms
        ahead = self.queued_bytes or 0.0
        return 8000.0 * (ahead + nbytes + WIRE_OVERHEAD_BYTES) / bw + rtt


@dataclass(frozen=True)
class Prediction:
    """One option's predicted costs for one frame."""

    device_ms: float  # the device's compute
    wire_ms: float  # link queue, transfer and round trip (0 on the device)
    server_ms: float  # the server's time (0 on the device)
    latency_ms: float  # arrival to answer: elapsed + the three above
    bytes_up: float  # payload towards the server


@dataclass(frozen=True)
class _Plan:
    """A set of options as arrays: the stages each runs, what each sends, its server work."""

    stages: list[str]
    uses: np.ndarray  # (A, S) 1 where option a runs stage s
    after: np.ndarray  # (D+1, S) 0 for the stretches already run
    offloads: np.ndarray  # (A,) bool
    bytes: np.ndarray  # (A,)
    server_keys: list[str]
    server_of: np.ndarray  # (A,) index into server_keys


class Predictor:
    """Predicts every option's costs for a frame from measured stage times, the link's state and
    the servers' reported times.

    Args:
        stages: the device stages an option runs, by name (the pipeline's :meth:`stages`).
        bytes_of: an option's expected payload bytes (the calibration table's mean).
        times: the device's measured stage times.
    """

    def __init__(
        self,
        stages: Callable[[Option], list[str]],
        bytes_of: Callable[[Option], float],
        times: StageTimes,
    ) -> None:
        self.stages, self.bytes_of, self.times = stages, bytes_of, times
        self.server = StageTimes(unknown_ms=2.0)  # per kind of server work
        self._cached: tuple[tuple[Option, ...], _Plan] | None = None

    @staticmethod
    def server_key(option: Option) -> str:
        """The server's kind of work for ``option`` (picture, tokens or symbols at a split)."""
        if option.action == "upload":
            return "full"
        return f"{'jscc' if option.rate is not None else 'tail'}_{option.split}"

    def predict(
        self, option: Option, link: Link, elapsed_ms: float = 0.0, done: int = 0
    ) -> Prediction:
        """``option``'s costs for a frame that has spent ``elapsed_ms`` so far and whose first
        ``done`` stretches have run."""
        ran = {f"stretch{k}" for k in range(done)}
        device = self.times.total(s for s in self.stages(option) if s not in ran)
        if not option.offloads:
            return Prediction(device, 0.0, 0.0, elapsed_ms + device, 0.0)
        nbytes = self.bytes_of(option)
        wire = link.wire_ms(nbytes)
        server = self.server.total([self.server_key(option)])
        return Prediction(device, wire, server, elapsed_ms + device + wire + server, nbytes)

    def latencies(
        self, options: Sequence[Option], link: Link, elapsed_ms: float = 0.0, done: int = 0
    ) -> np.ndarray:
        """(A,) the predicted latency of every option at once, as :meth:`predict` gives each
        (a controller weighs every option on every frame: this is one matrix product)."""
        return self.predict_all(options, link, elapsed_ms, done)[1]

    def predict_all(
        self, options: Sequence[Option], link: Link, elapsed_ms: float = 0.0, done: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """(A,) device compute and (A,) latency of every option at once."""
        plan = self._plan(tuple(options))
        times = np.array([self.times.ms.get(st, self.times.unknown_ms) for st in plan.stages])
        used = plan.uses if done == 0 else plan.uses * plan.after[min(done, len(plan.after) - 1)]
        device = used @ times
        server = np.array([self.server.ms.get(k, self.server.unknown_ms) for k in plan.server_keys])
        wire = np.where(plan.offloads, link.wire_ms(plan.bytes) + server[plan.server_of], 0.0)
        return device, elapsed_ms + device + wire

    def _plan(self, options: tuple[Option, ...]) -> _Plan:
        """Which stages each option runs, what it sends and to which server work (made once)."""
        if self._cached is not None and self._cached[0] == options:
            return self._cached[1]
        per = [self.stages(o) for o in options]
        stages = sorted({st for ss in per for st in ss})
        col = {st: j for j, st in enumerate(stages)}
        uses = np.zeros((len(options), len(stages)))
        for i, ss in enumerate(per):
            for st in ss:
                uses[i, col[st]] = 1.0
        depth = 1 + max((int(st[7:]) for st in stages if st.startswith("stretch")), default=-1)
        after = np.ones((depth + 1, len(stages)))  # after[d]: 0 for the first d stretches
        for d in range(depth + 1):
            for k in range(d):
                if f"stretch{k}" in col:
                    after[d, col[f"stretch{k}"]] = 0.0
        keys = sorted({self.server_key(o) for o in options})
        plan = _Plan(
            stages,
            uses,
            after,
            np.array([o.offloads for o in options]),
            np.array([self.bytes_of(o) if o.offloads else 0.0 for o in options]),
            keys,
            np.array([keys.index(self.server_key(o)) for o in options]),
        )
        self._cached = (options, plan)
        return plan

    def observe_server(self, option: Option, server_ms: float) -> None:
        """Takes one reply's reported server time for ``option``'s kind of work."""
        self.server.observe(self.server_key(option), server_ms)


__all__ = ["EWMA", "Link", "Prediction", "Predictor", "StageTimes", "WIRE_OVERHEAD_BYTES"]
