"""The device's gRPC client of one edge server replica (directly, through the link emulator, or
through the link emulator as an HTTP CONNECT proxy)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from semlink.protocol import grpc_service_pb2 as pb
from semlink.protocol import grpc_service_pb2_grpc as pb_grpc
from semlink.protocol import reply as R
from semlink.protocol.codec import (
    TensorError,
    datatype_of,
    from_bytes,
    param_value,
    set_param,
    to_bytes,
)
from semlink.protocol.reply import Load

log = logging.getLogger(__name__)


def _rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    """The error a unary call would have raised, for failures on a stream."""
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


@dataclass
class ServerReply:
    """The server's answer to one offload, and what it cost."""

    logits: np.ndarray  # (1, classes)
    parameters: dict[str, Any]  # the reply's parameters (semlink.protocol.reply)
    round_trip_ms: float
    reply_bytes: int  # the serialised ModelInferResponse: what came down the link
    load: Load | None = None  # the server's load as it answered

    @property
    def server_ms(self) -> float:
        """The server's own time on the request, as it reports it."""
        return R.server_ms(self.parameters)

    @property
    def network_ms(self) -> float:
        """The round trip less the server's own time: both ways on the link and both gRPC stacks."""
        return max(self.round_trip_ms - self.server_ms, 0.0)


def build_request(
    model: str,
    version: str,
    request_id: str,
    tensors: dict[str, np.ndarray],
    parameters: dict[str, Any],
) -> pb.ModelInferRequest:
    """A ``ModelInferRequest`` carrying ``tensors`` as raw little-endian bytes; raises
    :class:`TensorError` for a floating-point tensor that is not finite (the server would refuse
    it: the device finds it before anything is sent, see :func:`check_finite_payload`)."""
    check_finite_payload(tensors)
    req = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    for name, arr in tensors.items():
        req.inputs.add(name=name, datatype=datatype_of(arr), shape=list(arr.shape))
        req.raw_input_contents.append(to_bytes(arr))
    for k, v in parameters.items():
        set_param(req.parameters, k, v)
    return req


def check_finite_payload(tensors: dict[str, np.ndarray]) -> None:
    """Raises :class:`TensorError` naming the client's input when a payload tensor, as it would
    travel (fp16 tokens, say), holds NaN or infinity: an input far outside the range the model
    was trained on (values of 1e30, say) drives the device's tokens past what the wire format
    holds. That is the client's error, found here before anything is sent, not a server's
    failure."""
    for name, arr in tensors.items():
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise TensorError(
                f"input 'image' is out of range for this model: the device's {name!r} for it "
                f"are not finite as {datatype_of(arr)}; send the image normalised as the model "
                "expects (values of a few units, see the model's metadata)"
            )


class ServerClient:
    """The device's gRPC client of one server (or of the link emulator in front of it)."""

    def __init__(
        self,
        address: str,
        max_message_bytes: int = 8 * 1024 * 1024,
        credentials: grpc.ChannelCredentials | None = None,
        server_name: str | None = None,
        proxy: str | None = None,
        stream: bool = False,
    ) -> None:
        """A channel to ``address``: TLS with ``credentials`` (verifying ``server_name`` when
        given instead of the address's host), plaintext without; through the HTTP CONNECT proxy
        ``proxy`` (HOST:PORT, the link emulator) when given. With ``stream``, offloads share one
        ``ModelStreamInfer`` stream (opened on first use, reopened after it breaks) instead of
        a call each: the per-call setup of both gRPC stacks is paid once."""
        self.address = address
        options: list[tuple[str, str | int]] = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        if proxy:
            options.append(("grpc.http_proxy", f"http://{proxy}"))
        else:  # an http_proxy variable in the environment must not reroute the offloads
            options.append(("grpc.enable_http_proxy", 0))
        self.channel = (
            grpc.aio.secure_channel(address, credentials, options=options)
            if credentials is not None
            else grpc.aio.insecure_channel(address, options=options)
        )
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self.stream = stream
        self._call: Any = None  # the open ModelStreamInfer call
        self._reader: asyncio.Task | None = None
        self._waiting: dict[str, asyncio.Future] = {}
        self._ids = itertools.count()
        self._opening = asyncio.Lock()
        self._writing = asyncio.Lock()  # one write at a time on a stream (gRPC's rule)

    async def close(self) -> None:
        """Closes the stream (if any) and the channel."""
        if self._call is not None:
            self._call.cancel()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        await self.channel.close()

    async def probe(self, timeout: float = 1.0) -> tuple[bool, Load | None]:
        """``ServerReady`` within ``timeout`` seconds: ready or not, and the load it reported."""
        try:
            call = self.stub.ServerReady(pb.ServerReadyRequest(), timeout=timeout)
            ready = (await call).ready
            return ready, Load.from_metadata(await call.trailing_metadata())
        except grpc.aio.AioRpcError:
            return False, None

    async def infer(self, request: pb.ModelInferRequest, timeout_s: float) -> ServerReply:
        """Sends one request; raises ``grpc.aio.AioRpcError`` on failure or deadline (on a
        stream too: a failed answer carries its status code, a broken stream is
        ``UNAVAILABLE``, a late one ``DEADLINE_EXCEEDED``)."""
        t0 = time.perf_counter()
        if self.stream:
            resp = await self._stream_infer(request, timeout_s)
        else:
            resp = await self.stub.ModelInfer(request, timeout=timeout_s)
        rtt = (time.perf_counter() - t0) * 1000.0
        parameters = {k: param_value(v) for k, v in resp.parameters.items()}
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
            logits, parameters, rtt, resp.ByteSize(), Load.from_parameters(parameters)
        )

    async def _stream_infer(
        self, request: pb.ModelInferRequest, timeout_s: float
    ) -> pb.ModelInferResponse:
        """One request on the shared stream, matched to its answer by a stream-unique id."""
        call = await self._open()
        # unique on this stream, and still the caller's id to whoever reads the wire (the link's
        # request log): "<request id>/<n>"
        own_id = request.id
        key = f"{own_id}/{next(self._ids)}"
        answer: asyncio.Future = asyncio.get_running_loop().create_future()
        self._waiting[key] = answer
        try:
            request.id = key
            try:
                async with self._writing:
                    await call.write(request)
            except grpc.aio.AioRpcError as exc:
                # the stream died under the write (a killed server can surface as INTERNAL):
                # the request reached no live server, so it is UNAVAILABLE, as it would be on
                # a call, and the device may send it to another replica
                raise _rpc_error(
                    grpc.StatusCode.UNAVAILABLE,
                    f"stream broken while sending: {exc.code().name} {exc.details()}",
                ) from None
            finally:
                request.id = own_id
            message = await asyncio.wait_for(answer, timeout_s)
        except TimeoutError:
            raise _rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
        except grpc.aio.AioRpcError:
            raise
        except Exception as exc:  # the stream broke while writing
            raise _rpc_error(grpc.StatusCode.UNAVAILABLE, f"stream broken: {exc}") from None
        finally:
            self._waiting.pop(key, None)
        if message.error_message:
            code = (
                param_value(message.infer_response.parameters[R.ERROR_CODE])
                if (R.ERROR_CODE in message.infer_response.parameters)
                else "UNKNOWN"
            )
            status = getattr(grpc.StatusCode, str(code), grpc.StatusCode.UNKNOWN)
            raise _rpc_error(status, message.error_message)
        return message.infer_response

    async def _open(self) -> Any:
        """The open stream, opening one (and its reader) if there is none."""
        async with self._opening:
            if self._call is None or self._call.done():
                self._call = self.stub.ModelStreamInfer()
                self._reader = asyncio.ensure_future(self._read(self._call))
            return self._call

    async def _read(self, call: Any) -> None:
        """Hands each answer to its waiter; when the stream ends, every waiter learns it."""
        reason = "stream closed by the server"
        try:
            async for message in call:
                waiter = self._waiting.get(message.infer_response.id)
                if waiter is not None and not waiter.done():
                    waiter.set_result(message)
        except grpc.aio.AioRpcError as exc:
            reason = f"stream broken: {exc.code().name} {exc.details()}"
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:  # an OIP server without streams
                log.warning("%s does not stream (%s); offloading by calls", self.address, reason)
                self.stream = False
        except asyncio.CancelledError:
            reason = "stream closed"
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_exception(_rpc_error(grpc.StatusCode.UNAVAILABLE, reason))
