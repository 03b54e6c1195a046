"""The pipelines semlink serves, one per method; :func:`make_pipeline` picks the model's."""

from __future__ import annotations

from semlink.runtime.manifest import PipelineKind
from semlink.runtime.pipelines.base import Offload, Pipeline, Stretch, WireOptions, Work
from semlink.runtime.pipelines.early_exit import EarlyExitPipeline
from semlink.runtime.pipelines.jscc import JsccPipeline
from semlink.runtime.pipelines.tokens import TokensPipeline
from semlink.runtime.repository import ModelVersion

PIPELINES: dict[PipelineKind, type[Pipeline]] = {
    PipelineKind.TOKENS: TokensPipeline,
    PipelineKind.JSCC: JsccPipeline,
    PipelineKind.EARLY_EXIT: EarlyExitPipeline,
}


def make_pipeline(model: ModelVersion) -> Pipeline:
    """The pipeline of ``model``'s kind (no graph opened yet: see :meth:`Pipeline.open`)."""
    return PIPELINES[model.kind](model)


__all__ = [
    "PIPELINES",
    "EarlyExitPipeline",
    "JsccPipeline",
    "Offload",
    "Pipeline",
    "Stretch",
    "TokensPipeline",
    "WireOptions",
    "Work",
    "make_pipeline",
]
