"""Controllers decide per request; :func:`make_controller` is the factory over implementations."""

from __future__ import annotations

from typing import TYPE_CHECKING

from device.controller.base import ChannelState, Controller, Decision
from device.controller.fixed import FixedController
from device.controller.lyapunov import CalibrationTable, Constraint, LyapunovController

if TYPE_CHECKING:
    from device.settings import DeviceSettings
    from server.repository import ModelVersion

CONTROLLERS = ("fixed", "lyapunov")


def make_controller(settings: DeviceSettings, model: ModelVersion) -> Controller:
    """The configured controller for ``model``; the Lyapunov one needs a calibrated JSCC model."""
    if settings.controller == "fixed":
        return FixedController(settings.budget, settings.rate)
    if settings.controller == "lyapunov":
        if "jscc" not in model.manifest:
            raise ValueError(
                "the lyapunov controller decides budget and rate from a JSCC calibration table; "
                f"model {model.name!r} has none: serve digits-vit-jscc (--model-name)"
            )
        table = CalibrationTable.load(model.path / "calibration.json", model.manifest["model_hash"])
        mu = settings.lyapunov_mu
        constraints = [Constraint("channel_use", settings.channel_budget, mu)]
        if settings.energy_budget_j is not None:
            constraints.append(Constraint("energy", settings.energy_budget_j, mu))
        if settings.latency_budget_ms is not None:
            constraints.append(Constraint("latency", settings.latency_budget_ms, mu / 1000.0))
        return LyapunovController(table, constraints, V=settings.lyapunov_v)
    raise ValueError(
        f"unknown controller {settings.controller!r}; available: {', '.join(CONTROLLERS)}"
    )


__all__ = [
    "CONTROLLERS",
    "CalibrationTable",
    "ChannelState",
    "Constraint",
    "Controller",
    "Decision",
    "FixedController",
    "LyapunovController",
    "make_controller",
]
