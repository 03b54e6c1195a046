"""Controllers choose each frame's option; :func:`make_controller` builds the configured one for a
pipeline, which says which fit it (``Pipeline.controllers``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from semlink.device.controller.base import ChannelState, Controller, ExitState, FrameState, Outcome
from semlink.device.controller.exit_rules import ExitRuleController
from semlink.device.controller.fixed import FixedController
from semlink.device.controller.local import LocalController
from semlink.device.controller.lyapunov import Constraint, LyapunovController
from semlink.device.controller.planner import PlannerController
from semlink.device.controller.rl import RLController
from semlink.runtime.calibration import CalibrationTable
from semlink.runtime.costs import Predictor
from semlink.runtime.pipelines.base import OFFLOAD, Option, Pipeline

if TYPE_CHECKING:
    from semlink.device.settings import DeviceSettings

CONTROLLERS = ("fixed", "planner", "lyapunov", "rl", "threshold", "growth", "local")
TABLES = ("options.json", "calibration.json")  # where a model's calibration table may be


def load_table(pipeline: Pipeline) -> CalibrationTable:
    """The model's calibration table (``options.json`` or ``calibration.json`` beside its manifest),
    checked against the model's hash; raises ``FileNotFoundError`` naming how to make one."""
    model = pipeline.model
    for name in TABLES:
        if (model.path / name).is_file():
            split = max((o.split for o in pipeline.options() if o.action == OFFLOAD), default=0)
            return CalibrationTable.load(model.path / name, model.manifest.model_hash, split)
    raise FileNotFoundError(
        f"model {model.name!r} has no calibration table ({' or '.join(TABLES)} in {model.path}): "
        f"make one with `semlink eval options --model-dir {model.path}` (any-split networks) or "
        f"`semlink calibrate --model-dir {model.path}` (JSCC pipelines)"
    )


def default_offload(settings: DeviceSettings, pipeline: Pipeline) -> Option:
    """The offload the settings describe: ``--option``, else ``--budget`` (and ``--rate`` where
    the pipeline codes its tokens) at the pipeline's first offload split."""
    if settings.option is not None:
        return pipeline.check_option(Option.parse(settings.option))
    offloads = [o for o in pipeline.options() if o.action == OFFLOAD]
    if not offloads:
        return pipeline.local_option()
    coded = any(o.rate is not None for o in offloads) and all(o.rate is not None for o in offloads)
    first = min(o.split for o in offloads)
    if all(o.budget == 1.0 for o in offloads):  # activations: no budget applies
        return Option(OFFLOAD, first)
    return pipeline.check_option(
        Option(OFFLOAD, first, settings.budget, settings.rate if coded else None)
    )


def make_controller(
    settings: DeviceSettings, pipeline: Pipeline, predictor: Predictor
) -> Controller:
    """The configured controller for ``pipeline``, refusing one that does not fit it."""
    name, model = settings.controller, pipeline.model
    if name not in pipeline.controllers:
        raise ValueError(
            f"controller {name!r} does not fit model {model.name!r} ({pipeline.kind}): it takes "
            f"{', '.join(pipeline.controllers)}; set --controller or --model-name accordingly"
        )
    if name == "local":
        return LocalController(pipeline)
    if name == "fixed":
        return FixedController(pipeline, default_offload(settings, pipeline))
    last = max(o.split for o in pipeline.options() if o.action == OFFLOAD)
    offload = default_offload(settings, pipeline)
    plan = Option(OFFLOAD, last, offload.budget, offload.rate)
    if name in ("threshold", "growth"):
        return ExitRuleController(name, settings.exit_threshold, settings.grow_threshold, plan)
    if name == "rl" and not (model.path / "options.json").is_file():  # an exit-walk policy
        return RLController(model.path / "policy.onnx", plan)
    table = load_table(pipeline)
    if name == "rl":
        return RLController(model.path / "policy.onnx", plan, table, predictor)
    if name == "planner":
        return PlannerController(table, predictor)
    return LyapunovController(
        table, lyapunov_constraints(settings, table), V=settings.lyapunov_v, predictor=predictor
    )


def lyapunov_constraints(settings: DeviceSettings, table: CalibrationTable) -> list[Constraint]:
    """The Lyapunov controller's constraints from the settings: the channel-use budget where the
    table has coded options, the link's and the device's utilisation, and the optional energy and
    latency budgets."""
    mu = settings.lyapunov_mu
    constraints = [
        Constraint("link", settings.link_utilisation, mu / 100.0),
        Constraint("device", settings.device_utilisation, mu / 100.0),
    ]
    if (table.channel_use > 0).any():
        constraints.append(Constraint("channel_use", settings.channel_budget, mu))
    if settings.energy_budget_j is not None:
        constraints.append(Constraint("energy", settings.energy_budget_j, mu))
    if settings.latency_budget_ms is not None:
        constraints.append(Constraint("latency", settings.latency_budget_ms, mu / 1000.0))
    return constraints


__all__ = [
    "CONTROLLERS",
    "ChannelState",
    "Constraint",
    "Controller",
    "ExitRuleController",
    "ExitState",
    "FixedController",
    "FrameState",
    "LocalController",
    "LyapunovController",
    "Outcome",
    "PlannerController",
    "RLController",
    "load_table",
    "make_controller",
]
