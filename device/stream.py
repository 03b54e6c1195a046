"""A camera's stream of frames on one connection: the device's WebSocket ``/v1/stream``.

A camera produces frames at a rate; one HTTP request per frame would pay the HTTP front's cost
per frame (about a millisecond of CPU, much of a frame's budget on a slow device). On the stream
each frame is one binary message::

    [4 bytes: n, little-endian][n bytes: a JSON header][the frame]

The header: ``id`` (echoed in the answer), ``format`` (``raw``: the frame is the model's input
size in 8-bit pixels, H x W x C, row-major; ``png`` or ``jpeg``: a file, decoded and resized),
``answer: true`` for the whole answer (as ``/v1/classify`` gives it) besides the brief, and any
request parameter (``deadline_ms``, ``label``, ``option``, ``snr_db``, ...). Each frame gets
exactly one answer, a JSON text message, in the order answers are ready::

    {"id": ..., "outcome": "server" | "device" | "degraded" | "late" | "dropped" | "error",
     "label": 3, "on_time": true, "latency_ms": 41.2, "option": "s1:a0.25", "bytes_up": 845,
     "bytes_down": 171, "device_cpu_ms": 6.1, "queued_ms": 0.4, "error": null}

``late``: the deadline passed before the device could start on the frame; ``dropped``: too many
frames were waiting (the device's ``max_waiting``, or this connection's frames in flight);
``error``: the frame itself was malformed (``error`` says why). A stream needs the API key like
any route (``Authorization`` on the upgrade request).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from semlink.device.decoding import DecodePool
from semlink.device.service import DeviceService
from semlink.protocol import params as P
from semlink.protocol.codec import TensorError
from semlink.protocol.params import ParameterError
from semlink.protocol.stream import MAX_HEADER_BYTES, PATH, FrameError, brief, parse_frame, peek_id
from semlink.runtime import security
from semlink.runtime.errors import Late, QueueFull
from semlink.runtime.images import decode_image

MAX_IN_FLIGHT = 256  # frames of one connection being answered at once


def install_stream(app: FastAPI, service: DeviceService, decoder: DecodePool) -> None:
    """Adds the stream route to the device's app; PNG and JPEG frames decode on ``decoder``
    (the uploads' pool), waiting for it counted against the frame's deadline."""

    @app.websocket(PATH)
    async def stream(ws: WebSocket) -> None:
        """A stream of frames, each answered once (see :mod:`semlink.device.stream`)."""
        keys = getattr(app.state, "api_keys", None)
        if keys and not security.authorised(ws.headers.get("authorization", ""), keys):
            await ws.close(
                code=1008, reason="missing or invalid API key: send 'Authorization: Bearer <key>'"
            )
            return
        await ws.accept()
        lock = asyncio.Lock()
        pending: set[asyncio.Task] = set()

        async def send(message: str) -> None:
            """Sends one answer."""
            async with lock:  # one writer at a time on a WebSocket
                await ws.send_text(message)

        async def answer(data: bytes, arrived: float, cpu_ms: float) -> None:
            """Answers one frame message, exactly once."""
            await send(await answer_frame(service, decoder, data, arrived, cpu_ms))

        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                arrived, c0 = time.perf_counter(), time.thread_time()
                data = message.get("bytes")
                refused = refusal(data, service.settings.max_body_bytes, len(pending))
                if refused is not None:
                    await send(refused)
                    continue
                assert data is not None
                cpu = 1000.0 * (time.thread_time() - c0)
                task = asyncio.ensure_future(answer(data, arrived, cpu))
                pending.add(task)
                task.add_done_callback(pending.discard)
        except WebSocketDisconnect:
            pass
        finally:
            for task in pending:  # the client is gone: nobody to answer
                task.cancel()


def refusal(data: bytes | None, limit: int, in_flight: int) -> str | None:
    """The answer to a message refused before it is read (a text message, one over ``limit``
    bytes, or one past :data:`MAX_IN_FLIGHT`), or None to go on."""
    if data is None:
        return brief(None, "error", on_time=False, error="send frames as binary messages")
    frame_id = peek_id(data[: 4 + MAX_HEADER_BYTES])
    if len(data) > limit:
        why = f"frame of {len(data)} bytes exceeds the limit of {limit}"
        return brief(frame_id, "error", on_time=False, error=why)
    if in_flight >= MAX_IN_FLIGHT:
        why = f"{MAX_IN_FLIGHT} frames of this stream are in flight already"
        return brief(frame_id, "dropped", on_time=False, error=why)
    return None


async def answer_frame(
    service: DeviceService, decoder: DecodePool, data: bytes, arrived: float, cpu_ms: float
) -> str:
    """The answer to one frame message, whatever happens (``cpu_ms``: the device's CPU on it
    before this)."""
    manifest = service.model.manifest
    frame_id: Any = peek_id(data[: 4 + MAX_HEADER_BYTES])  # for an answer to a bad frame
    try:
        c0 = time.thread_time()
        header, frame = parse_frame(data, manifest.image_shape)
        params = service.pipeline.check_request(
            {k: v for k, v in header.items() if k not in ("id", "format", "answer")}
        )
        if frame_id is not None:
            params.setdefault("request_id", str(frame_id)[:128])
        if isinstance(frame, np.ndarray):  # raw pixels: normalising is all the decoding
            image = manifest.normalisation.apply_uint8(frame[0])
        else:
            deadline = params.get(P.DEADLINE_MS, service.settings.deadline_ms)
            limits = service.settings.image_limits()
            image = await decoder.run_by(arrived, deadline, decode_image, frame, manifest, limits)
        cpu = cpu_ms + 1000.0 * (time.thread_time() - c0)
        a = await service.classify(image, params, started=arrived, cpu_ms=cpu)
    except Late as exc:
        return brief(frame_id, "late", on_time=False, error=str(exc))
    except QueueFull as exc:
        return brief(frame_id, "dropped", on_time=False, error=str(exc))
    except (FrameError, TensorError, ParameterError) as exc:
        return brief(frame_id, "error", on_time=False, error=str(exc))
    return brief(
        frame_id,
        a.outcome,
        label=a.label,
        on_time=a.on_time,
        latency_ms=round(a.timing_ms["total_ms"], 3),
        option=a.option,
        bytes_up=a.request_bytes,
        bytes_down=a.reply_bytes,
        device_cpu_ms=round(a.device_cpu_ms, 3),
        queued_ms=round(a.queued_ms, 3),
        **({"answer": a.as_dict()} if header.get("answer") is True else {}),
    )
