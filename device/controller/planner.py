"""The planner (docs/methods.md#one-decision): per frame, the most accurate option whose predicted
latency fits the deadline, as Edgent chooses a model's exit and partition under a latency
requirement (Li et al., 2019), with what the device measures now: the link's state, its own
stage times under its CPU quota, the time the frame has waited. numpy only.

At each device exit on the way it plans again for what is left: it knows the exit's confidence
then, and the calibration table says how accurate each option is for frames that reach that exit
that confident (answering there, offloading there, or going on).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from semlink.device.controller.base import Controller, ExitState, FrameState
from semlink.protocol import params as P
from semlink.runtime.calibration import CalibrationTable
from semlink.runtime.costs import Link, Predictor
from semlink.runtime.pipelines.base import EXIT, OFFLOAD, Option

MARGIN_MS = 5.0  # kept free of the deadline for what the prediction leaves out
TIE = 1e-3  # accuracies this close count as equal: the quicker option wins


class PlannerController(Controller):
    """The most accurate option predicted to meet the deadline; the quickest when none is."""

    name = "planner"

    def __init__(
        self, table: CalibrationTable, predictor: Predictor, margin_ms: float = MARGIN_MS
    ) -> None:
        self.table, self.predictor, self.margin_ms = table, predictor, margin_ms
        self.last: dict[str, Any] = {}

    def decide(self, frame: FrameState) -> Option:
        """The plan at the frame's start."""
        if P.OPTION in frame.request:
            return frame.request[P.OPTION]
        acc = self.table.accuracy_at(frame.request.get(P.SNR_DB, frame.channel.snr_db))
        return self._best(list(range(len(self.table.options))), acc, frame, frame.elapsed_ms, 0)

    def at_exit(self, state: ExitState, frame: FrameState, plan: Option) -> Option:
        """Plans again at an exit, with the accuracy of each option given this exit's confidence:
        answer here, offload here, or go on to a later option."""
        if P.OPTION in frame.request:
            return plan
        given = self.table.given_exit(state.split, state.confidence)
        if given is None:
            return plan
        acc = self.table.accuracy_at(frame.request.get(P.SNR_DB, frame.channel.snr_db))
        acc = np.where(np.isnan(given), acc, given)
        here = [
            i
            for i, o in enumerate(self.table.options)
            if (o.action in (EXIT, OFFLOAD) and o.split >= state.split)
        ]
        return self._best(here, acc, frame, state.elapsed_ms, state.k + 1)

    def _best(
        self,
        candidates: list[int],
        acc: np.ndarray,
        frame: FrameState,
        elapsed_ms: float,
        done: int,
    ) -> Option:
        """The most accurate candidate predicted in time (ties: the quickest); else the quickest."""
        link = Link(frame.channel.bandwidth_bps, frame.channel.rtt_ms, frame.channel.queued_bytes)
        latency = self.predictor.latencies(self.table.options, link, elapsed_ms, done)[candidates]
        a = acc[candidates]
        fits = latency + self.margin_ms <= frame.deadline_ms
        if fits.any():
            best = a[fits].max()
            pick = np.flatnonzero(fits & (a >= best - TIE))
            j = int(pick[np.argmin(latency[pick])])
        else:
            j = int(np.argmin(latency))
        self.last = {
            "predicted_ms": float(latency[j]),
            "expected_accuracy": float(a[j]),
            "in_time": bool(fits[j]),
        }
        return self.table.options[candidates[j]]

    def state(self) -> dict[str, Any]:
        """The last plan's predicted latency and expected accuracy."""
        return dict(self.last)
