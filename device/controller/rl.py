"""The RL offloading policy on the device (METHODS §5): at each device exit, a small MLP
(exported by ``semlink train policy``, run by ONNX Runtime) maps what the device knows (the
exit's confidence and its growth, the link's bandwidth, SNR and RTT, the server's recent queue
delay, the deadline left) to exit, continue or offload."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from semlink.device.controller.base import ChannelState, Controller, Decision, ExitState
from semlink.runtime.offload_policy import ACTIONS, CONTINUE, OFFLOAD, observation

QUEUE_EMA = 0.2  # weight of the newest server queue delay in the running estimate


class RLController(Controller):
    """The PPO offloading policy (METHODS §6), exported to ONNX, acting at each device exit."""

    name = "rl"

    def __init__(self, policy_path: str | Path) -> None:
        path = Path(policy_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"policy {path} does not exist; train one with `semlink train policy`"
            )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.queue_ms = 0.0
        self.decision_us = 0.0
        self.decisions = 0

    def decide(self, request: dict[str, Any], channel: ChannelState) -> Decision:
        """Every request runs the early-exit network at full budget; the policy acts at the exits."""
        return Decision(budget=1.0, reason="rl policy at each exit")

    def act(self, obs: np.ndarray) -> int:
        """The policy's action for one observation (8 floats)."""
        logits = self.session.run(None, {"obs": obs[None].astype(np.float32)})[0]
        return int(logits[0].argmax())

    def at_exit(self, state: ExitState, channel: ChannelState) -> str:
        """``exit``, ``continue`` or ``offload`` from the policy's observation of this exit."""
        t0 = time.perf_counter()
        obs = observation(
            state.k,
            state.num_exits,
            state.confidence,
            state.prev_confidence,
            channel.bandwidth_bps or 0.0,  # unknown bandwidth: the policy will not bet on it
            channel.snr_db if channel.snr_db is not None else 0.0,
            channel.rtt_ms if channel.rtt_ms is not None else 100.0,
            self.queue_ms,
            state.deadline_ms - state.elapsed_ms,
            state.deadline_ms,
        )
        action = self.act(obs)
        if action == CONTINUE and state.last:
            action = OFFLOAD  # as in training: the device holds no further block
        self.decision_us = 1e6 * (time.perf_counter() - t0)
        self.decisions += 1
        return ACTIONS[action]

    def observe(self, decision: Decision, outcome: dict[str, Any]) -> None:
        """Follows the server's queueing delay (an exponential moving average) for the observation."""
        if outcome.get("server_queue_ms") is not None:
            q = float(outcome["server_queue_ms"])
            self.queue_ms = (1 - QUEUE_EMA) * self.queue_ms + QUEUE_EMA * q

    def state(self) -> dict[str, Any]:
        """The queue estimate and the last decision's time."""
        return {"queue_ms_estimate": self.queue_ms, "decision_us": self.decision_us}
