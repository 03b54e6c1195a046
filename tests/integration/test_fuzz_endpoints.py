"""Hostile input against running processes: schemathesis generates valid and invalid requests
from the device's and server's own OpenAPI schemas (no answer may be a 5xx but load-shedding
503), and random bytes hit the gRPC port (the server must stay up and ready)."""

from __future__ import annotations

import grpc
import httpx
import pytest

from semlink.bench.fuzz import fuzz_grpc_port, fuzz_openapi
from semlink.protocol import grpc_service_pb2 as pb
from semlink.protocol import grpc_service_pb2_grpc as pb_grpc


@pytest.mark.parametrize("who", ["device", "server"])
def test_generated_requests_never_get_a_5xx(stack, who):
    url = stack.device_url if who == "device" else stack.server_url
    result = fuzz_openapi(url, max_examples=15)
    assert result["cases"] > 20
    assert result["server_errors"] == 0, "\n".join(result["failures"])


def test_random_bytes_on_the_grpc_port_do_not_hurt_the_server(stack):
    fuzz_grpc_port("127.0.0.1", stack.ports["grpc"], rounds=200)
    with grpc.insecure_channel(f"127.0.0.1:{stack.ports['grpc']}") as ch:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        assert stub.ServerReady(pb.ServerReadyRequest(), timeout=5).ready
    assert httpx.get(f"{stack.server_url}/v2/health/ready", timeout=5).status_code == 200
