"""The RL environment of the any-split network's options policy (docs/methods.md#rl-offloading): one
step is one frame of a stream, replayed by :class:`models.stream_sim.Simulator` on the recorded
outcomes of the *validation* split.

Each episode is a stream drawn at random: a device speed (the measured stage times scaled as a
CPU share between ``share_range`` would scale them), a frame rate, a link (a constant rate, or a
Gilbert-Elliott or random-walk trace), a round trip, a deadline and an SNR. The observation is
what the device's RL controller sees when a frame starts
(:func:`semlink.runtime.offload_policy.observe_frame`): the deadline left, the frames waiting,
the time between frames, the link, and every option's predicted latency (from the device's
measured stage times, as its predictor makes it) and expected accuracy (the validation table).
The action is one option; the reward is 1 when the frame's answer is right within its deadline,
else 0 (a late answer counts as wrong), less ``byte_cost`` per kB sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from semlink.link.traces import (
    ConstantSchedule,
    Schedule,
    TraceSchedule,
    rates_to_timestamps,
    synthetic_rates,
)
from semlink.models.option_table import Outcomes
from semlink.models.stream_sim import DeviceCosts, Episode, Simulator, Stream
from semlink.runtime.calibration import CalibrationTable
from semlink.runtime.costs import Link, Predictor, StageTimes
from semlink.runtime.cpu_quota import smallest_period
from semlink.runtime.offload_policy import observe_frame
from semlink.runtime.pipelines.base import Option

DEADLINES = (33.0, 100.0, 250.0)
RTTS = (10.0, 20.0, 40.0, 80.0)


@dataclass
class StreamDraw:
    """The range episodes are drawn from."""

    share_range: tuple[float, float] = (0.015, 1.0)
    fps_range: tuple[float, float] = (1.0, 60.0)
    rate_range_bps: tuple[float, float] = (0.1e6, 20e6)
    deadlines: tuple[float, ...] = DEADLINES
    rtts: tuple[float, ...] = RTTS
    snr_range: tuple[float, float] = (0.0, 25.0)
    frames: int = 64
    """Frames an episode lasts."""


@dataclass
class Drawn:
    """One episode's stream."""

    costs: DeviceCosts
    schedule: Schedule
    stream: Stream
    seed: int
    info: dict[str, Any] = field(default_factory=dict)


def draw(rng: np.random.Generator, base: DeviceCosts, d: StreamDraw) -> Drawn:
    """A stream at random from ``d``'s ranges; ``base`` the stage times at full speed."""
    share = float(np.exp(rng.uniform(*np.log(d.share_range))))
    costs = base.under(share, smallest_period(share) / 1000.0)
    fps = float(np.exp(rng.uniform(*np.log(d.fps_range))))
    seconds = d.frames / fps
    kind = rng.choice(["constant", "gilbert-elliott", "random-walk"])
    seed = int(rng.integers(1 << 30))
    if kind == "constant":
        schedule: Schedule = ConstantSchedule(float(np.exp(rng.uniform(*np.log(d.rate_range_bps)))))
    else:
        lo_log, hi_log = np.log(d.rate_range_bps)
        low, high = sorted(float(x) for x in np.exp(rng.uniform(lo_log, hi_log, size=2)))
        rates = synthetic_rates(
            str(kind), seconds + 12.0, seed, low_bps=low, high_bps=max(high, 1.5 * low)
        )
        schedule = TraceSchedule(rates_to_timestamps(rates, 100), str(kind))
    stream = Stream(
        fps,
        float(rng.choice(d.deadlines)),
        seconds,
        float(rng.choice(d.rtts)),
        float(rng.uniform(*d.snr_range)),
    )
    return Drawn(costs, schedule, stream, seed, {"share": share, "link": str(kind)})


class OptionEnv(gym.Env):
    """One frame a step (see the module docstring)."""

    def __init__(
        self,
        outcomes: Outcomes,
        table: CalibrationTable,
        stages_of: Any,
        base: DeviceCosts,
        streams: StreamDraw | None = None,
        byte_cost: float = 0.0,
    ) -> None:
        self.outcomes, self.table, self.stages_of, self.base = outcomes, table, stages_of, base
        self.streams = streams or StreamDraw()
        self.byte_cost = byte_cost
        self.options: list[Option] = list(outcomes.options)
        self.columns = [table.index(o) for o in self.options]
        n = len(self.options)
        self.action_space = gym.spaces.Discrete(n)
        self.obs_dim = 6 + 2 * n
        self.observation_space = gym.spaces.Box(-4.0, 4.0, (self.obs_dim,), np.float32)
        self.sim: Simulator | None = None
        self.ep: Episode | None = None
        self.at: tuple[int, Any, float] | None = None
        self.predictor: Predictor | None = None

    def start(self, drawn: Drawn) -> np.ndarray:
        """Begins an episode on a given stream; returns the first observation."""
        self.drawn = drawn
        self.sim = Simulator(
            self.outcomes, self.stages_of, drawn.costs, drawn.schedule, drawn.stream, drawn.seed
        )
        self.ep = self.sim.start("rl")
        self.predictor = Predictor(
            self.stages_of,
            lambda o: float(self.table.bytes[self.table.index(o)]),
            StageTimes(drawn.costs.sustained()),
        )
        for key, ms in drawn.costs.server_ms.items():
            self.predictor.server.observe(key, ms)
        return self._advance()

    def _advance(self) -> np.ndarray:
        assert self.sim is not None and self.ep is not None
        self.at = self.sim.next_frame(self.ep)
        if self.at is None:
            return np.zeros(self.obs_dim, np.float32)
        return self.observe()

    def observe(self) -> np.ndarray:
        """The observation of the frame at hand."""
        assert self.at is not None and self.predictor is not None
        _, frame, _ = self.at
        c = frame.channel
        link = Link(c.bandwidth_bps, c.rtt_ms, c.queued_bytes)
        latency = self.predictor.latencies(self.options, link, frame.elapsed_ms)
        acc = self.table.accuracy_at(c.snr_db)[self.columns]
        return observe_frame(frame, latency, acc)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict]:
        """A new stream: ``options={"drawn": Drawn}`` replays a given one."""
        super().reset(seed=seed)
        drawn = (options or {}).get("drawn") or draw(self.np_random, self.base, self.streams)
        obs = self.start(drawn)
        while self.at is None:  # every frame dropped or late before a decision: another stream
            obs = self.start(draw(self.np_random, self.base, self.streams))
        return obs, {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Takes option ``action`` for the frame at hand."""
        assert self.sim is not None and self.ep is not None and self.at is not None
        option = self.options[int(action)]
        _, _, start = self.at
        outcome = self.sim.finish(self.ep, option, self.sim.device_done(self.ep, option, start))
        reward = float(outcome.extra["on_time"]) - self.byte_cost * outcome.bytes_up / 1000.0
        obs = self._advance()
        return obs, reward, self.at is None, False, {"option": option.name}


__all__ = ["DEADLINES", "Drawn", "OptionEnv", "StreamDraw", "draw"]
