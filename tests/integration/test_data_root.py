"""Models trained on data from local disk (CIFAR-10, ImageFolder) get what the embedded ones
get (issue: hardening, second round): `semlink export --data-root` fits the manifest's input
check on their validation split, `semlink sample --data-root` writes their example inputs, and
the device then warns about an input unlike that data (on 7473c99 neither command took the flag
its own error asked for, and a digit sent to a CIFAR model got a 200 without a warning)."""

from __future__ import annotations

import asyncio
import io
import json
import pickle
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from semlink.device.http_app import create_app
from semlink.device.service import DeviceService
from semlink.device.settings import DeviceSettings


def fake_cifar(root: Path, per_batch: int = 40) -> Path:
    """CIFAR-10's python batches with smooth colour fields and a little noise in place of the
    photographs: the format the loader reads, the kind of statistics photographs have."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:32] / 31.0
    root.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = []
        for _ in range(per_batch):
            a, b, c = rng.uniform(0.3, 0.8, (3, 3))
            field = a[:, None, None] + (b - a)[:, None, None] * xx + (c - a)[:, None, None] * yy
            noisy = np.clip(field + rng.normal(0, 0.03, field.shape), 0, 1)
            images.append((noisy * 255).astype(np.uint8).reshape(-1))
        batch = {b"data": np.stack(images), b"labels": list(rng.integers(0, 10, per_batch))}
        (root / name).write_bytes(pickle.dumps(batch))
    return root


def semlink(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "semlink.cli", *argv], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def cifar_model(tmp_path_factory):
    """A tiny 3 x 32 x 32 selector 'trained' on fake CIFAR-10, exported with --data-root into a
    model repository; the repository, the data root, and the failed export without the flag."""
    import torch

    from semlink.models import checkpoint
    from semlink.models.vit import SelectorViT, ViTConfig

    tmp = tmp_path_factory.mktemp("cifar")
    root = fake_cifar(tmp / "cifar-10-batches-py")
    cfg = ViTConfig(image_size=32, patch_size=8, in_chans=3, num_classes=10, embed_dim=32,
                    depth=3, num_heads=2, split=2)  # fmt: skip
    torch.manual_seed(0)
    ckpt = tmp / "cifar.pt"
    model = SelectorViT(cfg).eval()
    checkpoint.save(ckpt, config=asdict(cfg), state_dict=model.state_dict(), metrics={},
                    train_config={"dataset": "cifar10"})  # fmt: skip
    repo = tmp / "repo"
    without = semlink(
        "export", "selector", "--checkpoint", str(ckpt), "--out", str(repo / "x" / "1")
    )
    done = semlink(
        "export", "selector", "--checkpoint", str(ckpt), "--out", str(repo / "cifar-vit" / "1"),
        "--data-root", str(root),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return repo, root, without


def test_export_without_the_data_root_is_refused_naming_it(cifar_model):
    _, _, without = cifar_model
    assert without.returncode == 2, without.stderr[-2000:]
    assert "pass --data-root PATH" in without.stderr and "input check" in without.stderr
    assert "Traceback" not in without.stderr


def test_export_with_the_data_root_fits_the_input_check(cifar_model):
    repo, _, _ = cifar_model
    manifest = json.loads((repo / "cifar-vit" / "1" / "manifest.json").read_text())
    assert manifest["normalization"]["dataset"] == "cifar10"
    assert manifest["input_check"]["fitted_on"] == "40 held-out images"  # 10 % of 5 x 40, twice


def test_sample_reads_the_test_split_from_the_data_root(cifar_model, tmp_path):
    repo, root, _ = cifar_model
    out = tmp_path / "samples"
    argv = ("sample", "--model-repository", str(repo), "--model", "cifar-vit", "--out", str(out))
    refused = semlink(*argv)
    assert "skipped" in refused.stdout and "--data-root" in refused.stdout
    done = semlink(*argv, "--data-root", str(root), "--count", "3")
    assert done.returncode == 0, done.stderr[-2000:]
    labels = json.loads((out / "cifar-vit" / "labels.json").read_text())
    assert len(labels) == 3 and Image.open(out / "cifar-vit" / "0.png").size == (32, 32)


def test_the_device_warns_about_a_digit_sent_to_a_cifar_model(cifar_model, tmp_path):
    from sklearn.datasets import load_digits

    repo, root, _ = cifar_model
    semlink(
        "sample", "--model-repository", str(repo), "--out", str(tmp_path), "--data-root", str(root)
    )
    photo = (tmp_path / "cifar-vit" / "0.png").read_bytes()
    digit = Image.fromarray((load_digits().images[0] / 16 * 255).astype(np.uint8)).resize((32, 32))
    buf = io.BytesIO()
    digit.save(buf, "PNG")
    settings = DeviceSettings(
        insecure=True, server="127.0.0.1:9", model_repository=repo, model_name="cifar-vit"
    )

    async def go() -> list[dict]:
        service = DeviceService(settings)
        transport = httpx.ASGITransport(app=create_app(service))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://device") as client:
                return [
                    (await client.post("/v1/classify", files={"image": ("x.png", data)})).json()
                    for data in (photo, buf.getvalue())
                ]
        finally:
            await service.close()

    like, unlike = asyncio.run(go())
    assert like["warning"] is None, like
    assert unlike["warning"] and "unlike the data this model was trained on" in unlike["warning"]
    assert "cifar10" in unlike["warning"]
