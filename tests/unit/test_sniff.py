"""Request ids read from real gRPC bytes: a plaintext channel's traffic recorded through a TCP
relay on loopback, then fed to the sniffer in pieces of every size."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from semlink.device.client import build_request
from semlink.link.sniff import GrpcSniffer
from semlink.protocol import grpc_service_pb2_grpc as pb_grpc


async def _record(n: int) -> bytes:
    """Bytes a gRPC client sends for ``n`` inference requests (the far end just reads)."""
    recorded = bytearray()
    got_all = asyncio.Event()

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # answer the HTTP/2 handshake with an empty SETTINGS frame so the client sends
        writer.write(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        while chunk := await reader.read(65536):
            recorded.extend(chunk)
            if recorded.count(b"req-") >= n:
                got_all.set()

    server = await asyncio.start_server(sink, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        tokens = {"tokens": np.ones((1, 3, 8), np.float16)}
        calls = [
            asyncio.ensure_future(
                stub.ModelInfer(build_request("tiny", "", f"req-{i}", tokens, {}), timeout=2)
            )
            for i in range(n)
        ]
        await asyncio.wait_for(got_all.wait(), 10)
        for c in calls:
            c.cancel()
    server.close()
    return bytes(recorded)


@pytest.fixture(scope="module")
def recorded() -> bytes:
    return asyncio.run(_record(3))


@pytest.mark.parametrize("piece", [1, 7, 100, 1 << 20])
def test_ids_come_out_whatever_the_chunking(recorded, piece):
    sniffer = GrpcSniffer()
    found = []
    for i in range(0, len(recorded), piece):
        found += sniffer.feed(recorded[i : i + piece])
    assert sorted(f[0] for f in found) == ["req-0", "req-1", "req-2"]
    assert all(f[1] == "tiny" and f[2] > 3 * 8 * 2 for f in found)


def test_tls_or_other_bytes_switch_it_off():
    sniffer = GrpcSniffer()
    assert sniffer.feed(b"\x16\x03\x01\x02\x00\x01\x00") == []  # a TLS ClientHello
    assert not sniffer.readable
    assert sniffer.feed(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") == []
