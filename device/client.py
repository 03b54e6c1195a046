"""The device's gRPC client to the edge server (through the link emulator)."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from semlink.device.background import Background
from semlink.protocol import grpc_service_pb2 as pb
from semlink.protocol import grpc_service_pb2_grpc as pb_grpc
from semlink.protocol.codec import datatype_of, from_bytes, param_value, set_param, to_bytes

log = logging.getLogger(__name__)


@dataclass
class ServerReply:
    """The server's answer to one offload, and what it cost on the wire."""

    logits: np.ndarray  # (1, classes)
    parameters: dict[str, Any]
    request_bytes: int  # serialised ModelInferRequest
    payload_bytes: int  # raw tensor bytes in it
    round_trip_ms: float


def build_request(
    model: str,
    version: str,
    request_id: str,
    tensors: dict[str, np.ndarray],
    parameters: dict[str, Any],
) -> pb.ModelInferRequest:
    """A ``ModelInferRequest`` carrying ``tensors`` as raw little-endian bytes."""
    req = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    for name, arr in tensors.items():
        req.inputs.add(name=name, datatype=datatype_of(arr), shape=list(arr.shape))
        req.raw_input_contents.append(to_bytes(arr))
    for k, v in parameters.items():
        set_param(req.parameters, k, v)
    return req


class ServerClient:
    """The device's gRPC client of one server (or of the link emulator in front of it)."""

    def __init__(
        self,
        address: str,
        max_message_bytes: int = 8 * 1024 * 1024,
        credentials: grpc.ChannelCredentials | None = None,
        server_name: str | None = None,
    ) -> None:
        """A channel to ``address``: TLS with ``credentials`` (verifying ``server_name`` when
        given instead of the address's host), plaintext without."""
        self.address = address
        options: list[tuple[str, str | int]] = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        self.channel = (
            grpc.aio.secure_channel(address, credentials, options=options)
            if credentials is not None
            else grpc.aio.insecure_channel(address, options=options)
        )
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)

    async def close(self) -> None:
        """Closes the channel."""
        await self.channel.close()

    async def ready(self, timeout: float = 1.0) -> bool:
        """Whether the server answers ``ServerReady`` with ready within ``timeout`` seconds."""
        try:
            return (await self.stub.ServerReady(pb.ServerReadyRequest(), timeout=timeout)).ready
        except grpc.aio.AioRpcError:
            return False

    async def infer(self, request: pb.ModelInferRequest, timeout_s: float) -> ServerReply:
        """Sends one request; raises ``grpc.aio.AioRpcError`` on failure or deadline."""
        t0 = time.perf_counter()
        resp = await self.stub.ModelInfer(request, timeout=timeout_s)
        rtt = (time.perf_counter() - t0) * 1000.0
        if len(resp.outputs) != 1 or len(resp.raw_output_contents) != 1:
            raise ValueError("server answered without exactly one raw 'logits' output")
        out = resp.outputs[0]
        logits = from_bytes(
            resp.raw_output_contents[0],
            out.datatype,
            out.shape,
            name=out.name,
            expect_datatype="FP32",
        )
        return ServerReply(
            logits,
            {k: param_value(v) for k, v in resp.parameters.items()},
            request.ByteSize(),
            sum(len(r) for r in request.raw_input_contents),
            rtt,
        )


class ServerWatch(Background):
    """Asks the server ``ServerReady`` every ``period_s`` and logs when it stops or starts
    answering, so a device pointed at the wrong address says so at once. What it knows is in
    ``state`` (``unknown`` until the first answer): the device's health probe reports it, the
    offloads themselves never wait on it."""

    def __init__(self, client: ServerClient, period_s: float = 5.0) -> None:
        self.client, self.period_s = client, period_s
        self.state = "unknown"

    async def check(self) -> str:
        """Probes the server once; logs a change of state. Returns ``reachable`` or ``unreachable``."""
        reachable = await self.client.ready(timeout=min(self.period_s, 2.0))
        state = "reachable" if reachable else "unreachable"
        if state != self.state:
            if reachable:
                log.info("server %s answers: offloading", self.client.address)
            else:
                log.warning(
                    "server %s is unreachable or not ready: answering on the device (degraded) "
                    "until it answers; check --server / SEMLINK_DEVICE_SERVER, the link and TLS",
                    self.client.address,
                )
        self.state = state
        return state

    async def _poll(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(self.period_s)
