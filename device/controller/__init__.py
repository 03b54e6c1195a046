"""Controllers decide per request; :func:`make_controller` is the factory over implementations."""

from __future__ import annotations

from typing import TYPE_CHECKING

from semlink.device.controller.base import ChannelState, Controller, Decision, ExitState
from semlink.device.controller.exit_rules import ExitRuleController
from semlink.device.controller.fixed import FixedController
from semlink.device.controller.local import LocalController
from semlink.device.controller.lyapunov import CalibrationTable, Constraint, LyapunovController
from semlink.device.controller.rl import RLController
from semlink.runtime.manifest import PipelineKind

if TYPE_CHECKING:
    from semlink.device.settings import DeviceSettings
    from semlink.runtime.repository import ModelVersion

CONTROLLERS = ("fixed", "lyapunov", "rl", "threshold", "growth", "local")
EXIT_CONTROLLERS = ("rl", "threshold", "growth")  # decide at each exit of an early-exit network


def make_controller(settings: DeviceSettings, model: ModelVersion) -> Controller:
    """The configured controller for ``model``; the Lyapunov one needs a calibrated JSCC model,
    the exit controllers an early-exit network (and ``rl`` its policy.onnx)."""
    early_exit = model.kind is PipelineKind.EARLY_EXIT
    if settings.controller == "local":  # any pipeline: the device answers by itself
        return LocalController()
    if (settings.controller in EXIT_CONTROLLERS) != early_exit:
        raise ValueError(
            f"controller {settings.controller!r} does not fit model {model.name!r} "
            f"({model.kind}): early-exit networks take one of {EXIT_CONTROLLERS}, "
            "token pipelines fixed or lyapunov; set --controller or --model-name accordingly"
        )
    if settings.controller == "rl":
        return RLController(model.path / "policy.onnx")
    if settings.controller in ("threshold", "growth"):
        return ExitRuleController(
            settings.controller, settings.exit_threshold, settings.grow_threshold
        )
    if settings.controller == "fixed":
        return FixedController(settings.budget, settings.rate)
    if settings.controller == "lyapunov":
        if model.manifest.jscc is None:
            raise ValueError(
                "the lyapunov controller decides budget and rate from a JSCC calibration table; "
                f"model {model.name!r} has none: serve digits-vit-jscc (--model-name)"
            )
        table = CalibrationTable.load(model.path / "calibration.json", model.manifest.model_hash)
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
    "EXIT_CONTROLLERS",
    "ExitRuleController",
    "ExitState",
    "FixedController",
    "LocalController",
    "LyapunovController",
    "RLController",
    "make_controller",
]
