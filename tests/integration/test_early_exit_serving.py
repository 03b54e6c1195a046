"""An early-exit network through device -> link -> server: the device walks its exits, its
controller exits, continues or offloads; offloaded activations are continued by the server."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import torch

from semlink.procs import Processes, Stack, reserve_port
from semlink.protocol.http_codec import build_infer_request

MODEL = "tiny-ee"


@pytest.fixture(scope="module")
def ee_repository(tmp_path_factory):
    """The tiny early-exit ViT (3 blocks, device holds exits 0 and 1) exported as tiny-ee/1."""
    from semlink.models import checkpoint
    from semlink.models.early_exit import EarlyExitConfig, EarlyExitNet, config_dict
    from semlink.models.export_early_exit import export_early_exit_pipeline

    torch.manual_seed(0)
    model = EarlyExitNet(
        EarlyExitConfig(embed_dim=16, depth=3, num_heads=2, device_blocks=2)
    ).eval()
    root = tmp_path_factory.mktemp("ee-repo")
    checkpoint.save(root / "m.pt", config=config_dict(model.cfg), state_dict=model.state_dict())
    export_early_exit_pipeline(root / "m.pt", root / MODEL / "1")
    return root, model


@pytest.fixture(scope="module")
def ee_stack(ee_repository, tmp_path_factory):
    root, _ = ee_repository
    s = Stack(Processes(tmp_path_factory.mktemp("logs")), repository=root, model=MODEL)
    try:
        s.start_all(
            link_args=("--rate", "50mbit", "--delay-ms", "2"),
            device_args=("--controller", "threshold", "--exit-threshold", "1.01"),
        )
        yield s
    finally:
        s.procs.stop()


def ask(url: str, image: np.ndarray) -> dict:
    body, headers = build_infer_request({"image": image})
    resp = httpx.post(url, content=body, headers=headers, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()


def probs(doc: dict) -> np.ndarray:
    return np.array(next(o for o in doc["outputs"] if o["name"] == "probabilities")["data"])


def test_never_confident_device_offloads_and_server_finishes_the_network(ee_stack, ee_repository):
    _, model = ee_repository
    image = np.random.default_rng(0).normal(size=(1, 1, 48, 48)).astype(np.float32)
    doc = ask(ee_stack.infer_url(), image)
    p = doc["parameters"]
    # threshold 1.01 is never reached: continue at exit 0, offload at exit 1 (after block 2)
    assert p["exit"] == "server" and not p["degraded"]
    assert p["exit_actions"] == "continue,offload" and p["split"] == 2
    # fp16 activations (1, 37, 16): class + 36 patch tokens; fp32 log p of exit 1 (1, 10)
    assert p["payload_bytes"] == 37 * 16 * 2 + 10 * 4
    with torch.no_grad():
        final = model(torch.from_numpy(image))[-1].exp().numpy()[0]
    np.testing.assert_allclose(probs(doc), final, atol=2e-3)  # fp16 activations on the wire
    assert ee_stack.link_state()["uplink"]["delivered_bytes"] >= p["request_bytes"]
    metrics = httpx.get(f"{ee_stack.device_url}/metrics", timeout=5).text
    assert (
        'semlink_device_exit_decisions_total{action="offload",model="tiny-ee",split="2"} 1.0'
        in metrics
    )


def test_confident_device_answers_at_its_first_exit(ee_stack, ee_repository, tmp_path):
    _, model = ee_repository
    port = reserve_port()
    ee_stack.procs.start(
        "device-exit",
        "device",
        "--server",
        f"127.0.0.1:{ee_stack.ports['link']}",
        "--http-port",
        str(port),
        "--model-repository",
        str(ee_repository[0]),
        "--model-name",
        MODEL,
        "--controller",
        "threshold",
        "--exit-threshold",
        "0.0",
        *ee_stack.security_args("device"),
    )
    try:
        ee_stack.procs.wait_http("device-exit", f"http://127.0.0.1:{port}/v2/health/ready")
        image = np.random.default_rng(1).normal(size=(1, 1, 48, 48)).astype(np.float32)
        doc = ask(f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer", image)
    finally:
        ee_stack.procs.stop("device-exit")
    p = doc["parameters"]
    assert p["exit"] == "device" and p["exit_actions"] == "exit" and p["split"] == 1
    assert p["payload_bytes"] == 0
    with torch.no_grad():
        first = model(torch.from_numpy(image))[0].exp().numpy()[0]
    np.testing.assert_allclose(probs(doc), first, atol=1e-4)


def rejected(stack: Stack, tensors: dict, split: int):
    """Sends a request straight to the server's gRPC port; returns the error it raised."""
    import grpc

    from semlink.device.client import build_request
    from semlink.protocol import grpc_service_pb2_grpc as pb_grpc

    req = build_request(MODEL, "", "x", tensors, {"split": split})
    with (
        grpc.insecure_channel(f"127.0.0.1:{stack.ports['grpc']}") as ch,
        pytest.raises(grpc.RpcError) as err,
    ):
        pb_grpc.GRPCInferenceServiceStub(ch).ModelInfer(req, timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return err.value


LOGP = np.zeros((1, 10), np.float32)


def test_server_rejects_a_split_the_model_does_not_have(ee_stack):
    err = rejected(
        ee_stack, {"activations": np.zeros((1, 37, 16), np.float16), "prev_logp": LOGP}, 3
    )
    assert "one of [1, 2]" in err.details()


def test_server_names_the_activation_shape(ee_stack):
    err = rejected(
        ee_stack, {"activations": np.zeros((1, 5, 16), np.float16), "prev_logp": LOGP}, 1
    )
    assert "[B, 37, 16]" in err.details()


def test_server_wants_the_recursions_carry(ee_stack):
    err = rejected(ee_stack, {"activations": np.zeros((1, 37, 16), np.float16)}, 1)
    assert "prev_logp" in err.details()


def test_server_down_gives_a_degraded_answer_from_the_device_exit(ee_stack):
    ee_stack.procs.stop("server")
    try:
        image = np.random.default_rng(2).normal(size=(1, 1, 48, 48)).astype(np.float32)
        p = ask(ee_stack.infer_url(), image)["parameters"]
        assert p["degraded"] and p["exit"] == "device" and "server" in p["degraded_reason"]
    finally:
        ee_stack.start_server()
