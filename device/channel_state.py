"""Channel-state feedback: polls the link emulator's ``/state`` endpoint in the background."""

from __future__ import annotations

import asyncio
import json
import logging
import math
from typing import Any

import httpx

from semlink.device.background import Background
from semlink.device.controller.base import ChannelState
from semlink.protocol.params import shown
from semlink.runtime.channel import SNR_MAX_DB, SNR_MIN_DB

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
        """Reads the link's ``/state`` once into :attr:`current`: at most
        :data:`MAX_STATE_BYTES`, streamed, within :data:`STATE_TIMEOUT_S` in all, parsed off the
        event loop. Raises ``ValueError`` (and keeps the last good state) for anything that is
        not a valid channel state in time."""
        assert self.url is not None
        try:
            body = await asyncio.wait_for(read_state(client, self.url), STATE_TIMEOUT_S)
        except TimeoutError:
            raise ValueError(f"no whole answer within {STATE_TIMEOUT_S:g} s") from None
        self.current = parse_state(await asyncio.to_thread(state_json, body))

    async def _poll(self) -> None:
        warned = False
        async with httpx.AsyncClient() as client:
            while True:
                try:
                    await self.refresh(client)
                    warned = False
                except Exception as exc:  # noqa: BLE001 - the monitor outlives any bad answer
                    if not warned:
                        log.warning(
                            "link state %s unavailable (%s); keeping the last known state",
                            self.url,
                            exc,
                        )
                        warned = True
                await asyncio.sleep(self.poll_s)


MAX_STATE_BYTES = 64 * 1024  # a link's state is a few hundred bytes; anything past this is refused
STATE_TIMEOUT_S = 1.0  # the whole answer, headers to last byte, or the poll gives up


async def read_state(client: httpx.AsyncClient, url: str) -> bytes:
    """The body of ``GET url``, read as it streams and refused (``ValueError``) once past
    :data:`MAX_STATE_BYTES`, declared or not, so a state endpoint cannot grow the device's
    memory; compressed answers are refused (a small one may inflate to any size)."""
    headers = {"accept-encoding": "identity"}
    async with client.stream("GET", url, headers=headers, timeout=STATE_TIMEOUT_S) as response:
        if response.status_code != 200:
            raise ValueError(f"HTTP {response.status_code} from the link's state endpoint")
        if response.headers.get("content-encoding", "identity") != "identity":
            raise ValueError("link state must not be compressed")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_STATE_BYTES:
            raise ValueError(
                f"link state of {declared} bytes is over the {MAX_STATE_BYTES} bytes it may be"
            )
        chunks, total = [], 0
        async for chunk in response.aiter_bytes():  # identity: the bytes as sent
            total += len(chunk)
            if total > MAX_STATE_BYTES:
                raise ValueError(f"link state is over the {MAX_STATE_BYTES} bytes it may be")
            chunks.append(chunk)
    return b"".join(chunks)


def state_json(body: bytes) -> Any:
    """The JSON document of a state answer; ``ValueError`` for anything else."""
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"link state is not JSON: {exc}") from None
    except RecursionError:
        raise ValueError("link state nests JSON too deeply to be a state") from None


# field -> (lowest, highest) value a link may report; a missing field is unknown (None)
STATE_RANGES = {
    "bandwidth_bps": (0.0, 1e12),
    "rtt_ms": (0.0, 600_000.0),
    "snr_db": (SNR_MIN_DB, SNR_MAX_DB),
    "queued_bytes": (0.0, 1e12),
}


def parse_state(doc: Any) -> ChannelState:
    """A :class:`ChannelState` from the link's ``/state`` JSON, every value a finite number in
    its range (:data:`STATE_RANGES`) or absent; raises ``ValueError`` naming the bad field."""
    if not isinstance(doc, dict):
        raise ValueError(f"link state must be a JSON object, got {type(doc).__name__}")
    uplink = doc.get("uplink", {})
    if not isinstance(uplink, dict):
        raise ValueError("link state field 'uplink' must be an object")
    raw = {**{k: doc.get(k) for k in ("bandwidth_bps", "rtt_ms", "snr_db")}}
    raw["queued_bytes"] = uplink.get("queued_bytes")
    values: dict[str, float | None] = {}
    for key, value in raw.items():
        low, high = STATE_RANGES[key]
        if value is None:
            values[key] = None
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"link state field {key!r} must be a number, got {shown(value)}")
        try:
            v = float(value)
        except OverflowError:
            raise ValueError(
                f"link state field {key!r} must be in [{low:g}, {high:g}], got a "
                f"{len(str(value))}-digit integer"
            ) from None
        if not (math.isfinite(v) and low <= v <= high):
            raise ValueError(f"link state field {key!r} must be in [{low:g}, {high:g}], got {v}")
        values[key] = v
    return ChannelState(**values)
