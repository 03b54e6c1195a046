"""Uploads: what a header may announce (each limit holds from its value on, as the settings and
the README say), and the decode pool that keeps waiting for a decoder inside the deadline
(issue: hardening, second round)."""

from __future__ import annotations

import asyncio
import io
import threading
import time

import pytest
from PIL import Image

from semlink.bench.hostile import blank_png, png_header
from semlink.device.decoding import DecodePool
from semlink.protocol.codec import TensorError
from semlink.runtime.errors import Late
from semlink.runtime.images import ImageLimits, decode_image
from semlink.runtime.repository import DEFAULT_REPOSITORY, resolve, scan

MANIFEST = resolve(scan(DEFAULT_REPOSITORY), "digits-vit").manifest
LIMITS = ImageLimits()  # the device's defaults


@pytest.mark.parametrize(
    ("width", "height", "setting"),
    [
        (4096, 4096, "max_image_pixels"),  # exactly the pixel limit: refused, as every limit
        (8192, 1024, "max_image_side"),
        (1024, 8192, "max_image_side"),
        (16_777_216, 1, "max_image_side"),  # the strip of the issue: 4096^2 pixels in one row
        (4096, 256, "max_image_aspect"),  # 16:1
        (256, 4096, "max_image_aspect"),
    ],
)
def test_each_limit_refuses_from_its_value_on(width, height, setting):
    with pytest.raises(TensorError, match=setting):
        LIMITS.check(width, height)


@pytest.mark.parametrize(
    ("width", "height"), [(4095, 4095), (8191, 1024), (4095, 256), (15, 1), (1, 15), (1, 1)]
)
def test_just_inside_every_limit_passes(width, height):
    LIMITS.check(width, height)


def test_the_limits_are_read_from_the_header_before_decoding():
    """A strip whose header announces 4096^2 pixels in one row (a real, decodable PNG of 15 kB
    that took ~620 ms to resize, holding the GIL): refused in the time it takes to read a
    header. And an image exactly at the pixel limit is refused, not decoded."""
    for width, height in ((16_777_216, 1), (4096, 4096)):
        png = blank_png(width, height)
        t0 = time.perf_counter()
        with pytest.raises(TensorError, match="too large"):
            decode_image(png, MANIFEST, LIMITS)
        assert time.perf_counter() - t0 < 0.05, (width, height)
    bomb = png_header(2**31 - 1, 1)  # past Pillow's own bomb limit too: named, never a crash
    with pytest.raises(TensorError, match="pixels"):
        decode_image(bomb, MANIFEST, LIMITS)


def test_an_image_just_inside_the_limits_decodes():
    buf = io.BytesIO()
    Image.new("L", (4095, 4095), 128).save(buf, "PNG")
    image = decode_image(buf.getvalue(), MANIFEST, LIMITS)
    assert image.shape == (1, *MANIFEST.image_shape)


def test_a_job_that_cannot_start_before_its_deadline_is_late_at_once():
    """One decoder, held 1 s by a job: a second job with a deadline of 200 ms is answered
    :class:`Late` at its deadline, not after the queue; a job without a deadline waits."""
    release = threading.Event()

    async def go() -> tuple[float, str, str]:
        pool = DecodePool(1)
        try:
            first = asyncio.ensure_future(pool.run(release.wait, 5.0))
            await asyncio.sleep(0.05)
            started = time.perf_counter()
            with pytest.raises(Late) as late:
                await pool.run_by(started, 200.0, time.sleep, 0)
            waited = time.perf_counter() - started
            asyncio.get_running_loop().call_later(0.3, release.set)
            patient = await pool.run(lambda: "ran")
            await first
            return waited, str(late.value), patient
        finally:
            release.set()
            pool.close()

    waited, message, patient = asyncio.run(go())
    assert 0.19 < waited < 0.5, waited
    assert "deadline of 200 ms" in message and "1 decoders" in message
    assert patient == "ran"


def test_a_job_already_past_its_deadline_does_not_wait_for_a_busy_decoder():
    """A job whose deadline has passed is :class:`Late` at once when every decoder is busy (it
    never joins the queue); a free decoder starts any job at once, as a free device does."""
    release = threading.Event()

    async def go() -> tuple[float, int]:
        pool = DecodePool(1)
        try:
            first = asyncio.ensure_future(pool.run(release.wait, 5.0))
            await asyncio.sleep(0.05)
            asked = time.perf_counter()
            with pytest.raises(Late):
                await pool.run_by(asked - 1.0, 500.0, time.sleep, 0)
            refused_s = time.perf_counter() - asked
            release.set()
            await first
            return refused_s, await pool.run_by(time.perf_counter() - 1.0, 500.0, lambda: 7)
        finally:
            release.set()
            pool.close()

    refused_s, ran = asyncio.run(go())
    assert refused_s < 0.1, refused_s
    assert ran == 7
