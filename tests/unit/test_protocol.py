import filecmp
import json

import numpy as np
import pytest

from semlink.protocol import params as P
from semlink.protocol.codec import TensorError, from_bytes, pack_tokens, to_bytes, unpack_tokens
from semlink.protocol.generate import OUTPUTS, generate
from semlink.protocol.http_codec import build_infer_request, build_infer_response, parse_infer_body


def test_committed_stubs_are_fresh(tmp_path):
    """Fails when grpc_service.proto changed without `python -m semlink.protocol.generate`."""
    from semlink.protocol.generate import ROOT

    generate(tmp_path)
    for name in OUTPUTS:
        assert filecmp.cmp(tmp_path / name, ROOT / "protocol" / name, shallow=False), (
            f"protocol/{name} is stale: run `python -m semlink.protocol.generate`"
        )


@pytest.mark.parametrize("dtype", ["<f4", "<f2", "<i8", "<i1", "u1"])
def test_raw_bytes_round_trip(dtype):
    arr = (np.arange(24).reshape(2, 3, 4) % 7).astype(dtype)
    name = {"<f4": "FP32", "<f2": "FP16", "<i8": "INT64", "<i1": "INT8", "u1": "UINT8"}[dtype]
    back = from_bytes(to_bytes(arr), name, arr.shape)
    np.testing.assert_array_equal(back, arr)


def test_from_bytes_names_the_expected_form():
    with pytest.raises(TensorError, match="needs 96 bytes, got 95"):
        from_bytes(b"\0" * 95, "FP32", [2, 3, 4], name="tokens")
    with pytest.raises(TensorError, match=r"shape must be \[1, -1, 8\]"):
        from_bytes(b"\0" * 64, "FP32", [2, 8], expect_shape=[1, None, 8])
    with pytest.raises(TensorError, match="must be FP16"):
        from_bytes(b"\0" * 4, "FP32", [1], expect_datatype="FP16")
    with pytest.raises(TensorError, match="not supported"):
        from_bytes(b"", "COMPLEX", [0])


@pytest.mark.parametrize("fmt,tol", [("fp32", 0), ("fp16", 2e-3), ("int8", 2e-2)])
def test_token_packing(fmt, tol):
    x = np.random.default_rng(0).normal(size=(1, 9, 96)).astype(np.float32)
    packed = pack_tokens(x, fmt)
    assert packed.nbytes == {"fp32": 9 * 96 * 4, "fp16": 9 * 96 * 2, "int8": 9 * 96 + 9 * 4}[fmt]
    np.testing.assert_allclose(unpack_tokens(packed), x, atol=tol * np.abs(x).max())


def test_binary_http_round_trip_and_errors():
    image = np.random.default_rng(0).normal(size=(1, 1, 4, 4)).astype(np.float32)
    body, headers = build_infer_request({"image": image}, {"budget": 0.5}, request_id="r1")
    doc, tensors = parse_infer_body(body, headers["inference-header-content-length"])
    assert doc["id"] == "r1" and tensors["image"][0] == "FP32"
    np.testing.assert_array_equal(tensors["image"][1], image)
    with pytest.raises(TensorError, match="trailing bytes"):
        parse_infer_body(body + b"xx", headers["inference-header-content-length"])
    with pytest.raises(TensorError, match="not valid JSON"):
        parse_infer_body(b"{nope", None)
    with pytest.raises(TensorError, match="must be an integer"):
        parse_infer_body(body, "abc")
    bad = json.dumps(
        {
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}],
            "parameters": [1],
        }
    )
    with pytest.raises(TensorError, match="must be a JSON object"):
        parse_infer_body(bad.encode(), None)
    out, hdr = build_infer_response(
        "m", "1", "r1", {"logits": np.ones((1, 3), np.float32)}, {}, binary=True
    )
    n = int(hdr["inference-header-content-length"])
    spec = json.loads(out[:n])["outputs"][0]
    assert spec["parameters"]["binary_data_size"] == 12
    np.testing.assert_array_equal(
        from_bytes(out[n:], spec["datatype"], spec["shape"]), np.ones((1, 3), np.float32)
    )


@pytest.mark.parametrize(
    "name,value",
    [
        (P.BUDGET, 0.0),
        (P.BUDGET, 1.01),
        (P.RATE, -1),
        (P.SNR_DB, float("nan")),
        (P.SNR_DB, 101),
        (P.BUDGET, "0.5"),
        (P.BUDGET, True),
    ],
)
def test_parameters_out_of_range_are_refused(name, value):
    with pytest.raises(P.ParameterError, match=name):
        P.check(name, value)
