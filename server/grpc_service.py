"""The OIP ``GRPCInferenceService`` servicer. It implements RPCs only; failures cross the wire as
status codes with a message naming the fix, never a traceback."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import grpc

from semlink.protocol import grpc_service_pb2 as pb
from semlink.protocol import grpc_service_pb2_grpc as pb_grpc
from semlink.protocol import reply as R
from semlink.protocol.codec import (
    TensorError,
    from_bytes,
    from_values,
    param_value,
    set_param,
    to_bytes,
)
from semlink.protocol.params import check_ids
from semlink.runtime.errors import INTERNAL, NotReady, kind_of, model_label
from semlink.runtime.repository import ModelNotFound
from semlink.server.core import InferenceCore

log = logging.getLogger(__name__)

SERVER_NAME = "semlink-server"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ["model_repository", "binary_tensor_data", "semlink"]
STREAM_IN_FLIGHT = 64  # requests of one ModelStreamInfer stream in the server at once


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The OIP RPCs over the shared :class:`~semlink.server.core.InferenceCore`."""

    def __init__(self, core: InferenceCore) -> None:
        self.core = core

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        """OIP liveness."""
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        """OIP readiness: every model loaded; the trailing metadata carries the server's load."""
        context.set_trailing_metadata(self.core.load_report().headers())
        return pb.ServerReadyResponse(ready=self.core.ready)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        """OIP server metadata and extensions."""
        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=SERVER_VERSION, extensions=EXTENSIONS
        )

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        """OIP model readiness (false for an unknown model, never an error)."""
        try:
            self.core.model(request.name, request.version)
        except (ModelNotFound, NotReady):
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        """OIP model metadata: the inputs the model's pipeline takes and the logits it answers."""
        try:
            mv = await self._guard(request.name, self.core.model, request.name, request.version)
        except Failure as failure:
            await context.abort(failure.kind.grpc, failure.message)
        T = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=mv.name,
            versions=sorted(self.core.models[mv.name]),
            platform="onnxruntime_onnx",
            inputs=[
                T(name=n, datatype=d, shape=shape)
                for n, d, shape in self.core.pipeline(mv).inputs()
            ],
            outputs=[T(name="logits", datatype="FP32", shape=[-1, mv.num_classes])],
        )

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        """Every model version in the repository."""
        M = pb.RepositoryIndexResponse.ModelIndex
        return pb.RepositoryIndexResponse(
            models=[
                M(name=name, version=v, state="READY")
                for name, versions in sorted(self.core.models.items())
                for v in sorted(versions)
            ]
        )

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        """OIP inference through the core; failures become status codes by the error table.
        The reply's parameters say where the server's time went (``server_decode_ms``,
        ``server_admit_ms``, ``server_queue_ms``, ``server_hop_ms``, ``server_ort_ms``,
        ``server_handler_ms``: receipt of the decoded message to the reply built) and the
        server's load (``server_queue_depth``, ``server_service_ms``)."""
        try:
            return await self._answer(request)
        except Failure as failure:  # the load rides along: a full server says how full
            load = tuple(self.core.load_report().headers())
            await context.abort(failure.kind.grpc, failure.message, trailing_metadata=load)
            raise  # abort raises; this line is for readers and type checkers

    async def ModelStreamInfer(
        self, request_iterator: Any, context: grpc.aio.ServicerContext
    ) -> None:
        """Triton's streaming extension: each request on the stream is answered on it, in the
        order answers are ready, matched by ``id``; a failed request gets ``error_message`` (and
        its status code in the parameter ``error_code``) and the stream stays open. At most
        ``STREAM_IN_FLIGHT`` requests of one stream are in the server at once: the stream is
        read no further until one is answered (a client cannot grow the server's memory).
        When the server shuts down, a stream ends (status OK) after answering the request in
        hand, so its client opens the next one elsewhere instead of waiting out the drain."""
        slots = asyncio.Semaphore(STREAM_IN_FLIGHT)
        writing = asyncio.Lock()
        tasks: set[asyncio.Task] = set()

        async def answer(request: pb.ModelInferRequest) -> None:
            """Answers one request of the stream on it, then frees its slot."""
            try:
                try:
                    message = pb.ModelStreamInferResponse(
                        infer_response=await self._answer(request)
                    )
                except Failure as failure:
                    failed = pb.ModelInferResponse(
                        model_name=request.model_name,
                        model_version=request.model_version,
                        id=request.id,
                    )
                    set_param(failed.parameters, R.ERROR_CODE, failure.kind.grpc.name)
                    message = pb.ModelStreamInferResponse(
                        error_message=failure.message, infer_response=failed
                    )
                async with writing:
                    await context.write(message)
            finally:
                slots.release()

        while True:
            await slots.acquire()
            request = await context.read()
            if request is grpc.aio.EOF:
                break
            task = asyncio.ensure_future(answer(request))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            if self.core.draining:  # shutting down: answer what came, then end the stream
                break
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _answer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        """One request through the core; raises :class:`Failure` (kind and message)."""
        entered = time.perf_counter()
        params = {k: param_value(v) for k, v in request.parameters.items()}
        await self._guard(request.model_name, check_ids, request.id, params)
        inputs = await self._guard(request.model_name, decode_inputs, request)
        decoded = time.perf_counter()
        mv, outputs, extra = await self._guard(
            request.model_name,
            self.core.infer,
            request.model_name,
            request.model_version,
            inputs,
            params,
        )
        response = pb.ModelInferResponse(
            model_name=mv.name, model_version=mv.version, id=request.id
        )
        for name, arr in outputs.items():
            response.outputs.add(name=name, datatype="FP32", shape=list(arr.shape))
            response.raw_output_contents.append(to_bytes(arr))
        extra[R.DECODE_MS] = 1000.0 * (decoded - entered)
        extra[R.HANDLER_MS] = 1000.0 * (time.perf_counter() - entered)
        for k, v in extra.items():
            set_param(response.parameters, k, v)
        return response

    async def _guard(self, model: str, fn, *args: Any) -> Any:  # type: ignore[no-untyped-def]
        """Runs ``fn``; a failure becomes a :class:`Failure` with the error table's kind (a
        bug: INTERNAL, logged with its traceback), counted under the model's name if the server
        holds it."""
        try:
            result = fn(*args)
            if hasattr(result, "__await__"):
                result = await result
            return result
        except Exception as exc:
            kind = kind_of(exc)
            message = str(exc)
            if kind is INTERNAL:
                log.exception("unexpected error in %s", getattr(fn, "__name__", fn))
                message = "internal server error (logged on the server)"
        self.core.metrics.requests.labels(model_label(model, self.core.models), kind.label).inc()
        raise Failure(kind, message)


class Failure(Exception):
    """A request that failed, with its kind in the error table and the message for the client."""

    def __init__(self, kind: Any, message: str) -> None:
        super().__init__(message)
        self.kind, self.message = kind, message


def decode_inputs(request: pb.ModelInferRequest) -> dict[str, tuple[str, Any]]:
    """``{name: (datatype, array)}`` from raw_input_contents (or typed contents for small inputs)."""
    if not request.inputs:
        raise TensorError(
            "request has no inputs; send the model's inputs (see its metadata: "
            "GET /v2/models/NAME or ModelMetadata) as raw_input_contents"
        )
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise TensorError(
            f"{len(request.inputs)} inputs but {len(raw)} raw_input_contents; send one raw buffer per input"
        )
    out = {}
    for i, spec in enumerate(request.inputs):
        if raw:
            out[spec.name] = (
                spec.datatype,
                from_bytes(raw[i], spec.datatype, spec.shape, name=spec.name),
            )
        else:
            contents = spec.contents
            values = (
                list(contents.fp32_contents)
                or list(contents.int64_contents)
                or list(contents.int_contents)
                or list(contents.fp64_contents)
                or list(contents.uint_contents)
                or list(contents.uint64_contents)
            )
            out[spec.name] = (
                spec.datatype,
                from_values(values, spec.datatype, spec.shape, spec.name),
            )
    return out


def create_server(
    core: InferenceCore,
    address: str,
    max_message_bytes: int,
    credentials: grpc.ServerCredentials | None = None,
) -> tuple[grpc.aio.Server, int]:
    """Builds the gRPC server bound to ``address`` (``"[::]:0"`` picks a free port), with TLS when
    ``credentials`` are given. Returns it and the port."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(core), server)
    port = (
        server.add_secure_port(address, credentials)
        if credentials is not None
        else server.add_insecure_port(address)
    )
    if port == 0:
        raise OSError(f"cannot bind gRPC to {address}")
    return server, port
