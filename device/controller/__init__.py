"""Controllers decide per request; ``make_controller`` is the factory over implementations."""

from device.controller.base import ChannelState, Controller, Decision
from device.controller.fixed import FixedController


def make_controller(name: str, *, budget: float, rate: float = 1.0) -> Controller:
    if name == "fixed":
        return FixedController(budget, rate)
    raise ValueError(f"unknown controller {name!r}; available: fixed")


__all__ = ["ChannelState", "Controller", "Decision", "FixedController", "make_controller"]
