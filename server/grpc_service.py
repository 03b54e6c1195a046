"""The OIP ``GRPCInferenceService`` servicer. It implements RPCs only; failures cross the wire as
status codes with a message naming the fix, never a traceback."""

from __future__ import annotations

import logging
from typing import Any

import grpc

from protocol import grpc_service_pb2 as pb
from protocol import grpc_service_pb2_grpc as pb_grpc
from protocol.codec import TensorError, from_bytes, param_value, set_param, to_bytes
from protocol.params import ParameterError
from server.batcher import QueueFull
from server.core import InferenceCore, NotReady
from server.repository import ModelNotFound

log = logging.getLogger(__name__)

SERVER_NAME = "semlink-server"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ["model_repository", "binary_tensor_data", "semlink"]


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, core: InferenceCore) -> None:
        self.core = core

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.core.ready)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=SERVER_VERSION, extensions=EXTENSIONS
        )

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        try:
            self.core.model(request.name, request.version)
        except (ModelNotFound, NotReady):
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        mv = await self._guard(
            context, request.name, self.core.model, request.name, request.version
        )
        T = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=mv.name,
            versions=sorted(self.core.models[mv.name]),
            platform="onnxruntime_onnx",
            inputs=[T(name=n, datatype=d, shape=shape) for n, d, shape in mv.input_metadata()],
            outputs=[T(name="logits", datatype="FP32", shape=[-1, mv.num_classes])],
        )

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
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
        inputs = await self._guard(context, request.model_name, decode_inputs, request)
        params = {k: param_value(v) for k, v in request.parameters.items()}
        mv, outputs, extra = await self._guard(
            context,
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
        for k, v in extra.items():
            set_param(response.parameters, k, v)
        return response

    async def _guard(self, context: grpc.aio.ServicerContext, model: str, fn, *args: Any) -> Any:  # type: ignore[no-untyped-def]
        """Maps failures to status codes: bad input, unknown model, not ready, overload, bug."""
        try:
            result = fn(*args)
            if hasattr(result, "__await__"):
                result = await result
            return result
        except (TensorError, ParameterError) as exc:
            code, message = grpc.StatusCode.INVALID_ARGUMENT, str(exc)
        except ModelNotFound as exc:
            code, message = grpc.StatusCode.NOT_FOUND, str(exc)
        except NotReady as exc:
            code, message = grpc.StatusCode.UNAVAILABLE, str(exc)
        except QueueFull as exc:
            code, message = grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)
        except Exception:
            log.exception("unexpected error in %s", getattr(fn, "__name__", fn))
            code, message = grpc.StatusCode.INTERNAL, "internal server error (logged on the server)"
        self.core.metrics.requests.labels(
            getattr(args[0], "model_name", "") if args else "", code.name.lower()
        ).inc()
        await context.abort(code, message)


def decode_inputs(request: pb.ModelInferRequest) -> dict[str, tuple[str, Any]]:
    """``{name: (datatype, array)}`` from raw_input_contents (or typed contents for small inputs)."""
    if not request.inputs:
        raise TensorError("request has no inputs; send 'tokens' as raw_input_contents")
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
            import numpy as np

            from protocol.codec import DTYPES

            contents = spec.contents
            values = (
                list(contents.fp32_contents)
                or list(contents.int64_contents)
                or list(contents.int_contents)
                or list(contents.fp64_contents)
            )
            if spec.datatype not in DTYPES:
                raise TensorError(
                    f"input {spec.name!r}: datatype {spec.datatype!r} is not supported"
                )
            try:
                out[spec.name] = (
                    spec.datatype,
                    np.asarray(values, dtype=DTYPES[spec.datatype]).reshape(list(spec.shape)),
                )
            except ValueError as exc:
                raise TensorError(
                    f"input {spec.name!r}: contents do not fit shape {list(spec.shape)}: {exc}"
                ) from None
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
