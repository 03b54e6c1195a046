"""The fixed controller: the same option for every frame (unless the request names its own)."""

from __future__ import annotations

from semlink.device.controller.base import Controller, FrameState
from semlink.protocol import params as P
from semlink.runtime.pipelines.base import OFFLOAD, Option, Pipeline


class FixedController(Controller):
    """Always ``default``; a request's ``option`` parameter, or for a token pipeline its
    ``budget`` and ``rate``, replaces it for that request."""

    name = "fixed"

    def __init__(self, pipeline: Pipeline, default: Option) -> None:
        self.pipeline = pipeline
        self.default = pipeline.check_option(default)

    def decide(self, frame: FrameState) -> Option:
        """The request's option, else the configured one."""
        request = frame.request
        if P.OPTION in request:
            return request[P.OPTION]
        if P.BUDGET in request or P.RATE in request:  # token pipelines: the head's one split
            base = (
                self.default
                if self.default.action == OFFLOAD
                else Option(OFFLOAD, self.pipeline.options()[-1].split)
            )
            return self.pipeline.check_option(
                Option(
                    OFFLOAD,
                    base.split,
                    request.get(P.BUDGET, base.budget),
                    request.get(P.RATE, base.rate),
                )
            )
        return self.default

    def state(self) -> dict[str, object]:
        """The configured option."""
        return {"option": self.default.name}
