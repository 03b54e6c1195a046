"""The local controller: the device answers every frame by itself, never offloading.

It is the device-alone baseline of the benchmarks: a token pipeline runs its whole model on the
device with every token kept (the device holds the tail for degraded answers anyway); an
early-exit or any-split network runs every block the device holds and answers from its last
exit.
"""

from __future__ import annotations

from semlink.device.controller.base import Controller, FrameState
from semlink.runtime.pipelines.base import Option, Pipeline


class LocalController(Controller):
    """Never offloads: the pipeline's :meth:`~semlink.runtime.pipelines.base.Pipeline.local_option`."""

    name = "local"

    def __init__(self, pipeline: Pipeline) -> None:
        self.option = pipeline.local_option()

    def decide(self, frame: FrameState) -> Option:
        """The most the device can do alone."""
        return self.option
