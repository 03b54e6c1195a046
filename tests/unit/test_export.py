"""ONNX export: checker passes and ONNX Runtime matches PyTorch within 1e-4."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from semlink.models.vit import num_kept


@pytest.fixture(scope="module")
def sessions(tiny_repository):
    d = tiny_repository / "tiny-vit" / "1"
    return d, ort.InferenceSession(str(d / "head.onnx")), ort.InferenceSession(str(d / "tail.onnx"))


def test_graphs_pass_the_checker(sessions):
    d, _, _ = sessions
    for name in ("head.onnx", "tail.onnx"):
        onnx.checker.check_model(onnx.load(str(d / name)), full_check=True)
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["num_patches"] == 36 and manifest["embed_dim"] == 32


@pytest.mark.parametrize("alpha", [0.05, 0.15, 0.25, 0.6, 1.0])
def test_head_and_tail_match_pytorch(sessions, tiny_model, alpha):
    _, head, tail = sessions
    images = torch.from_numpy(
        np.random.default_rng(int(alpha * 100)).normal(size=(3, 1, 48, 48)).astype(np.float32)
    )
    a = torch.full((3,), alpha)
    with torch.no_grad():
        out = tiny_model.forward_device(images, a)
        kept, idx = tiny_model.select(out.tokens, out.key, num_kept(alpha, 36))
        logits = tiny_model.forward_tail(kept)
    tokens, indices = head.run(None, {"image": images.numpy(), "alpha": a.numpy()})
    assert tokens.shape == (3, num_kept(alpha, 36), 32)
    np.testing.assert_array_equal(indices, idx.numpy())
    np.testing.assert_allclose(tokens, kept.numpy(), atol=1e-4)
    ort_logits = tail.run(
        None, {"tokens": tokens, "token_mask": np.ones(tokens.shape[:2], np.float32)}
    )[0]
    np.testing.assert_allclose(ort_logits, logits.numpy(), atol=1e-4)


def test_tail_padding_does_not_change_answers(sessions):
    _, _, tail = sessions
    rng = np.random.default_rng(0)
    short = rng.normal(size=(1, 4, 32)).astype(np.float32)
    padded = np.concatenate([short, np.zeros((1, 5, 32), np.float32)], axis=1)
    mask = np.array([[1] * 4 + [0] * 5], np.float32)
    a = tail.run(None, {"tokens": short, "token_mask": np.ones((1, 4), np.float32)})[0]
    b = tail.run(None, {"tokens": padded, "token_mask": mask})[0]
    np.testing.assert_allclose(a, b, atol=1e-5)
