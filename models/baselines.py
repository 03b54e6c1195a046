"""Baselines for semantic communication at equal channel uses (METHODS §2).

A budget of ``channel_uses`` complex symbols per source value at ``snr_db`` carries, digitally,
``bits = channel_uses * H * W * C * log2(1 + SNR)`` (ideal capacity-achieving code). The
baselines send the image, and the *same* classifier (the selector ViT on all tokens) reads what
arrives:

- ``jpeg``: the largest quality (1..95) whose JPEG file (Pillow, full headers) fits the bits;
  if none fits, the transmission fails and the answer is a guess (chance accuracy);
- ``raw-digital``: the largest square down-sampling whose 8-bit pixels fit, up-sampled back;
- ``raw-analog``: the largest square down-sampling whose pixels fit in the symbols (two real
  values per complex symbol), sent uncoded through AWGN at unit power, up-sampled back.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

from semlink.models.data import DIGITS_MEAN, DIGITS_STD
from semlink.runtime import channel

METHODS = ("jpeg", "raw-digital", "raw-analog")


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Normalised digits-canvas images (N, 1, H, W) -> uint8 pixels (N, H, W)."""
    raw = images[:, 0] * DIGITS_STD + DIGITS_MEAN
    return np.clip(np.rint(raw * 255.0), 0, 255).astype(np.uint8)


def from_uint8(pixels: np.ndarray) -> np.ndarray:
    return ((pixels.astype(np.float32) / 255.0 - DIGITS_MEAN) / DIGITS_STD)[:, None].astype(
        np.float32
    )


def _jpeg(img: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def jpeg_at_budget(img: np.ndarray, bits: float) -> np.ndarray | None:
    """Decoded JPEG at the largest quality that fits ``bits``, or None if quality 1 does not."""
    lo, hi, best = 1, 95, None
    while lo <= hi:  # file size grows with quality: binary search
        q = (lo + hi) // 2
        data = _jpeg(img, q)
        if len(data) * 8 <= bits:
            best, lo = data, q + 1
        else:
            hi = q - 1
    if best is None:
        return None
    with Image.open(io.BytesIO(best)) as im:
        return np.asarray(im.convert("L"))


def _resample(img: np.ndarray, size: int, back: int) -> np.ndarray:
    small = Image.fromarray(img).resize((size, size), Image.Resampling.BOX)
    return np.asarray(small.resize((back, back), Image.Resampling.BILINEAR))


def raw_digital(img: np.ndarray, bits: float) -> np.ndarray | None:
    size = math.isqrt(int(bits // 8))
    if size < 1:
        return None
    return _resample(img, min(size, img.shape[0]), img.shape[0])


def raw_analog(
    img: np.ndarray, symbols: int, snr_db: float, rng: np.random.Generator
) -> np.ndarray | None:
    size = min(math.isqrt(2 * symbols), img.shape[0])
    if size < 1:
        return None
    small = (
        np.asarray(
            Image.fromarray(img).resize((size, size), Image.Resampling.BOX), dtype=np.float64
        )
        / 255.0
    )
    flat = small.reshape(-1)
    mu, sd = flat.mean(), flat.std() + 1e-6
    x = (flat - mu) / sd  # unit power, real-valued symbols (imaginary parts carry the other half)
    half = (len(x) + 1) // 2
    re, im = np.zeros((1, half)), np.zeros((1, half))
    re[0, :] = x[:half]
    im[0, : len(x) - half] = x[half:]
    yr, yi = channel.awgn(re, im, snr_db, lambda s: rng.normal(size=s), power=1.0)
    rx = np.concatenate([yr[0], yi[0, : len(x) - half]]) * sd + mu
    small_rx = np.clip(rx.reshape(size, size) * 255.0, 0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(small_rx).resize(img.shape[::-1], Image.Resampling.BILINEAR))


def reconstruct(
    method: str, pixels: np.ndarray, channel_uses: float, snr_db: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Reconstructions of every image and a mask of those that got through (the rest are guesses)."""
    n, h, w = pixels.shape
    symbols = int(channel_uses * h * w)
    bits = channel.digital_capacity_bits(symbols, snr_db)
    rng = np.random.default_rng(seed)
    out = np.zeros_like(pixels)
    ok = np.zeros(n, bool)
    for i, img in enumerate(pixels):
        if method == "jpeg":
            rec = jpeg_at_budget(img, bits)
        elif method == "raw-digital":
            rec = raw_digital(img, bits)
        elif method == "raw-analog":
            rec = raw_analog(img, symbols, snr_db, rng)
        else:
            raise ValueError(f"unknown baseline {method!r}; choose one of {METHODS}")
        if rec is not None:
            out[i], ok[i] = rec, True
    return out, ok
