"""Hostile clients against real processes (issue: hardening). One test per class of defect:
client values that could grow the server's memory, CPU work on the event loop, bad input that
could reach a 500, finite input that could produce a NaN answer."""

from __future__ import annotations

import io
import json
import secrets
import threading
import time

import grpc
import httpx
import numpy as np
import pytest
from PIL import Image

from semlink.protocol import grpc_service_pb2 as pb
from semlink.protocol import grpc_service_pb2_grpc as pb_grpc
from semlink.protocol.http_codec import build_infer_request

pytestmark = pytest.mark.slow


def test_client_supplied_names_never_grow_the_metrics(stack):
    """Failed gRPC requests with long random model names: counted as ``unknown``, so /metrics
    stays the size it was."""
    metrics_url = f"{stack.server_url}/metrics"
    before = len(httpx.get(metrics_url).text)
    with grpc.insecure_channel(f"127.0.0.1:{stack.ports['grpc']}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        names = [secrets.token_hex(2000) for _ in range(40)]
        for name in names:
            request = pb.ModelInferRequest(model_name=name, id=name)
            request.inputs.add(name="tokens", datatype="FP16", shape=[1, 1, 32])
            request.raw_input_contents.append(bytes(64))
            with pytest.raises(grpc.RpcError) as err:
                stub.ModelInfer(request, timeout=10)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            assert len(err.value.details()) < 500  # the error quotes the name, cut short
    text = httpx.get(metrics_url).text
    assert not any(name[:40] in text for name in names)
    assert 'model="unknown"' in text and len(text) < before + 2000


def _wide_png(width: int = 8000, height: int = 2000) -> bytes:
    """Tens of kB that decode to 16 M pixels (sparse noise: about 0.15 s to decode here)."""
    pixels = np.random.default_rng(0).random((height, width)) > 0.999
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8) * 255).save(buf, "PNG")
    return buf.getvalue()


def test_decoding_stays_off_the_event_loop(stack):
    """Uploads that take a second to decode between them do not stall the health probe."""
    png = _wide_png()
    url = f"{stack.device_url}/v1/classify"
    threads = [
        threading.Thread(
            target=lambda: httpx.post(url, files={"image": ("w.png", png)}, timeout=60)
        )
        for _ in range(16)
    ]
    t_start = time.perf_counter()
    for t in threads:
        t.start()
    probes = []
    while any(t.is_alive() for t in threads):
        t0 = time.perf_counter()
        assert httpx.get(f"{stack.device_url}/v2/health/live", timeout=10).status_code == 200
        probes.append(time.perf_counter() - t0)
        time.sleep(0.02)
    uploads_s = time.perf_counter() - t_start
    for t in threads:
        t.join()
    # on the loop, a probe waited behind every queued decode (the whole uploads_s at worst);
    # off it, probes answer between them
    assert len(probes) >= 3 and uploads_s > 0.8, (probes, uploads_s)
    assert max(probes) < min(0.5, uploads_s / 2), (max(probes), uploads_s)


def test_the_answer_covers_decoding(stack):
    png = _wide_png(4000, 2000)
    r = httpx.post(f"{stack.device_url}/v1/classify", files={"image": ("w.png", png)}, timeout=60)
    assert r.status_code == 200
    timing = r.json()["timing_ms"]
    assert timing["total_ms"] > timing.get("device_head_ms", 0)  # decoding is inside total_ms


@pytest.mark.parametrize(
    ("files", "content", "fragment"),
    [
        ({"image": ("b.png", Image.new("L", (1, 1)) and b"")}, None, "PNG or JPEG"),
        (None, b"[" * 50_000 + b"]" * 50_000, "nests JSON too deeply"),
        (
            None,
            json.dumps(
                {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1], "data": [10**400]}]}
            ).encode(),
            "does not fit FP32",
        ),
        (
            None,
            json.dumps(
                {"inputs": [{"name": "image", "datatype": "FP32", "shape": [0, 2**62], "data": []}]}
            ).encode(),
            "exceed the limit",
        ),
        (
            None,
            json.dumps(
                {
                    "inputs": [{"name": "image", "datatype": "FP32", "shape": [1], "data": [0]}],
                    "parameters": {"budget": 10**400},
                }
            ).encode(),
            "budget",
        ),
    ],
)
def test_bad_input_is_a_400_never_a_500(stack, files, content, fragment):
    if files is not None:
        r = httpx.post(f"{stack.device_url}/v1/classify", files=files, timeout=30)
    else:
        r = httpx.post(stack.infer_url(), content=content, timeout=30)
    assert r.status_code == 400, r.text[:300]
    assert fragment in r.json()["error"]


def test_a_decompression_bomb_is_refused_from_its_header(stack):
    from tests.unit.test_fuzz import png_header

    bomb = png_header(100_000, 100_000)  # 10 G pixels announced in 33 bytes
    r = httpx.post(f"{stack.device_url}/v1/classify", files={"image": ("b.png", bomb)})
    assert r.status_code == 400 and "pixels" in r.json()["error"], r.text


def test_grpc_typed_contents_that_overflow_are_invalid_argument(stack):
    with grpc.insecure_channel(f"127.0.0.1:{stack.ports['grpc']}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(model_name="tiny-vit")
        spec = request.inputs.add(name="tokens", datatype="INT8", shape=[1, 1, 2])
        spec.contents.int_contents.extend([300, 1])
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(request, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "[-128, 127]" in err.value.details()


def test_extreme_finite_input_never_gets_a_nan_answer(stack):
    """Finite but extreme values drive the model to NaN: an error, never a 200 with NaN."""
    image = np.full((1, 1, 48, 48), 3e38, np.float32)
    for params in ({}, {"deadline_ms": 1}):  # offloaded, and answered locally
        body, headers = build_infer_request({"image": image}, params)
        r = httpx.post(stack.infer_url(), content=body, headers=headers, timeout=30)
        if r.status_code == 200:  # a model may stay finite here: then the answer must be
            probs = next(o for o in r.json()["outputs"] if o["name"] == "probabilities")
            assert np.isfinite(probs["data"]).all()
        else:
            assert r.status_code == 400 and "not finite" in r.json()["error"], r.text


@pytest.mark.parametrize("path", ["/v1/classify", "/v2/models/tiny-vit/infer"])
def test_a_chunked_body_over_the_limit_is_stopped_while_streaming(stack, path):
    """No Content-Length (chunked): the limit still holds, counted as the body arrives."""
    sent = 0

    def body():
        nonlocal sent
        head = b'--b\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n\r\n'
        yield head
        for _ in range(64):  # 64 x 128 kB = 8 MiB, twice the device's limit
            sent += 128 * 1024
            yield b"\0" * (128 * 1024)

    headers = {"content-type": "multipart/form-data; boundary=b"}
    r = httpx.post(f"{stack.device_url}{path}", content=body(), headers=headers, timeout=30)
    assert r.status_code == 413 and "exceeds the limit" in r.json()["error"], r.text[:200]
