"""Rule-based exit controllers (docs/methods.md#early-exits): a fixed confidence threshold, or the
confidence-growth rule (exit when confident; offload when confidence stops growing)."""

from __future__ import annotations

from typing import Any

from semlink.device.controller.base import Controller, ExitState, FrameState
from semlink.runtime.offload_policy import EXIT, OFFLOAD, PolicySpec, observation, rule_action
from semlink.runtime.pipelines.base import EXIT as EXIT_ACTION
from semlink.runtime.pipelines.base import OFFLOAD as OFFLOAD_ACTION
from semlink.runtime.pipelines.base import Option


class ExitRuleController(Controller):
    """The threshold and growth rules at each device exit. The plan is to offload after the
    device's last block (``offload``: what an offload sends, its budget and rate; any split's
    offload takes them); at each exit the rule answers there, offloads there, or goes on."""

    def __init__(self, rule: str, tau_exit: float, tau_grow: float, offload: Option) -> None:
        if not 0.0 <= tau_exit <= 1.01:
            raise ValueError(f"exit threshold must be in [0, 1.01], got {tau_exit}")
        self.name = rule
        params = (
            {"tau": tau_exit}
            if rule == "threshold"
            else {"tau_exit": tau_exit, "tau_grow": tau_grow}
        )
        self.spec = PolicySpec(rule, params)
        self.offload = offload

    def decide(self, frame: FrameState) -> Option:
        """Offload after the device's last block, unless an exit says otherwise."""
        return self.offload

    def at_exit(self, state: ExitState, frame: FrameState, plan: Option) -> Option:
        """Exit, offload at this exit's split, or the plan, by the rule on this exit's confidence."""
        obs = observation(
            state.k,
            state.num_exits,
            state.confidence,
            state.prev_confidence,
            0.0,
            0.0,
            0.0,
            0.0,
            state.deadline_ms - state.elapsed_ms,
            state.deadline_ms,
        )
        action = rule_action(self.spec, obs, state.last)
        if action == EXIT:
            return Option(EXIT_ACTION, state.split)
        if action == OFFLOAD:
            return Option(OFFLOAD_ACTION, state.split, self.offload.budget, self.offload.rate)
        return plan

    def state(self) -> dict[str, Any]:
        """The rule's thresholds."""
        return dict(self.spec.params)
