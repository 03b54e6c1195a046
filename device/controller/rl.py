"""The RL offloading policy on the device (docs/methods.md#rl-offloading): a small MLP (exported by
``semlink train policy``, run by ONNX Runtime).

Two kinds, by the ``actions`` its ``policy.json`` names:

- an exit-walk policy (early-exit networks): at each device exit it maps what the device knows
  (the exit's confidence and its growth, the link's bandwidth, SNR and RTT, the server's recent
  queue delay, the deadline left) to exit, continue or offload;
- an options policy (the any-split network): when a frame starts it maps the deadline left, the
  frames waiting, the time between frames, the link, and every option's predicted latency and
  expected accuracy to one option of the model's option space.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from semlink.device.controller.base import Controller, ExitState, FrameState, Outcome
from semlink.protocol import params as P
from semlink.runtime.calibration import CalibrationTable
from semlink.runtime.costs import Link, Predictor
from semlink.runtime.offload_policy import (
    ACTIONS,
    CONTINUE,
    EXIT,
    OFFLOAD,
    observation,
    observe_frame,
)
from semlink.runtime.pipelines.base import EXIT as EXIT_ACTION
from semlink.runtime.pipelines.base import OFFLOAD as OFFLOAD_ACTION
from semlink.runtime.pipelines.base import Option

QUEUE_EMA = 0.2  # weight of the newest server queue delay in the running estimate


class RLController(Controller):
    """The PPO policy, exported to ONNX: at each device exit (exit-walk policies) or when a frame
    starts (options policies)."""

    name = "rl"

    def __init__(
        self,
        policy_path: str | Path,
        plan: Option,
        table: CalibrationTable | None = None,
        predictor: Predictor | None = None,
    ) -> None:
        path = Path(policy_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"policy {path} does not exist; train one with `semlink train policy`"
            )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        meta = path.with_suffix(".json")
        actions = (
            json.loads(meta.read_text()).get("actions", list(ACTIONS))
            if meta.is_file()
            else list(ACTIONS)
        )
        self.options = None if actions == list(ACTIONS) else [Option.parse(a) for a in actions]
        if self.options is not None and (table is None or predictor is None):
            raise ValueError(
                f"{path} is an options policy: it needs the model's options.json table"
            )
        self.plan, self.table, self.predictor = plan, table, predictor
        self.queue_ms = 0.0
        self.decision_us = 0.0
        self.decisions = 0

    def act(self, obs: np.ndarray) -> int:
        """The policy's action for one observation."""
        logits = self.session.run(None, {"obs": obs[None].astype(np.float32)})[0]
        return int(logits[0].argmax())

    def decide(self, frame: FrameState) -> Option:
        """An options policy's choice; an exit-walk policy's plan (the device's last exit, then
        offload), which it revises at every exit."""
        if P.OPTION in frame.request:
            return frame.request[P.OPTION]
        if self.options is None:
            return self.plan
        assert self.table is not None and self.predictor is not None
        t0 = time.perf_counter()
        c = frame.channel
        link = Link(c.bandwidth_bps, c.rtt_ms, c.queued_bytes)
        latency = self.predictor.latencies(self.options, link, frame.elapsed_ms)
        table_acc = self.table.accuracy_at(frame.request.get(P.SNR_DB, c.snr_db))
        acc = np.array([table_acc[self.table.index(o)] for o in self.options])
        obs = observe_frame(frame, latency, acc)
        option = self.options[self.act(obs)]
        self._timed(t0)
        return option

    def at_exit(self, state: ExitState, frame: FrameState, plan: Option) -> Option:
        """An exit-walk policy's exit, continue or offload at this exit (options policies keep
        their plan)."""
        if self.options is not None or P.OPTION in frame.request:
            return plan
        t0 = time.perf_counter()
        c = frame.channel
        obs = observation(
            state.k,
            state.num_exits,
            state.confidence,
            state.prev_confidence,
            c.bandwidth_bps or 0.0,  # unknown bandwidth: the policy will not bet on it
            c.snr_db if c.snr_db is not None else 0.0,
            c.rtt_ms if c.rtt_ms is not None else 100.0,
            self.queue_ms,
            state.deadline_ms - state.elapsed_ms,
            state.deadline_ms,
        )
        action = self.act(obs)
        if action == CONTINUE and state.last:
            action = OFFLOAD  # as in training: the device holds no further block
        self._timed(t0)
        if action == EXIT:
            return Option(EXIT_ACTION, state.split)
        if action == OFFLOAD:
            return Option(OFFLOAD_ACTION, state.split, plan.budget, plan.rate)
        return plan

    def _timed(self, t0: float) -> None:
        self.decision_us = 1e6 * (time.perf_counter() - t0)
        self.decisions += 1

    def observe(self, outcome: Outcome) -> None:
        """Follows the server's queueing delay (an exponential moving average) for the observation."""
        if outcome.server_queue_ms is not None:
            self.queue_ms = (1 - QUEUE_EMA) * self.queue_ms + QUEUE_EMA * float(
                outcome.server_queue_ms
            )

    def state(self) -> dict[str, Any]:
        """The queue estimate and the last decision's time."""
        return {"queue_ms_estimate": self.queue_ms, "decision_us": self.decision_us}
