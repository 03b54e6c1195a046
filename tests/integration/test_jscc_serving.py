"""A JSCC pipeline through device -> link -> server: the server simulates the channel."""

from __future__ import annotations

import grpc
import httpx
import numpy as np
import pytest
import torch

from semlink.procs import reserve_port
from semlink.protocol import grpc_service_pb2 as pb
from semlink.protocol import grpc_service_pb2_grpc as pb_grpc
from semlink.protocol.codec import set_param, to_bytes
from semlink.protocol.http_codec import build_infer_request


@pytest.fixture(scope="module")
def jscc_device(stack):
    port = reserve_port()
    stack.procs.start(
        "device-jscc",
        "device",
        "--server",
        f"127.0.0.1:{stack.ports['link']}",
        "--http-port",
        str(port),
        "--model-repository",
        str(stack.repository),
        "--model-name",
        "tiny-jscc",
        "--rate",
        "0.25",
        "--link-state-url",
        stack.state_url,
        *stack.security_args("device"),
    )
    stack.procs.wait_http("device-jscc", f"http://127.0.0.1:{port}/v2/health/ready")
    yield f"http://127.0.0.1:{port}/v2/models/tiny-jscc/infer"
    stack.procs.stop("device-jscc")


def ask(url: str, image: np.ndarray, **params) -> dict:
    body, headers = build_infer_request({"image": image}, params)
    resp = httpx.post(url, content=body, headers=headers, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()


def probs(doc: dict) -> np.ndarray:
    return np.array(next(o for o in doc["outputs"] if o["name"] == "probabilities")["data"])


def test_high_snr_matches_the_in_process_pipeline(jscc_device, tiny_jscc):
    image = np.random.default_rng(3).normal(size=(1, 1, 48, 48)).astype(np.float32)
    doc = ask(jscc_device, image, budget=0.25, rate=0.25, snr_db=100.0)
    p = doc["parameters"]
    assert p["exit"] == "server" and p["symbols_per_token"] == 4 and p["snr_db"] == 100.0
    assert p["channel_uses"] == pytest.approx(9 * 4 / 2304)
    assert p["payload_bytes"] == 9 * 2 * 4 * 2  # fp16 (re, im) symbols
    with torch.no_grad():
        out = tiny_jscc.vit.forward_device(torch.from_numpy(image), torch.full((1,), 0.25))
        kept, _ = tiny_jscc.vit.select(out.tokens, out.key, 9)
        received = tiny_jscc.transmit(kept, torch.tensor([4]), torch.zeros(1), "none")
        expected = torch.softmax(tiny_jscc.vit.forward_tail(received), -1)[0].numpy()
    np.testing.assert_allclose(probs(doc), expected, atol=2e-3)  # fp16 symbols


def test_low_snr_is_noisy_at_the_receiver(jscc_device):
    image = np.random.default_rng(4).normal(size=(1, 1, 48, 48)).astype(np.float32)
    clean = probs(ask(jscc_device, image, snr_db=100.0))
    noisy = [probs(ask(jscc_device, image, snr_db=-20.0)) for _ in range(3)]
    assert all(np.abs(n - clean).max() > 1e-3 for n in noisy)
    assert np.abs(noisy[0] - noisy[1]).max() > 1e-4  # fresh noise per request


def test_link_snr_is_used_when_the_request_has_none(jscc_device):
    doc = ask(jscc_device, np.zeros((1, 1, 48, 48), np.float32))
    assert doc["parameters"]["snr_db"] == 20.0  # the link emulator's default report


def test_server_rejects_malformed_symbols(stack):
    with grpc.insecure_channel(f"127.0.0.1:{stack.ports['grpc']}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        def call(shape, params=None, name="symbols"):
            req = pb.ModelInferRequest(model_name="tiny-jscc")
            req.inputs.add(name=name, datatype="FP16", shape=list(shape))
            req.raw_input_contents.append(to_bytes(np.zeros(shape, np.float16)))
            for k, v in (params or {}).items():
                set_param(req.parameters, k, v)
            return stub.ModelInfer(req, timeout=5)

        assert call((1, 3, 8), {"snr_db": 5.0, "channel": "rayleigh"}).outputs[0].shape == [1, 10]
        for shape, params, name, fragment in [
            ((1, 3, 7), None, "symbols", "2m"),
            ((1, 3, 40), None, "symbols", "m <= 16"),
            ((1, 3, 8), None, "tokens", "JSCC pipeline"),
            ((1, 3, 8), {"channel": "bsc", "snr_db": 5.0}, "symbols", "'channel' must be one of"),
            ((1, 3, 8), {"snr_db": 150.0}, "symbols", "snr_db"),
        ]:
            with pytest.raises(grpc.RpcError) as err:
                call(shape, params, name)
            assert (
                err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                and fragment in err.value.details()
            )
