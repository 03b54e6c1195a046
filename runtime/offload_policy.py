"""What an offloading policy sees and does, shared by the training environment
(:mod:`models.offload_env`) and the device (``device/controller``). Numpy only: the device runs
it without torch or gymnasium.

Observation (8 floats, scaled to about [0, 1], clipped to ``[-OBS_BOUND, OBS_BOUND]``): exit
index among the device's exits, confidence, its growth since the previous exit, log10 bandwidth
/ 8, SNR / 30 dB, RTT / 100 ms, server queue delay / 100 ms, remaining deadline fraction.
Actions: 0 exit, 1 continue, 2 offload.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from semlink.runtime.frames import FrameState

EXIT, CONTINUE, OFFLOAD = 0, 1, 2
ACTIONS = ("exit", "continue", "offload")
OBS_DIM = 8
OBS_BOUND = 4.0
OBS_NAMES = (
    "exit_index",
    "confidence",
    "confidence_growth",
    "log10_bandwidth_over_8",
    "snr_db_over_30",
    "rtt_ms_over_100",
    "queue_ms_over_100",
    "deadline_left_fraction",
)


def observation(
    k: int,
    num_device_exits: int,
    confidence: float,
    prev_confidence: float | None,
    bandwidth_bps: float,
    snr_db: float,
    rtt_ms: float,
    queue_ms: float,
    deadline_left_ms: float,
    deadline_ms: float,
) -> np.ndarray:
    """The policy's input at device exit ``k`` (see the module docstring)."""
    growth = 0.0 if prev_confidence is None else confidence - prev_confidence
    return np.array(
        [
            k / max(1, num_device_exits - 1),
            confidence,
            growth,
            math.log10(max(bandwidth_bps, 1.0)) / 8.0,
            snr_db / 30.0,
            rtt_ms / 100.0,
            queue_ms / 100.0,
            max(0.0, deadline_left_ms) / deadline_ms,
        ],
        dtype=np.float32,
    ).clip(-OBS_BOUND, OBS_BOUND)


FRAME_GLOBALS = (
    "deadline_left_fraction",
    "frames_waiting_over_10",
    "interval_over_deadline",
    "log10_bandwidth_over_8",
    "snr_db_over_30",
    "rtt_ms_over_100",
)


def frame_observation(
    left_ms: float,
    deadline_ms: float,
    waiting: int,
    interval_ms: float | None,
    bandwidth_bps: float,
    snr_db: float,
    rtt_ms: float,
    latency_ms: np.ndarray,
    accuracy: np.ndarray,
) -> np.ndarray:
    """What an options policy sees when a frame starts (:data:`FRAME_GLOBALS`, then per option
    its predicted latency as a fraction of the deadline and its expected accuracy), scaled to
    about [0, 1] and clipped to ``[-OBS_BOUND, OBS_BOUND]``."""
    interval = deadline_ms if interval_ms is None else interval_ms
    head = [
        max(0.0, left_ms) / deadline_ms,
        min(waiting, 40) / 10.0,
        interval / deadline_ms,
        math.log10(max(bandwidth_bps, 1.0)) / 8.0,
        snr_db / 30.0,
        rtt_ms / 100.0,
    ]
    per_option = np.stack(
        [np.asarray(latency_ms) / deadline_ms, np.asarray(accuracy)], axis=1
    ).ravel()
    return (
        np.concatenate([np.array(head), per_option]).astype(np.float32).clip(-OBS_BOUND, OBS_BOUND)
    )


def observe_frame(frame: FrameState, latency_ms: np.ndarray, accuracy: np.ndarray) -> np.ndarray:
    """:func:`frame_observation` of a frame as a controller sees it (``latency_ms``: each
    option's predicted latency from the frame's start; unknown SNR 0 dB, unknown RTT 100 ms),
    the one place the device's policy and its training environment build it."""
    c = frame.channel
    return frame_observation(
        frame.left_ms,
        frame.deadline_ms,
        frame.waiting,
        frame.interval_ms,
        c.bandwidth_bps or 0.0,
        c.snr_db if c.snr_db is not None else 0.0,
        c.rtt_ms if c.rtt_ms is not None else 100.0,
        latency_ms - frame.elapsed_ms,
        accuracy,
    )


@dataclass
class PolicySpec:
    """A rule-based policy: ``threshold`` (tau), ``growth`` (tau_exit, tau_grow),
    ``always-offload`` or ``never-offload``."""

    name: str
    params: dict[str, float] = field(default_factory=dict)


def rule_action(spec: PolicySpec, obs: np.ndarray, last: bool) -> int:
    """The rule baselines (docs/methods.md#early-exits, docs/methods.md#rl-offloading) as functions of the observation; ``last`` is true at the
    device's last exit (where ``continue`` is impossible)."""
    conf, growth, k = float(obs[1]), float(obs[2]), float(obs[0])
    if spec.name == "always-offload":
        return OFFLOAD
    if spec.name == "never-offload":
        return EXIT if last else CONTINUE
    if spec.name == "threshold":
        return EXIT if conf >= spec.params["tau"] else (OFFLOAD if last else CONTINUE)
    if spec.name == "growth":
        if conf >= spec.params["tau_exit"]:
            return EXIT
        if k > 0 and growth < spec.params["tau_grow"]:
            return OFFLOAD
        return OFFLOAD if last else CONTINUE
    raise ValueError(
        f"unknown rule policy {spec.name!r}: threshold, growth, always-offload or never-offload"
    )
