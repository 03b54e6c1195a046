"""Baselines for semantic communication at equal channel uses (docs/methods.md#jscc).

A budget of ``channel_uses`` complex symbols per source value at ``snr_db`` carries, digitally,
``bits = channel_uses * H * W * C * log2(1 + SNR)`` (ideal capacity-achieving code). Images are
uint8 pixels, ``(N, H, W)`` grey or ``(N, H, W, 3)`` colour (:func:`to_uint8`). The
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
from collections.abc import Sequence

import numpy as np
from PIL import Image

from semlink.models.data import DIGITS_MEAN, DIGITS_STD
from semlink.runtime import channel

METHODS = ("jpeg", "raw-digital", "raw-analog")


def _stats(
    channels: int, mean: Sequence[float] | None, std: Sequence[float] | None
) -> tuple[np.ndarray, np.ndarray]:
    m = np.asarray(mean if mean is not None else [DIGITS_MEAN] * channels, np.float32)
    s = np.asarray(std if std is not None else [DIGITS_STD] * channels, np.float32)
    return m.reshape(1, channels, 1, 1), s.reshape(1, channels, 1, 1)


def to_uint8(
    images: np.ndarray, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> np.ndarray:
    """Normalised images (N, C, H, W) -> uint8 pixels, (N, H, W) for one channel and
    (N, H, W, C) otherwise; ``mean``/``std`` per channel (default: digits-canvas's)."""
    m, s = _stats(images.shape[1], mean, std)
    raw = np.clip(np.rint((images * s + m) * 255.0), 0, 255).astype(np.uint8)
    return raw[:, 0] if raw.shape[1] == 1 else raw.transpose(0, 2, 3, 1)


def from_uint8(
    pixels: np.ndarray, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> np.ndarray:
    """The inverse of :func:`to_uint8`: uint8 pixels -> normalised float32 (N, C, H, W)."""
    chw = pixels[:, None] if pixels.ndim == 3 else pixels.transpose(0, 3, 1, 2)
    m, s = _stats(chw.shape[1], mean, std)
    return ((chw.astype(np.float32) / 255.0 - m) / s).astype(np.float32)


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
        return np.asarray(im.convert("L" if img.ndim == 2 else "RGB"))


def _resample(img: np.ndarray, size: int, back: int) -> np.ndarray:
    small = Image.fromarray(img).resize((size, size), Image.Resampling.BOX)
    return np.asarray(small.resize((back, back), Image.Resampling.BILINEAR))


def _channels(img: np.ndarray) -> int:
    return 1 if img.ndim == 2 else img.shape[2]


def raw_digital(img: np.ndarray, bits: float) -> np.ndarray | None:
    size = math.isqrt(int(bits // (8 * _channels(img))))
    if size < 1:
        return None
    return _resample(img, min(size, img.shape[0]), img.shape[0])


def raw_analog(
    img: np.ndarray, symbols: int, snr_db: float, rng: np.random.Generator
) -> np.ndarray | None:
    size = min(math.isqrt(2 * symbols // _channels(img)), img.shape[0])
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
    small_rx = np.clip(rx.reshape(small.shape) * 255.0, 0, 255).astype(np.uint8)
    back = (img.shape[1], img.shape[0])
    return np.asarray(Image.fromarray(small_rx).resize(back, Image.Resampling.BILINEAR))


def reconstruct(
    method: str, pixels: np.ndarray, channel_uses: float, snr_db: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Reconstructions of every image and a mask of those that got through (the rest are guesses)."""
    n, h, w = pixels.shape[:3]
    symbols = int(channel_uses * h * w * (1 if pixels.ndim == 3 else pixels.shape[3]))
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
