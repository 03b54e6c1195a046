"""Rule-based exit controllers for early-exit networks (METHODS §4): a fixed confidence
threshold, or the confidence-growth rule (exit when confident; offload when confidence stops
growing)."""

from __future__ import annotations

from typing import Any

from semlink.device.controller.base import ChannelState, Controller, Decision, ExitState
from semlink.runtime.offload_policy import ACTIONS, PolicySpec, observation, rule_action


class ExitRuleController(Controller):
    """The threshold and growth rules of METHODS §3 at each device exit, for early-exit networks."""

    def __init__(self, rule: str, tau_exit: float, tau_grow: float) -> None:
        if not 0.0 <= tau_exit <= 1.01:
            raise ValueError(f"exit threshold must be in [0, 1.01], got {tau_exit}")
        self.name = rule
        params = (
            {"tau": tau_exit}
            if rule == "threshold"
            else {"tau_exit": tau_exit, "tau_grow": tau_grow}
        )
        self.spec = PolicySpec(rule, params)

    def decide(self, request: dict[str, Any], channel: ChannelState) -> Decision:
        """Every request runs the early-exit network at full budget; the rule acts at the exits."""
        return Decision(budget=1.0, reason=self.name)

    def at_exit(self, state: ExitState, channel: ChannelState) -> str:
        """``exit``, ``continue`` or ``offload`` by the rule on this exit's confidence."""
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
        return ACTIONS[rule_action(self.spec, obs, state.last)]

    def state(self) -> dict[str, Any]:
        """The rule's thresholds."""
        return dict(self.spec.params)
