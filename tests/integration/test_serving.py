"""device -> link -> server as real processes on loopback."""

from __future__ import annotations

import json
import time

import grpc
import httpx
import numpy as np
import pytest
import torch

from semlink.protocol import grpc_service_pb2 as pb
from semlink.protocol import grpc_service_pb2_grpc as pb_grpc
from semlink.protocol.codec import to_bytes
from semlink.protocol.http_codec import build_infer_request


def infer(stack, image: np.ndarray, **params) -> httpx.Response:
    body, headers = build_infer_request({"image": image}, params)
    return httpx.post(
        f"{stack.device_url}/v2/models/tiny-vit/infer", content=body, headers=headers, timeout=30
    )


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 1, 1, 48, 48)).astype(np.float32)


def test_predictions_equal_the_in_process_pipeline(stack, tiny_model):
    for i, image in enumerate(images(4)):
        alpha = (0.1, 0.25, 0.5, 1.0)[i]
        resp = infer(stack, image, budget=alpha)
        assert resp.status_code == 200, resp.text
        doc = resp.json()
        probs = np.array(next(o for o in doc["outputs"] if o["name"] == "probabilities")["data"])
        with torch.no_grad():
            expected = torch.softmax(tiny_model(torch.from_numpy(image), alpha), -1)[0].numpy()
        np.testing.assert_allclose(probs, expected, atol=1e-4)
        p = doc["parameters"]
        assert p["exit"] == "server" and not p["degraded"]
        assert p["tokens_sent"] == int(np.ceil(alpha * 36 - 1e-6))


def test_answer_reports_what_it_cost(stack):
    doc = infer(stack, images(1)[0], budget=0.25).json()["parameters"]
    for key in (
        "payload_bytes",
        "request_bytes",
        "tokens_sent",
        "budget",
        "split",
        "total_ms",
        "network_ms",
        "server_ms",
        "device_head_ms",
        "channel.bandwidth_bps",
        "channel.rtt_ms",
        "kept_indices",
        "option",
        "on_time",
        "device_cpu_ms",
        "queued_ms",
        "reply_bytes",
        "deadline_ms",
    ):
        assert key in doc, key
    assert doc["payload_bytes"] == 9 * 32 * 4  # fp32 tokens (the kept indices stay home)
    assert doc["option"] == "s2:a0.25" and doc["on_time"] and doc["reply_bytes"] > 40
    assert 0 < doc["device_cpu_ms"] < doc["total_ms"] * 2
    assert doc["channel.bandwidth_bps"] == pytest.approx(50e6, rel=0.1)


def test_bytes_on_the_wire_match_payload_plus_overhead(stack):
    before = stack.link_state()["uplink"]["delivered_bytes"]
    docs = [infer(stack, im, budget=1.0).json()["parameters"] for im in images(5, seed=1)]
    after = stack.link_state()["uplink"]["delivered_bytes"]
    payload = sum(d["request_bytes"] for d in docs)
    assert (
        payload <= after - before <= payload * 1.25 + 5 * 200
    )  # HTTP/2 + gRPC framing and headers


def test_oip_json_request_and_classify_upload(stack):
    image = images(1)[0]
    body = {
        "inputs": [
            {
                "name": "image",
                "datatype": "FP32",
                "shape": [1, 1, 48, 48],
                "data": image.reshape(-1).tolist(),
            }
        ]
    }
    resp = httpx.post(f"{stack.device_url}/v2/models/tiny-vit/infer", json=body, timeout=30)
    assert resp.status_code == 200 and resp.json()["outputs"][0]["name"] == "label"
    import io

    from PIL import Image

    png = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((60, 60)) * 255).astype(np.uint8)).save(
        png, "PNG"
    )
    resp = httpx.post(
        f"{stack.device_url}/v1/classify",
        files={"image": ("x.png", png.getvalue(), "image/png")},
        data={"budget": "0.5"},
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["tokens_sent"] == 18


@pytest.mark.parametrize(
    "case,status,fragment",
    [
        ("wrong_shape", 400, "must have shape [1, 1, 48, 48]"),
        ("wrong_dtype", 400, "must be FP32"),
        ("truncated", 400, "binary_data_size 9216 runs past the end"),
        ("byte_count", 400, "needs 9216 bytes, got 9212"),
        ("budget", 400, "(0, 1]"),
        ("unknown_model", 404, "serves model"),
        ("bad_image", 400, "not a PNG or JPEG"),
        ("too_large", 413, "exceeds the limit"),
        ("no_inputs", 400, "inputs"),
    ],
)
def test_device_rejects_bad_input_clearly(stack, case, status, fragment):
    url = f"{stack.device_url}/v2/models/tiny-vit/infer"
    image = images(1)[0]
    if case == "wrong_shape":
        body, headers = build_infer_request({"image": np.zeros((1, 1, 32, 32), np.float32)})
    elif case == "wrong_dtype":
        body, headers = build_infer_request({"image": image.astype(np.float64)})
    elif case == "truncated":
        body, headers = build_infer_request({"image": image})
        body = body[:-4]
    elif case == "byte_count":
        head = json.dumps(
            {
                "inputs": [
                    {
                        "name": "image",
                        "datatype": "FP32",
                        "shape": [1, 1, 48, 48],
                        "parameters": {"binary_data_size": 9212},
                    }
                ]
            }
        ).encode()
        body = head + b"\x00" * 9212
        headers = {"inference-header-content-length": str(len(head))}
    elif case == "budget":
        body, headers = build_infer_request({"image": image}, {"budget": 1.5})
    elif case == "unknown_model":
        body, headers = build_infer_request({"image": image})
        url = f"{stack.device_url}/v2/models/nope/infer"
    elif case == "bad_image":
        resp = httpx.post(
            f"{stack.device_url}/v1/classify",
            files={"image": ("x.png", b"not an image", "image/png")},
        )
        assert resp.status_code == status and fragment in resp.json()["error"]
        return
    elif case == "too_large":
        body, headers = b"x" * (5 * 1024 * 1024), {"content-type": "application/octet-stream"}
    else:
        body, headers = b'{"inputs": []}', {"content-type": "application/json"}
    resp = httpx.post(url, content=body, headers=headers, timeout=30)
    assert resp.status_code == status, resp.text
    assert fragment in resp.json()["error"]


def test_server_grpc_rejects_bad_tensors(stack):
    with grpc.insecure_channel(f"127.0.0.1:{stack.ports['grpc']}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerReady(pb.ServerReadyRequest(), timeout=5).ready
        index = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=5).models
        assert sorted(m.name for m in index) == ["tiny-jscc", "tiny-vit"]

        def call(model="tiny-vit", shape=(1, 4, 32), dtype="FP16", raw=None):
            req = pb.ModelInferRequest(model_name=model)
            req.inputs.add(name="tokens", datatype=dtype, shape=list(shape))
            req.raw_input_contents.append(
                raw if raw is not None else to_bytes(np.zeros(shape, np.float16))
            )
            return stub.ModelInfer(req, timeout=5)

        assert call().outputs[0].shape == [1, 10]
        for kwargs, code, fragment in [
            ({"shape": (1, 4, 31)}, grpc.StatusCode.INVALID_ARGUMENT, "[B, T, 32]"),
            ({"raw": b"\x00" * 10}, grpc.StatusCode.INVALID_ARGUMENT, "needs 256 bytes"),
            (
                {"dtype": "FP64", "raw": b"\x00" * 4 * 32 * 8},
                grpc.StatusCode.INVALID_ARGUMENT,
                "FP16, FP32 or INT8",
            ),
            ({"model": "nope"}, grpc.StatusCode.NOT_FOUND, "unknown model"),
        ]:
            with pytest.raises(grpc.RpcError) as err:
                call(**kwargs)
            assert err.value.code() == code and fragment in err.value.details()


def test_tight_deadline_answers_locally_and_says_so(stack):
    doc = infer(stack, images(1)[0], deadline_ms=0.5).json()["parameters"]
    assert doc["degraded"] and "deadline" in doc["degraded_reason"] and doc["exit"] == "device"


def test_server_down_degrades_opens_the_breaker_then_recovers(stack):
    image = images(1)[0]
    expected = infer(stack, image).json()["outputs"][0]["data"]
    stack.procs.stop("server")
    reasons = []
    for _ in range(5):
        resp = infer(stack, image)
        assert resp.status_code == 200
        doc = resp.json()
        assert doc["parameters"]["degraded"] and doc["parameters"]["exit"] == "device"
        assert doc["outputs"][0]["data"] == expected  # the local answer is the same model
        reasons.append(doc["parameters"]["degraded_reason"])
    assert all("UNAVAILABLE" in r for r in reasons[:3])
    assert all("circuit open" in r for r in reasons[3:])  # no more attempts at a dead server
    stack.start_server()
    back = time.monotonic()
    while time.monotonic() - back < 10.0:
        if not infer(stack, image).json()["parameters"]["degraded"]:
            break
        time.sleep(0.05)
    else:
        pytest.fail("offloading did not resume after the server came back")
    assert time.monotonic() - back < 5.0  # recovery within 5 s of the server's return


def test_server_http_speaks_oip(stack):
    url = stack.server_url
    assert httpx.get(f"{url}/v2/health/ready").status_code == 200
    assert httpx.get(f"{url}/v2/models/tiny-vit").json()["inputs"][0]["shape"] == [-1, -1, 32]
    tokens = np.random.default_rng(0).normal(size=(1, 5, 32)).astype(np.float16)
    body, headers = build_infer_request({"tokens": tokens}, binary_output=True)
    resp = httpx.post(f"{url}/v2/models/tiny-vit/infer", content=body, headers=headers)
    assert resp.status_code == 200 and "inference-header-content-length" in resp.headers
    bad, headers = build_infer_request({"tokens": tokens[:, :, :30]})
    resp = httpx.post(f"{url}/v2/models/tiny-vit/infer", content=bad, headers=headers)
    assert resp.status_code == 400 and "[B, T, 32]" in resp.json()["error"]
    assert (
        httpx.post(f"{url}/v2/models/nope/infer", content=body, headers=headers).status_code == 404
    )


def test_device_readiness_says_whether_its_server_answers(stack):
    deadline = time.monotonic() + 10
    while (doc := httpx.get(f"{stack.device_url}/v2/health/ready").json())["server"] != "reachable":
        assert time.monotonic() < deadline, doc
        time.sleep(0.2)
    assert doc["ready"] is True


def test_one_request_id_in_device_link_and_server_logs(stack):
    image = images(1, seed=9)[0]
    assert infer(stack, image, request_id="trace-me-7f3a").status_code == 200
    time.sleep(0.3)  # log lines are written as they happen; give the files a moment
    logs = stack.procs.log_dir
    for name in ("device", "link", "server"):
        assert "trace-me-7f3a" in (logs / f"{name}.log").read_text(), name


def test_a_stream_answers_each_request_and_a_bad_one_does_not_close_it(stack):
    """ModelStreamInfer: answers matched by id, a bad request answered with error_message and its
    status code, the stream still serving after it."""

    def request(rid: str, shape=(1, 4, 32)) -> pb.ModelInferRequest:
        req = pb.ModelInferRequest(model_name="tiny-vit", id=rid)
        req.inputs.add(name="tokens", datatype="FP16", shape=list(shape))
        req.raw_input_contents.append(to_bytes(np.zeros(shape, np.float16)))
        return req

    with grpc.insecure_channel(f"127.0.0.1:{stack.ports['grpc']}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        sent = [request("a"), request("b", (1, 4, 31)), request("c")]
        answers = {m.infer_response.id: m for m in stub.ModelStreamInfer(iter(sent), timeout=10)}
    assert sorted(answers) == ["a", "b", "c"]
    assert (
        answers["a"].infer_response.outputs[0].shape == [1, 10] and not answers["a"].error_message
    )
    assert "[B, T, 32]" in answers["b"].error_message
    assert answers["b"].infer_response.parameters["error_code"].string_param == "INVALID_ARGUMENT"
    assert answers["c"].infer_response.parameters["server_queue_depth"].int64_param >= 0


def test_a_device_on_a_stream_offloads_and_degrades_like_one_on_calls(stack):
    streamed = stack.sibling("-stream")
    streamed.start_device("--transport", "stream", "--token-format", "fp32", through_link=False)
    image = images(1)[0]
    try:
        expected = infer(stack, image).json()["outputs"]
        for i in range(5):
            doc = infer(streamed, image, request_id=f"stream-{i}").json()
            assert doc["parameters"]["exit"] == "server" and not doc["parameters"]["degraded"]
            assert doc["id"] == f"stream-{i}"
            assert doc["outputs"] == expected
    finally:
        stack.procs.stop("device-stream")


def test_many_requests_at_once_share_one_stream_without_a_failure(stack):
    """gRPC allows one write at a time on a stream: concurrent offloads must take turns (before
    they did, 399 of 400 concurrent requests failed with INTERNAL)."""
    import asyncio

    from semlink.device.client import ServerClient, build_request

    async def go() -> list:
        client = ServerClient(f"127.0.0.1:{stack.ports['grpc']}", stream=True)
        tokens = np.zeros((1, 4, 32), np.float16)
        try:
            return await asyncio.gather(
                *(
                    client.infer(build_request("tiny-vit", "", f"c{i}", {"tokens": tokens}, {}), 10)
                    for i in range(200)
                ),
                return_exceptions=True,
            )
        finally:
            await client.close()

    replies = asyncio.run(go())
    failures = [r for r in replies if isinstance(r, BaseException)]
    assert not failures, failures[:2]
    assert all(r.logits.shape == (1, 10) for r in replies)
