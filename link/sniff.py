"""Reads request ids out of a plaintext gRPC byte stream, so the link emulator can log each
request under the id the device and the server log it with.

Only the client-to-server direction of a plaintext (``--insecure``) hop can be read: HTTP/2
frames, DATA frames per stream, the 5-byte gRPC message prefix, then the ``ModelInferRequest``
itself. Over TLS the stream is opaque by design; the sniffer notices at the first bytes and stops.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from semlink.protocol import grpc_service_pb2 as pb

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER = 9
DATA, PADDED = 0x0, 0x8
GRPC_PREFIX = 5


@dataclass
class _Stream:
    data: bytearray = field(default_factory=bytearray)
    wire_bytes: int = 0  # frame headers and payloads of this stream so far


class GrpcSniffer:
    """Feed it the client's bytes in order; :meth:`feed` returns ``(request_id, model,
    wire_bytes)`` for each ``ModelInferRequest`` completed by those bytes."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.preface_seen = False
        self.readable = True  # False once the stream turned out not to be plaintext HTTP/2
        self.streams: dict[int, _Stream] = {}

    def feed(self, chunk: bytes) -> list[tuple[str, str, int]]:
        """Feeds bytes of the device's stream; returns ``(request_id, model, wire bytes)`` of every
        request completed by them.
        """
        if not self.readable:
            return []
        self.buf += chunk
        if not self.preface_seen:
            if len(self.buf) < len(PREFACE):
                self.readable = PREFACE.startswith(bytes(self.buf))
                return []
            if not self.buf.startswith(PREFACE):
                self.readable = False
                self.buf.clear()
                return []
            del self.buf[: len(PREFACE)]
            self.preface_seen = True
        done = []
        while len(self.buf) >= FRAME_HEADER:
            length = int.from_bytes(self.buf[:3], "big")
            if len(self.buf) < FRAME_HEADER + length:
                break
            kind, flags = self.buf[3], self.buf[4]
            stream_id = int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
            payload = bytes(self.buf[FRAME_HEADER : FRAME_HEADER + length])
            del self.buf[: FRAME_HEADER + length]
            if stream_id == 0:
                continue
            s = self.streams.setdefault(stream_id, _Stream())
            s.wire_bytes += FRAME_HEADER + length
            if kind != DATA:
                continue
            if flags & PADDED and payload:
                payload = payload[1 : len(payload) - payload[0]]
            s.data += payload
            found = self._message(stream_id, s)
            if found:
                done.append(found)
        return done

    def _message(self, stream_id: int, s: _Stream) -> tuple[str, str, int] | None:
        if len(s.data) < GRPC_PREFIX:
            return None
        size = int.from_bytes(s.data[1:5], "big")
        if len(s.data) < GRPC_PREFIX + size:
            return None
        compressed, body = s.data[0], bytes(s.data[GRPC_PREFIX : GRPC_PREFIX + size])
        del self.streams[stream_id]
        if compressed:
            return None
        try:
            req = pb.ModelInferRequest.FromString(body)
        except DecodeError:
            return None  # another method's message
        if not req.id:
            return None
        return req.id, req.model_name, s.wire_bytes
