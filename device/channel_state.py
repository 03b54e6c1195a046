"""Channel-state feedback: polls the link emulator's ``/state`` endpoint in the background."""

from __future__ import annotations

import asyncio
import logging

import httpx

from semlink.device.background import Background
from semlink.device.controller.base import ChannelState

log = logging.getLogger(__name__)


class ChannelMonitor(Background):
    """Keeps the latest :class:`ChannelState`; unknown (all ``None``) without a state URL."""

    def __init__(self, url: str | None, poll_ms: float = 200.0) -> None:
        self.url = url
        self.poll_s = poll_ms / 1000.0
        self.current = ChannelState()

    def start(self) -> None:
        """Starts polling the link's state, if a state URL is configured."""
        if self.url:
            super().start()

    async def refresh(self, client: httpx.AsyncClient) -> None:
        """Reads the link's ``/state`` once into :attr:`current`."""
        assert self.url is not None
        s = (await client.get(self.url, timeout=1.0)).json()
        self.current = ChannelState(
            bandwidth_bps=s.get("bandwidth_bps"),
            rtt_ms=s.get("rtt_ms"),
            snr_db=s.get("snr_db"),
            queued_bytes=s.get("uplink", {}).get("queued_bytes"),
        )

    async def _poll(self) -> None:
        warned = False
        async with httpx.AsyncClient() as client:
            while True:
                try:
                    await self.refresh(client)
                    warned = False
                except (httpx.HTTPError, ValueError) as exc:
                    if not warned:
                        log.warning(
                            "link state %s unavailable (%s); keeping the last known state",
                            self.url,
                            exc,
                        )
                        warned = True
                await asyncio.sleep(self.poll_s)
