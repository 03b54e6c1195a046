"""A camera's stream through a device, a link and a server, replayed from measured costs and the
recorded outcome of every option on every frame (docs/methods.md#one-decision). numpy only.

Frames arrive every ``1 / fps`` seconds (open loop). The device works on one frame at a time:
receiving it (``front_ms``), then the stages of the option its controller chooses (each device
stage's time as measured under the device's CPU quota), revising the choice at each exit it
reaches with that exit's recorded confidence. A frame that finds ``max_waiting`` frames waiting
is dropped; one the device cannot start before its deadline is answered late; either costs the
device its front (it was received and read before it was refused). Besides frames, the device's
background (polling the link's state, probing servers: ``idle_ms_per_s``) takes its part of
the quota. An offload's bytes (the option's recorded payload plus the wire's framing) join the
uplink's queue and leave at the link's delivery opportunities (a Mahimahi trace or a constant
rate, as the link emulator shapes them), cross the one-way delay, wait the server's measured
time and come back. A frame counts as right on time when the option's recorded answer for it
is right and it arrives within its deadline.

The controllers are the device's own (anything with ``decide``, ``at_exit`` and ``observe``);
with ``charge_decisions`` the CPU each decision takes on this machine's thread is charged to the
device under its quota, as a real device pays it (the regime map's replay). The oracle in
hindsight sees every option's outcome and latency for the frame at hand and takes the cheapest
that is right on time. Every controller of a run meets the same frames in the same order, so
their results pair frame by frame.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from semlink.link.traces import BITS_PER_PACKET, Schedule
from semlink.models.option_table import Outcomes
from semlink.runtime.costs import WIRE_OVERHEAD_BYTES, Predictor
from semlink.runtime.frames import ChannelState, ExitState, FrameState, Outcome
from semlink.runtime.pipelines.base import Option

PACKET_BYTES = BITS_PER_PACKET // 8
LATE, DROPPED = "late", "dropped"


class Chooser(Protocol):
    """What the simulator asks of a controller (the device's controllers are ones)."""

    def decide(self, frame: FrameState) -> Option: ...

    def at_exit(self, state: ExitState, frame: FrameState, plan: Option) -> Option: ...

    def observe(self, outcome: Outcome) -> None: ...


@dataclass(frozen=True)
class Stream:
    """The load and what a frame must meet."""

    fps: float
    deadline_ms: float
    seconds: float = 20.0
    rtt_ms: float = 20.0  # the link's round trip (half each way)
    snr_db: float | None = 20.0  # the channel's SNR for JSCC options (None: noiseless)
    max_waiting: int = 32

    @property
    def frames(self) -> int:
        """Frames the camera sends."""
        return max(1, int(self.fps * self.seconds))


@dataclass
class DeviceCosts:
    """What one frame costs the device and the server, as measured. Device costs are CPU time at
    the machine's full speed (ms): each stage's, the front before a frame's stages (receiving,
    parsing and normalising it), the overhead after its answer (sending it, metrics, logs), and
    an offload's send (serialising, the gRPC call); besides frames, the device spends
    ``idle_ms_per_s`` of CPU a second (polling the link's state, probing servers), which the
    quota serves first. The device's CPU quota turns them into time (:class:`Cpu`). The
    server's time per kind of work is wall time (ms)."""

    stages: dict[str, float]
    front_ms: float
    server_ms: dict[str, float]
    after_ms: float = 0.0
    send_ms: float = 0.0
    share: float | None = None  # of one core; None: no quota
    period_ms: float = 10.0  # the quota's period
    idle_ms_per_s: float = 0.0  # CPU a second the device spends with no frame

    def device_ms(self, stages: list[str]) -> float:
        """CPU time of ``stages`` one after another."""
        return sum(self.stages.get(s, 0.0) for s in stages)

    def under(self, share: float | None, period_ms: float) -> DeviceCosts:
        """The same costs on a device with ``share`` of a core and that quota period."""
        return DeviceCosts(
            dict(self.stages),
            self.front_ms,
            dict(self.server_ms),
            self.after_ms,
            self.send_ms,
            share,
            period_ms,
            self.idle_ms_per_s,
        )

    def sustained(self) -> dict[str, float]:
        """Each stage's wall time when run back to back under the quota (CPU time over the
        share): what a device's warm-up measures, and what its controller starts from."""
        share = self.share or 1.0
        if self.share is not None:  # the background's part of a busy quota (see Cpu)
            share -= min(self.idle_ms_per_s / 1000.0, share / 2.0)
        return {k: v / share for k, v in self.stages.items()}


class Cpu:
    """CFS bandwidth control: ``share * period`` ms of CPU per period, periods at multiples of the
    period; work that finds the period's budget spent waits for the next period. ``reserved``
    (ms a second) is the device's own background (with no frame at all), taken from each
    period's budget first, up to half of it (the scheduler shares a busy quota between the
    background and a frame's work)."""

    def __init__(self, share: float | None, period_ms: float, reserved: float = 0.0) -> None:
        self.share, self.period, self.reserved = share, period_ms, reserved
        quota = (share or 1.0) * period_ms
        self.quota = quota - min(reserved * period_ms / 1000.0, quota / 2.0)
        self.k, self.used = -1, 0.0

    def run(self, t: float, cpu_ms: float) -> float:
        """When ``cpu_ms`` of work started at ``t`` ends."""
        if self.share is None:
            return t + cpu_ms
        left = cpu_ms
        while left > 1e-9:
            # a time within 1e-9 periods of a boundary belongs to the next period: floating
            # point puts (k + 1) * period a hair below it, and the loop must move on
            k = int(t / self.period + 1e-9)
            if k != self.k:
                self.k, self.used = k, 0.0
            end = (k + 1) * self.period
            budget, room = self.quota - self.used, end - t
            if budget <= 1e-9 or room <= 1e-9:  # this period's slice is spent, or it is over
                t = max(t, end)
                continue
            step = min(left, budget, room)
            t += step
            self.used += step
            left -= step
        return t

    def copy(self) -> Cpu:
        """The same state, to try work without doing it."""
        c = Cpu(self.share, self.period, self.reserved)
        c.k, c.used = self.k, self.used
        return c


class Uplink:
    """The device's uplink: a FIFO of bytes leaving at the schedule's delivery opportunities."""

    def __init__(
        self,
        schedule: Schedule,
        horizon_ms: float,
        rtt_ms: float,
        window_ms: float = 1000.0,
        cum: np.ndarray | None = None,
    ) -> None:
        self.schedule, self.rtt_ms, self.window_ms = schedule, rtt_ms, window_ms
        # opportunities up to each millisecond of the horizon (``cum``: the same, computed once)
        self.cum = schedule.cumulative(int(horizon_ms) + 2) if cum is None else cum
        self.used = 0  # opportunities taken so far

    def _at(self, t_ms: float) -> int:
        return int(self.cum[min(int(t_ms), len(self.cum) - 1)])

    def state(self, t_ms: float, snr_db: float | None) -> ChannelState:
        """What the link reports at ``t_ms``: capacity over the last window, round trip, queue."""
        start = t_ms - self.window_ms
        n = self._at(t_ms) - self._at(start)
        bw = n * BITS_PER_PACKET / max(t_ms - start, 1.0) * 1000.0
        queued = max(0, self.used - self._at(t_ms)) * PACKET_BYTES
        return ChannelState(bw, self.rtt_ms, snr_db, float(queued))

    def arrival(self, t_ms: float, nbytes: float, commit: bool = True) -> float:
        """When ``nbytes`` sent at ``t_ms`` have crossed (behind the queue), at the far end."""
        first = max(self.used, self._at(t_ms))
        last = first + max(1, math.ceil(nbytes / PACKET_BYTES))
        if commit:
            self.used = last
        idx = int(np.searchsorted(self.cum, last, side="left"))
        if idx >= len(self.cum):  # beyond the horizon: at the schedule's average rate
            extra = (
                (last - int(self.cum[-1]))
                * BITS_PER_PACKET
                / max(self.schedule.average_bps(), 1.0)
                * 1000.0
            )
            done = len(self.cum) - 1 + extra
        else:
            done = float(idx)
        return max(done, t_ms) + self.rtt_ms / 2.0


@dataclass
class Run:
    """Every frame of one controller's run."""

    name: str
    frame: np.ndarray  # (F,) index into the outcome table
    option: list[str]  # the option taken ("late", "dropped" where none)
    answered: np.ndarray  # (F,) bool: computed and answered (not late, not dropped)
    correct: np.ndarray  # (F,) bool: the answer is right (False when not answered)
    on_time: np.ndarray  # (F,) bool: right within the deadline
    latency_ms: np.ndarray  # (F,) arrival to answer
    bytes_up: np.ndarray  # (F,) on the wire towards the server
    device_ms: np.ndarray  # (F,) the device's compute on the frame
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self, deadline_ms: float) -> dict[str, float]:
        """On-time accuracy, accuracy of answered frames, share within the deadline, latency,
        bytes and device time per frame."""
        lat = self.latency_ms[self.answered]
        return {
            "on_time": float(self.on_time.mean()),
            "n": int(len(self.on_time)),
            "answered_accuracy": float(self.correct[self.answered].mean())
            if self.answered.any()
            else 0.0,
            "within_deadline": float(((self.latency_ms <= deadline_ms) & self.answered).mean()),
            "p50_ms": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
            "p95_ms": float(np.percentile(lat, 95)) if len(lat) else float("nan"),
            "bytes_up": float(self.bytes_up.mean()),
            "device_cpu_ms": float(self.device_ms.mean()),
        }


@dataclass
class Episode:
    """One run of the stream in progress."""

    run: Run
    uplink: Uplink
    arrivals: np.ndarray  # (F,) ms
    starts: np.ndarray  # (F,) when each frame's work began (FIFO: never decreasing)
    cpu: Cpu = field(default_factory=lambda: Cpu(None, 10.0))
    i: int = 0  # the next frame
    free: float = 0.0  # when the device is next free
    start_ms: float = 0.0  # the frame at hand's start (after its front)
    cpu_ms: float = 0.0  # the frame at hand's device CPU so far


def frame_order(n_frames: int, length: int, seed: int) -> np.ndarray:
    """The outcome-table frames a stream shows, in order: a seeded shuffle, repeated as needed."""
    rng = np.random.default_rng(seed)
    reps = -(-length // n_frames)
    return np.concatenate([rng.permutation(n_frames) for _ in range(reps)])[:length]


class Simulator:
    """Replays one stream (see the module docstring) for any controller, or the oracle."""

    def __init__(
        self,
        outcomes: Outcomes,
        stages_of: Callable[[Option], list[str]],
        costs: DeviceCosts,
        schedule: Schedule,
        stream: Stream,
        seed: int = 0,
        charge_decisions: bool = False,
    ) -> None:
        self.outcomes, self.stages_of, self.costs, self.stream = outcomes, stages_of, costs, stream
        # the controller's own CPU (decide, and each exit's revision), measured on this machine's
        # thread as it runs, charged to the device under its quota as the real device pays it;
        # off, the replay is deterministic (what training and the tests want)
        self.charge_decisions = charge_decisions
        self.schedule = schedule
        self.index = {o: i for i, o in enumerate(outcomes.options)}
        self.order = frame_order(len(outcomes.labels), stream.frames, seed)
        below = [
            i for i, s in enumerate(outcomes.snrs) if stream.snr_db is None or s <= stream.snr_db
        ]
        self.snr_index = below[-1] if below else 0
        self.horizon_ms = stream.seconds * 1000.0 + 10 * stream.deadline_ms + 5000.0
        self.cum = schedule.cumulative(int(self.horizon_ms) + 2)  # shared by every run

    def server_ms(self, option: Option) -> float:
        """The server's measured time for ``option``'s kind of work."""
        return self.costs.server_ms.get(Predictor.server_key(option), 0.0)

    def run(self, name: str, chooser: Chooser | None) -> Run:
        """The stream under ``chooser`` (None: the oracle in hindsight)."""
        ep = self.start(name)
        while (at := self.next_frame(ep)) is not None:
            f, frame, start = at
            if chooser is None:
                option = self._oracle(f, frame, start, ep)
                done = self.device_done(ep, option, start)
            else:
                option, done = self._walk(chooser, f, frame, start, ep)
            outcome = self.finish(ep, option, done)
            if chooser is not None:
                chooser.observe(outcome)
        return ep.run

    def start(self, name: str) -> Episode:
        """A fresh run of the stream: the link and the device idle, no frame sent yet."""
        n = len(self.order)
        run = Run(
            name,
            self.order.copy(),
            [""] * n,
            answered=np.zeros(n, bool),
            correct=np.zeros(n, bool),
            on_time=np.zeros(n, bool),
            latency_ms=np.zeros(n),
            bytes_up=np.zeros(n),
            device_ms=np.zeros(n),
        )
        arrivals = np.arange(n) * 1000.0 / self.stream.fps
        return Episode(
            run,
            Uplink(self.schedule, self.horizon_ms, self.stream.rtt_ms, cum=self.cum),
            arrivals,
            np.full(n, np.inf),
            Cpu(self.costs.share, self.costs.period_ms, self.costs.idle_ms_per_s),
        )

    def next_frame(self, ep: Episode) -> tuple[int, FrameState, float] | None:
        """The next frame the device starts on: its table index, what the device knows then and
        when its work starts (after its front); frames dropped or late on the way are recorded.
        None when the stream is over."""
        s = self.stream
        while ep.i < len(self.order):
            i = ep.i
            arrived = ep.arrivals[i]
            start = max(arrived, ep.free)
            ahead = i - int(np.searchsorted(ep.starts[:i], arrived, side="right"))
            if ahead >= s.max_waiting:
                ep.starts[i] = arrived  # never queued
                ep.run.option[i] = DROPPED
                ep.free = ep.cpu.run(start, self.costs.front_ms)  # received, then refused
                ep.i += 1
                continue
            waiting = int(np.searchsorted(ep.arrivals, start, side="right")) - i - 1
            ep.starts[i] = start
            if start - arrived >= s.deadline_ms:  # answered late at once: nothing computed
                ep.run.option[i], ep.run.latency_ms[i] = LATE, s.deadline_ms
                ep.free = ep.cpu.run(start, self.costs.front_ms)  # received, then refused
                ep.i += 1
                continue
            start = ep.cpu.run(start, self.costs.front_ms)
            ep.cpu_ms = self.costs.front_ms
            channel = ep.uplink.state(start, s.snr_db)
            frame = FrameState(
                {}, channel, s.deadline_ms, start - arrived, max(waiting, 0), 1000.0 / s.fps
            )
            ep.start_ms = start
            return int(self.order[i]), frame, start
        return None

    def finish(self, ep: Episode, option: Option, done: float) -> Outcome:
        """Takes ``option`` for the frame :meth:`next_frame` returned, the device done with it
        at ``done``; records what came of it and returns what the frame cost."""
        s, out, i = self.stream, self.outcomes, ep.i
        f = int(self.order[i])
        arrived = ep.arrivals[i]
        answer_at, sent = done, 0.0
        if option.offloads:
            done = ep.cpu.run(done, self.costs.send_ms)
            ep.cpu_ms += self.costs.send_ms
            sent = float(out.bytes[f, self.index[option]]) + WIRE_OVERHEAD_BYTES
            answer_at = ep.uplink.arrival(done, sent) + self.server_ms(option) + s.rtt_ms / 2.0
        ep.free = ep.cpu.run(
            done, self.costs.after_ms
        )  # the answer's bookkeeping, then the next frame
        ep.cpu_ms += self.costs.after_ms
        right = bool(out.correct[self.snr_index, f, self.index[option]])
        latency = answer_at - arrived
        r = ep.run
        r.option[i] = option.name
        r.answered[i], r.correct[i] = True, right
        r.on_time[i] = right and latency <= s.deadline_ms
        r.latency_ms[i], r.bytes_up[i] = latency, sent
        r.device_ms[i] = ep.cpu_ms
        ep.i += 1
        bandwidth = ep.uplink.state(ep.start_ms, s.snr_db).bandwidth_bps
        return Outcome(
            option,
            bytes_up=int(sent),
            latency_ms=latency,
            device_ms=r.device_ms[i],
            extra={
                "interval_ms": 1000.0 / s.fps,
                "bandwidth_bps": bandwidth,
                "on_time": r.on_time[i],
            },
        )

    def device_done(self, ep: Episode, option: Option, start: float) -> float:
        """When the device is done with a frame started at ``start`` under ``option`` (no
        change of course on the way)."""
        cpu = self.costs.device_ms(self.stages_of(option))
        ep.cpu_ms += cpu
        return ep.cpu.run(start, cpu)

    def _walk(
        self, chooser: Chooser, f: int, frame: FrameState, start: float, ep: Episode
    ) -> tuple[Option, float]:
        """The controller's plan, revised at each exit on the way: the option and when the
        device is done with the frame."""
        c0 = time.thread_time()
        option = chooser.decide(frame)
        t, k = self._charge(ep, start, c0), 0
        prev = None
        while True:
            stages = self.stages_of(option)
            stretches = [x for x in stages if x.startswith("stretch")]
            if k >= len(stretches):
                break
            t = self._stage(ep, chooser, stretches[k], t)
            conf = (
                float(self.outcomes.confidence[f, k])
                if k < self.outcomes.confidence.shape[1]
                else None
            )
            if conf is not None:
                state = ExitState(
                    k,
                    self.outcomes.confidence.shape[1],
                    k + 1,
                    conf,
                    prev,
                    t - start + frame.elapsed_ms,
                    frame.deadline_ms,
                )
                c0 = time.thread_time()
                option = chooser.at_exit(state, frame, option)
                t = self._charge(ep, t, c0)
                prev = conf
            k += 1
        for stage in self.stages_of(option)[k:]:
            t = self._stage(ep, chooser, stage, t)
        return option, t

    def _charge(self, ep: Episode, t: float, c0: float) -> float:
        """When the device is done with the decision that began at thread time ``c0``, started
        at ``t`` (at once unless ``charge_decisions``)."""
        if not self.charge_decisions:
            return t
        cpu = 1000.0 * (time.thread_time() - c0)
        ep.cpu_ms += cpu
        return ep.cpu.run(t, cpu)

    def _stage(self, ep: Episode, chooser: Chooser, stage: str, t: float) -> float:
        """Runs one device stage from ``t`` under the quota; the controller's predictor (if it
        has one) learns its time, as the device's does."""
        cpu = self.costs.stages.get(stage, 0.0)
        ep.cpu_ms += cpu
        end = ep.cpu.run(t, cpu)
        predictor = getattr(chooser, "predictor", None)
        if predictor is not None:
            predictor.times.observe(stage, end - t)
        return end

    def _oracle(self, f: int, frame: FrameState, start: float, ep: Episode) -> Option:
        """The cheapest option right on time for this frame (device CPU, then bytes), given the
        device and the link as they are; else the quickest."""
        best: tuple[float, float, Option] | None = None
        quickest: tuple[float, Option] | None = None
        arrived = start - frame.elapsed_ms
        for option in self.outcomes.options:
            cpu = self.costs.device_ms(self.stages_of(option))
            answer_at, sent = ep.cpu.copy().run(start, cpu), 0.0
            if option.offloads:
                cpu += self.costs.send_ms
                sent = float(self.outcomes.bytes[f, self.index[option]]) + WIRE_OVERHEAD_BYTES
                leaves = ep.cpu.copy().run(start, cpu)
                answer_at = (
                    ep.uplink.arrival(leaves, sent, commit=False)
                    + self.server_ms(option)
                    + self.stream.rtt_ms / 2.0
                )
            if quickest is None or answer_at < quickest[0]:
                quickest = (answer_at, option)
            right = self.outcomes.correct[self.snr_index, f, self.index[option]]
            if (
                right
                and answer_at - arrived <= frame.deadline_ms
                and (best is None or (cpu, sent) < best[:2])
            ):
                best = (cpu, sent, option)
        if best is not None:
            return best[2]
        assert quickest is not None
        return quickest[1]


__all__ = [
    "Cpu",
    "DeviceCosts",
    "DROPPED",
    "Episode",
    "LATE",
    "Run",
    "Simulator",
    "Stream",
    "Uplink",
    "frame_order",
]
