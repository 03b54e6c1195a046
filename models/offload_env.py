"""The offloading environment of docs/methods.md#rl-offloading: one episode walks one sample through the device's
exits; at each the agent answers locally (``exit``), runs the next device stretch
(``continue``) or sends the activations to the server (``offload``).

It replays recorded exit traces (:class:`models.exit_traces.ExitTraces`) with channel traces in
the link emulator's Mahimahi format (:mod:`link.traces`): an offload's transfer time is the
time the trace takes to offer enough 1500-byte delivery opportunities for the activations, from
the moment the device starts sending. Compute costs come from :class:`CostModel`, measured on the
exported graphs with ONNX Runtime.

Observation and actions: :mod:`runtime.offload_policy` (shared with the device);
``continue`` at the device's last exit offloads (the device holds no further block).

Reward, at the end of the episode::

    1[correct and within the deadline] - lam_t * latency_s - lam_e * device_energy_J - lam_b * kB

where latency = device compute + (offload: transfer + RTT + server queue + server compute), and
device energy = device power x compute time + radio power x transfer time.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from semlink.link.traces import (
    PACKET_BYTES,
    Schedule,
    TraceSchedule,
    rates_to_timestamps,
    synthetic_rates,
)
from semlink.models.exit_traces import ExitTraces
from semlink.runtime.offload_policy import CONTINUE, EXIT, OBS_BOUND, OBS_DIM, observation

ENV_ID = "semlink/Offload-v0"


@dataclass
class CostModel:
    """Per device exit ``j``: device compute of the stretch ending at ``j``, server compute from
    split ``j`` to the answer, and the bytes an offload at ``j`` sends."""

    device_ms: list[float]
    server_ms: list[float]
    offload_bytes: list[int]
    device_slowdown: float = 1.0
    """A multiplier on measured device times (1: none). Cost models measured under a device
    profile need none; older ones multiplied this machine's times by an assumed 50."""
    device_profile: str = "none"
    """The device profile (CPU quota, see :mod:`semlink.runtime.cpu_quota`) the device's times
    were measured under: the step graphs ran in a process limited to that share of a core."""
    device_cpu_share: float | None = None
    device_power_w: float = 0.5
    """Active power of the device's compute (assumed; a low-power SoC under load)."""
    radio_power_w: float = 1.0
    """Transmit power of the device's radio (assumed; LTE uplink)."""
    measured_on: str = ""

    @classmethod
    def measure(
        cls, model_dir: str | Path, device_profile: str = "camera", repeats: int = 200
    ) -> CostModel:
        """Times each step graph (the device's) and server graph with ONNX Runtime, batch 1, 1
        thread. The server graphs run in this process; the step graphs run in a child process
        under the device profile's CPU quota (cgroups: see :mod:`semlink.runtime.cpu_quota`),
        ``repeats`` back to back after warm-up, and each costs the total time over
        ``repeats``: a quota is a budget per period, so only sustained work shows the device's
        speed (a lone sub-millisecond run may fit a period's budget whole)."""
        import multiprocessing
        import platform

        import onnxruntime as ort

        from semlink.runtime.cpu_quota import profile_share

        share = profile_share(device_profile)
        model_dir = Path(model_dir)
        manifest = json.loads((model_dir / "manifest.json").read_text())
        exits = list(manifest["device_exits"])
        ctx = multiprocessing.get_context("spawn")  # a fresh process: the quota is its own
        with ctx.Pool(1) as pool:
            device_ms, feeds_per_exit = pool.apply(
                _time_steps, (str(model_dir), exits, share, repeats)
            )
        server_ms = [
            _timed(model_dir, manifest, f"server_s{j}", feeds, repeats, sustained=False)[0]
            for j, feeds in zip(exits, feeds_per_exit, strict=True)
        ]
        return cls(
            device_ms=device_ms,
            server_ms=server_ms,
            offload_bytes=[int(manifest["offload_bytes"][j]) for j in exits],
            device_profile=device_profile,
            device_cpu_share=share,
            measured_on=f"{platform.processor() or platform.machine()}, onnxruntime {ort.__version__}",
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> CostModel:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"cost model {path} does not exist; `semlink train policy` measures one"
            )
        return cls(**json.loads(path.read_text()))


def _timed(
    model_dir: Path,
    manifest: dict[str, Any],
    name: str,
    feeds: dict[str, np.ndarray],
    repeats: int,
    sustained: bool,
) -> tuple[float, list[np.ndarray]]:
    """One graph at batch 1 on one thread: the median run (or, ``sustained``, the mean over
    ``repeats`` back-to-back runs) in ms, and its outputs."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(
        str(model_dir / manifest["graphs"][name]["file"]), opts, providers=["CPUExecutionProvider"]
    )
    feeds = {k: v for k, v in feeds.items() if k in {i.name for i in sess.get_inputs()}}
    for _ in range(10):
        out = sess.run(None, feeds)
    times = []
    start = time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - t0)
    total = time.perf_counter() - start
    ms = 1000.0 * (total / repeats if sustained else float(np.median(times)))
    return ms, out


def _time_steps(
    model_dir: str, exits: list[int], share: float | None, repeats: int
) -> tuple[list[float], list[dict[str, np.ndarray]]]:
    """In a child process under the CPU quota ``share`` (none: this machine's speed): each
    device step graph's sustained time, and the feeds its server graph takes."""
    if share is not None:
        from semlink.runtime.cpu_quota import limit_cpu

        limit_cpu(share, "costs")
    path = Path(model_dir)
    manifest = json.loads((path / "manifest.json").read_text())
    c, h, w = manifest["image_shape"]
    x: np.ndarray = np.random.default_rng(0).standard_normal((1, c, h, w)).astype(np.float32)
    feeds: dict[str, np.ndarray] = {"image": x}
    device_ms, server_feeds = [], []
    for j in exits:
        ms, (acts, logp) = _timed(path, manifest, f"step_{j}", feeds, repeats, sustained=True)
        device_ms.append(ms)
        feeds = {"activations": acts, "prev_logp": logp}
        server_feeds.append(feeds)
    return device_ms, server_feeds


@dataclass
class RewardWeights:
    accuracy: float = 1.0
    lam_t: float = 2.0
    """Per second of latency."""
    lam_e: float = 2.0
    """Per joule of device energy."""
    lam_b: float = 0.002
    """Per kilobyte sent."""
    deadline_ms: float = 150.0
    """An answer later than this counts as wrong."""


@dataclass
class ChannelRegime:
    """A family of channel traces: uplink rates between ``low`` and ``high`` bit/s (``kind`` of
    :func:`link.traces.synthetic_rates`), RTT and SNR ranges, mean server queue delay."""

    name: str
    kind: str
    low_bps: float
    high_bps: float
    rtt_ms: tuple[float, float]
    snr_db: tuple[float, float]
    queue_ms: float = 5.0

    def schedules(self, seeds: list[int], duration_s: float = 120.0) -> list[Schedule]:
        return [
            TraceSchedule(
                rates_to_timestamps(
                    synthetic_rates(
                        self.kind, duration_s, seed, low_bps=self.low_bps, high_bps=self.high_bps
                    ),
                    100,
                ),
                name=f"{self.name}-{seed}",
            )
            for seed in seeds
        ]


REGIMES = {
    "good": ChannelRegime("good", "random-walk", 5e6, 50e6, (5.0, 20.0), (15.0, 30.0), 3.0),
    "bad": ChannelRegime("bad", "random-walk", 5e4, 5e5, (40.0, 120.0), (-5.0, 5.0), 10.0),
    "varying": ChannelRegime(
        "varying", "gilbert-elliott", 1e5, 2e7, (10.0, 80.0), (0.0, 25.0), 5.0
    ),
}
TRAIN_SEEDS = list(range(8))
HARD_CONFIDENCE = 0.95
TEST_SEEDS = list(range(100, 104))  # channel traces never seen in training


def delivery_ms(schedule: Schedule, t_ms: float, nbytes: int) -> float:
    """Milliseconds from ``t_ms`` until the trace has offered enough packets for ``nbytes``."""
    need = math.ceil(nbytes / PACKET_BYTES)
    if need == 0:
        return 0.0
    start = schedule.opportunities_until(t_ms)
    lo, hi = int(t_ms), int(t_ms) + 1
    while schedule.opportunities_until(hi) - start < need:
        lo, hi = hi, int(t_ms) + 2 * (hi - int(t_ms))
    while hi - lo > 1:  # smallest hi with enough opportunities
        mid = (lo + hi) // 2
        if schedule.opportunities_until(mid) - start >= need:
            hi = mid
        else:
            lo = mid
    return float(hi - t_ms)


@dataclass
class Episode:
    """Everything random about one episode, drawn up front so every policy meets the same ones."""

    sample: int
    schedule: int
    t_ms: float
    rtt_ms: float
    snr_db: float
    queue_ms: float


@dataclass
class Outcome:
    reward: float
    correct: bool
    latency_ms: float
    energy_j: float
    bytes: int
    exit_at: int
    offloaded: bool


class OffloadEnv(gym.Env):
    """See the module docstring. ``regimes`` are names of :data:`REGIMES`, their traces generated
    with ``seeds``; or ``channels`` gives (regime, schedule) pairs directly, e.g. Mahimahi files.
    Each episode draws a channel trace, a moment in it, RTT, SNR, queue delay and a sample."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        traces: ExitTraces,
        costs: CostModel,
        weights: RewardWeights | None = None,
        regimes: tuple[str, ...] = ("good", "bad", "varying"),
        seeds: list[int] | None = None,
        channels: list[tuple[ChannelRegime, Schedule]] | None = None,
        hard_fraction: float = 0.0,
    ) -> None:
        super().__init__()
        self.traces, self.costs = traces, costs
        self.weights = weights or RewardWeights()
        self.device_exits = [int(j) for j in traces.device_exits]
        if len(costs.device_ms) != len(self.device_exits):
            raise ValueError(
                f"the cost model has {len(costs.device_ms)} device exits, the traces {len(self.device_exits)}; "
                "measure the costs on the same exported model"
            )
        seeds = TRAIN_SEEDS if seeds is None else seeds
        self.schedules = channels or [
            (REGIMES[r], s) for r in regimes for s in REGIMES[r].schedules(seeds)
        ]
        self.observation_space = spaces.Box(-OBS_BOUND, OBS_BOUND, (OBS_DIM,), np.float32)
        self.action_space = spaces.Discrete(3)
        # Training only: this share of episodes draws from the samples the first exit is unsure
        # of. The choice depends on the first exit's confidence alone, which the agent observes,
        # so the best action for an observation stays the same; the rare hard cases just stop
        # being drowned out (about a third of samples on digits-canvas, 10 % below 0.8).
        self.hard_fraction = hard_fraction
        self.hard = np.flatnonzero(traces.conf[:, int(traces.device_exits[0])] < HARD_CONFIDENCE)
        self.episode: Episode | None = None
        self.k = 0  # position among the device exits
        self.compute_ms = 0.0

    # --- episodes ------------------------------------------------------------------------------

    def draw_episode(self, rng: np.random.Generator) -> Episode:
        idx = int(rng.integers(len(self.schedules)))
        regime, schedule = self.schedules[idx]
        period = getattr(schedule, "period", 120_000)
        if self.hard.size and rng.random() < self.hard_fraction:
            sample = int(rng.choice(self.hard))
        else:
            sample = int(rng.integers(len(self.traces)))
        return Episode(
            sample=sample,
            schedule=idx,
            t_ms=float(rng.integers(1000, period)),
            rtt_ms=float(rng.uniform(*regime.rtt_ms)),
            snr_db=float(rng.uniform(*regime.snr_db)),
            queue_ms=float(rng.exponential(regime.queue_ms)),
        )

    def bandwidth_bps(self, ep: Episode) -> float:
        """What the link reports: capacity over the last second."""
        return self.schedules[ep.schedule][1].capacity_bps(ep.t_ms)

    def observe(self, ep: Episode, k: int, compute_ms: float) -> np.ndarray:
        conf = self.traces.conf[ep.sample]
        w = self.weights
        return observation(
            k,
            len(self.device_exits),
            float(conf[self.device_exits[k]]),
            float(conf[self.device_exits[k - 1]]) if k > 0 else None,
            self.bandwidth_bps(ep),
            ep.snr_db,
            ep.rtt_ms,
            ep.queue_ms,
            w.deadline_ms - compute_ms,
            w.deadline_ms,
        )

    def finish(self, ep: Episode, k: int, offload: bool) -> Outcome:
        """The outcome of answering at device exit ``k`` (locally, or by offloading there)."""
        c, w = self.costs, self.weights
        compute_ms = float(sum(c.device_ms[: k + 1]))
        j = self.device_exits[k]
        energy = c.device_power_w * compute_ms / 1000.0
        nbytes, latency = 0, compute_ms
        if offload:
            nbytes = c.offload_bytes[k]
            tx_ms = delivery_ms(self.schedules[ep.schedule][1], ep.t_ms + compute_ms, nbytes)
            latency += tx_ms + ep.rtt_ms + ep.queue_ms + c.server_ms[k]
            energy += c.radio_power_w * tx_ms / 1000.0
            pred = self.traces.pred[ep.sample, -1]
        else:
            pred = self.traces.pred[ep.sample, j]
        correct = bool(pred == self.traces.labels[ep.sample]) and latency <= w.deadline_ms
        reward = (
            w.accuracy * correct
            - w.lam_t * latency / 1000.0
            - w.lam_e * energy
            - w.lam_b * nbytes / 1000.0
        )
        return Outcome(reward, correct, latency, energy, nbytes, j, offload)

    def oracle(self, ep: Episode) -> Outcome:
        """The best outcome in hindsight (knowing correctness and the channel's future)."""
        options = [
            self.finish(ep, k, off) for k in range(len(self.device_exits)) for off in (False, True)
        ]
        return max(options, key=lambda o: o.reward)

    # --- gymnasium -----------------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.episode = (options or {}).get("episode") or self.draw_episode(self.np_random)
        self.k = 0
        self.compute_ms = self.costs.device_ms[0]
        return self.observe(self.episode, 0, self.compute_ms), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        assert self.episode is not None, "call reset() first"
        action = int(action)
        last = self.k == len(self.device_exits) - 1
        if action == CONTINUE and not last:
            self.k += 1
            self.compute_ms += self.costs.device_ms[self.k]
            return self.observe(self.episode, self.k, self.compute_ms), 0.0, False, False, {}
        out = self.finish(self.episode, self.k, offload=action != EXIT)
        obs = self.observe(self.episode, self.k, self.compute_ms)
        return obs, out.reward, True, False, {"outcome": out}


def register() -> None:
    """Registers :data:`ENV_ID` with gymnasium (idempotent)."""
    if ENV_ID not in gym.registry:
        gym.register(id=ENV_ID, entry_point="semlink.models.offload_env:OffloadEnv")
