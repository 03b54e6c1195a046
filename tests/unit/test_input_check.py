"""An input far from the training data is visible in the answer: a distance and a warning, fitted
on the validation split, quiet on the test split (as tensors and as uploads)."""

from __future__ import annotations

import asyncio
import io

import httpx
import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits, load_sample_image

from semlink.device.http_app import create_app
from semlink.device.service import DeviceService
from semlink.device.settings import DeviceSettings
from semlink.models.data import load_digits_canvas
from semlink.runtime.images import ImageLimits, decode_image
from semlink.runtime.repository import DEFAULT_REPOSITORY, resolve, scan

MODEL = resolve(scan(DEFAULT_REPOSITORY), "digits-vit")
CHECK = MODEL.manifest.input_check


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def full_frame_digit() -> bytes:
    """The obvious first try: a scikit-learn digit scaled to the whole canvas."""
    digit = (load_digits().images[0] / 16 * 255).astype(np.uint8)
    return png(np.array(Image.fromarray(digit).resize((48, 48))))


def test_the_test_split_is_in_distribution_as_tensors_and_as_uploads():
    assert CHECK is not None
    test = load_digits_canvas("test")
    tensors = np.array([CHECK.distance(x) for x in test.images])
    norm = MODEL.manifest.normalisation
    uploads = np.array(
        [
            CHECK.distance(
                decode_image(png(norm.invert(x)[..., 0]), MODEL.manifest, ImageLimits())[0]
            )
            for x in test.images
        ]
    )
    assert (tensors > CHECK.threshold).mean() <= 0.02
    assert (uploads > CHECK.threshold).mean() <= 0.02


@pytest.mark.parametrize(
    "upload",
    [
        full_frame_digit(),
        png(load_sample_image("china.jpg")),
        png(np.zeros((48, 48), np.uint8)),
    ],
    ids=["full-frame digit", "photograph", "blank"],
)
def test_inputs_unlike_the_training_data_are_flagged(upload):
    assert (
        CHECK.distance(decode_image(upload, MODEL.manifest, ImageLimits())[0]) > 2 * CHECK.threshold
    )


def test_the_answer_carries_the_warning():
    async def go() -> dict:
        service = DeviceService(DeviceSettings(insecure=True, server="127.0.0.1:9"))
        transport = httpx.ASGITransport(app=create_app(service))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://d") as client:
                r = await client.post(
                    "/v1/classify", files={"image": ("d.png", full_frame_digit())}
                )
                return r.json()
        finally:
            await service.close()

    answer = asyncio.run(go())
    assert answer["input_distance"] > CHECK.threshold
    assert "unlike the data this model was trained on" in answer["warning"]


def test_features_are_the_statistics_of_a_float64_copy():
    from semlink.runtime.input_check import features

    rng = np.random.default_rng(0)
    images = [load_digits_canvas("val").images[0], rng.normal(0.5, 1.5, (3, 32, 32))]
    for image in (x.astype(np.float32) for x in images):
        x = image.astype(np.float64)
        edges = np.abs(np.diff(x, axis=-1)).mean() + np.abs(np.diff(x, axis=-2)).mean()
        want = [x.mean(), x.std(), (x > 2).mean(), (x < -2).mean(), edges]
        assert features(image) == pytest.approx(want, rel=1e-6)
    # a known image: half the pixels at 3 (bright), half at -3 (dark), in vertical stripes
    stripes = np.tile(np.array([3.0, -3.0], np.float32), (1, 4, 2))
    assert features(stripes) == pytest.approx([0.0, 3.0, 0.5, 0.5, 6.0])
