"""The local controller: the device answers every request by itself, never offloading.

It is the device-alone baseline of ``semlink bench compare``: a token pipeline runs its whole
model on the device with every token kept (the device holds the tail for degraded answers
anyway); an early-exit network runs every block the device holds and answers from its last
device exit.
"""

from __future__ import annotations

from typing import Any

from semlink.device.controller.base import ChannelState, Controller, Decision, ExitState


class LocalController(Controller):
    """Never offloads: the whole model on the device (token pipelines, budget 1), or the
    device's last exit (early-exit networks)."""

    name = "local"

    def decide(self, request: dict[str, Any], channel: ChannelState) -> Decision:
        """Every token kept, answered on the device."""
        return Decision(budget=1.0, offload=False, reason="local")

    def at_exit(self, state: ExitState, channel: ChannelState) -> str:
        """Runs on to the device's last exit and answers there."""
        return "exit" if state.last else "continue"
