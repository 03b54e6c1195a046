"""The stream's wire format: a camera's frames to a device on one WebSocket (``/v1/stream``).

Each frame is one binary message::

    [4 bytes: n, little-endian][n bytes: a JSON header][the frame]

The header: ``id`` (echoed in the answer), ``format`` (``raw``: the frame is the model's input
size in 8-bit pixels, H x W x C, row-major; ``png`` or ``jpeg``: a file, decoded and resized), and
any request parameter (``deadline_ms``, ``label``, ``option``, ``snr_db``, ...). Each frame's answer
is one JSON text message (see :mod:`semlink.device.stream`).
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

from semlink.protocol.params import shown

PATH = "/v1/stream"
MAX_HEADER_BYTES = 4096
FORMATS = ("raw", "png", "jpeg")


class FrameError(ValueError):
    """A malformed frame message; the message names the fix."""


def parse_frame(
    data: bytes, image_shape: tuple[int, int, int]
) -> tuple[dict[str, Any], bytes | np.ndarray]:
    """The header and the frame of one message: the raw frame as (1, H, W, C) uint8 pixels of the
    model's input size, or the file's bytes (png, jpeg). Raises :class:`FrameError`."""
    if len(data) < 4:
        raise FrameError(
            "a frame message starts with 4 bytes: the JSON header's length, little-endian"
        )
    (n,) = struct.unpack("<I", data[:4])
    if not 2 <= n <= MAX_HEADER_BYTES or 4 + n > len(data):
        raise FrameError(
            f"the header's length must be 2..{MAX_HEADER_BYTES} bytes within the message, got {n}"
        )
    try:
        header = json.loads(data[4 : 4 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FrameError(f"the header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise FrameError(f"the header must be a JSON object, got {shown(header)}")
    fmt = header.get("format", "raw")
    if fmt not in FORMATS:
        raise FrameError(f"format must be one of {FORMATS}, got {shown(fmt)}")
    body = data[4 + n :]
    if fmt != "raw":
        return header, body
    c, h, w = image_shape
    if len(body) != h * w * c:
        raise FrameError(
            f"a raw frame is the model's input in 8-bit pixels, {h}x{w}x{c} = {h * w * c} bytes; "
            f"got {len(body)}"
        )
    return header, np.frombuffer(body, np.uint8).reshape(1, h, w, c)


def peek_id(data: bytes) -> Any:
    """The frame's ``id`` if its header parses, else None (for the answer to a refused frame)."""
    try:
        (n,) = struct.unpack("<I", data[:4])
        header = json.loads(data[4 : 4 + min(n, MAX_HEADER_BYTES)])
        return header.get("id") if isinstance(header, dict) else None
    except (struct.error, UnicodeDecodeError, json.JSONDecodeError):
        return None


def brief(answer_id: Any, outcome: str, **fields: Any) -> str:
    """One answer message."""
    return json.dumps({"id": answer_id, "outcome": outcome, **fields}, separators=(",", ":"))


def frame_message(frame_id: Any, pixels: np.ndarray, params: dict[str, Any]) -> bytes:
    """One raw frame message: 8-bit pixels (H, W, C) with its header (``params`` besides the id)."""
    header = json.dumps({"id": frame_id, "format": "raw", **params}, separators=(",", ":")).encode()
    return (
        struct.pack("<I", len(header)) + header + np.ascontiguousarray(pixels, np.uint8).tobytes()
    )


__all__ = [
    "FORMATS",
    "FrameError",
    "MAX_HEADER_BYTES",
    "PATH",
    "brief",
    "frame_message",
    "parse_frame",
    "peek_id",
]
