"""The pipelines semlink serves, one per method; :func:`make_pipeline` picks the model's.

Adding a method is one new file with a :class:`~.base.Pipeline` subclass and one line in
:data:`PIPELINES` (see docs/architecture.md, "Adding a pipeline").
"""

from __future__ import annotations

from semlink.runtime.manifest import ManifestError
from semlink.runtime.pipelines.any_split import AnySplitPipeline
from semlink.runtime.pipelines.base import Offload, Option, Pipeline, Stretch, WireOptions, Work
from semlink.runtime.pipelines.early_exit import EarlyExitPipeline
from semlink.runtime.pipelines.jscc import JsccPipeline
from semlink.runtime.pipelines.tokens import TokensPipeline
from semlink.runtime.repository import ModelVersion

PIPELINES: dict[str, type[Pipeline]] = {
    cls.kind: cls for cls in (TokensPipeline, JsccPipeline, EarlyExitPipeline, AnySplitPipeline)
}


def register(cls: type[Pipeline]) -> type[Pipeline]:
    """Registers a pipeline class under its ``kind`` (also usable as a class decorator)."""
    if cls.kind in PIPELINES and PIPELINES[cls.kind] is not cls:
        raise ValueError(f"kind {cls.kind!r} is served by {PIPELINES[cls.kind].__name__} already")
    PIPELINES[cls.kind] = cls
    return cls


def make_pipeline(model: ModelVersion) -> Pipeline:
    """The pipeline of ``model``'s kind, its kind's manifest fields checked (no graph opened yet:
    see :meth:`Pipeline.open`); raises ``ManifestError`` for a kind or field it cannot serve."""
    cls = PIPELINES.get(model.kind)
    if cls is None:
        raise ManifestError(
            f"{model.manifest.where}: kind {model.kind!r} is unknown; one of {sorted(PIPELINES)}"
        )
    return cls(model)


__all__ = [
    "PIPELINES",
    "AnySplitPipeline",
    "EarlyExitPipeline",
    "JsccPipeline",
    "Offload",
    "Option",
    "Pipeline",
    "Stretch",
    "TokensPipeline",
    "WireOptions",
    "Work",
    "make_pipeline",
    "register",
]
