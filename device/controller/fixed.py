"""The fixed controller: the request's parameters, else the configured defaults."""

from __future__ import annotations

from typing import Any

from semlink.device.controller.base import ChannelState, Controller, Decision
from semlink.protocol import params as P


class FixedController(Controller):
    """The same budget and rate for every request (unless the request names its own); always offloads."""

    name = "fixed"

    def __init__(self, budget: float, rate: float = 1.0) -> None:
        self.budget = P.check(P.BUDGET, budget)
        self.rate = P.check(P.RATE, rate)

    def decide(self, request: dict[str, Any], channel: ChannelState) -> Decision:
        """The request's budget and rate, else the configured ones."""
        budget = request.get(P.BUDGET, self.budget)
        return Decision(
            budget=budget,
            rate=request.get(P.RATE, self.rate),
            reason="request" if P.BUDGET in request else "default",
        )
