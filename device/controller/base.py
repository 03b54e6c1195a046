"""The controller seam: per frame, choose one option of the pipeline's option space.

A controller sees what the device knows when a frame starts (:class:`FrameState`: the request,
the link's state, the deadline, how long the frame has waited and how many wait behind it, the
device's measured costs) and plans an :class:`~semlink.runtime.pipelines.base.Option`
(:meth:`Controller.decide`). At each exit the device reaches on the way, it may change its mind
(:meth:`Controller.at_exit`): answer there, offload there, or go on with the plan. After the
answer it learns what the frame cost (:meth:`Controller.observe`).
"""

from __future__ import annotations

import abc
from typing import Any

from semlink.runtime.frames import ChannelState, ExitState, FrameState, Outcome
from semlink.runtime.pipelines.base import Option

__all__ = ["ChannelState", "Controller", "ExitState", "FrameState", "Outcome"]


class Controller(abc.ABC):
    """Chooses each frame's option; implementations keep their own long-term state."""

    name: str = "base"

    @abc.abstractmethod
    def decide(self, frame: FrameState) -> Option:
        """The option planned for a frame."""

    def at_exit(self, state: ExitState, frame: FrameState, plan: Option) -> Option:
        """At a device exit on the way to ``plan``: the option to take now (an exit or an
        offload at ``state.split``), or ``plan`` to go on. By default the plan stands."""
        return plan

    def observe(self, outcome: Outcome) -> None:  # noqa: B027 - an optional hook
        """Called after each frame with what it cost."""

    def state(self) -> dict[str, Any]:
        """Controller state to report in answers, metrics and the dashboard."""
        return {}
