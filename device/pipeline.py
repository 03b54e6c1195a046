"""The device's models on ONNX Runtime: the head, and the tail for local fallback."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from models.data import DIGITS_MEAN, DIGITS_STD, IMAGENET_MEAN, IMAGENET_STD
from models.symbols import channel_uses, normalise, symbols_kept
from protocol.codec import TensorError, pack_tokens
from server.repository import ModelVersion, run_tail

log = logging.getLogger(__name__)


@dataclass
class Payload:
    """What one request sends, and what the device's own tail would read instead."""

    wire: dict[str, np.ndarray]  # named tensors for the server (plus ``indices``)
    local: np.ndarray  # float32 tail input, for the local fallback
    symbols_per_token: int | None = None  # JSCC only: m
    channel_uses: float | None = None  # JSCC only: k * m / (H * W * C)


class DevicePipeline:
    """Head (and, for local fallback, tail) of one model; plain-token or JSCC pipelines."""

    def __init__(self, model: ModelVersion) -> None:
        self.model = model
        self.jscc = model.manifest.get("jscc")
        self.payload_name = "symbols" if self.jscc else "tokens"
        self.head = model.session("head", threads=1)
        self.tail = model.session("tail", threads=1)  # local fallback: the whole model fits here

    def run_head(self, image: np.ndarray, budget: float) -> tuple[np.ndarray, np.ndarray]:
        """For one image (1, C, H, W): the kept tokens (1, k, d), or for JSCC their unnormalised
        symbols (1, k, 2 d_c), and the kept patch indices (1, k)."""
        payload, indices = self.head.run(
            [self.payload_name, "indices"],
            {"image": image, "alpha": np.array([budget], np.float32)},
        )
        return payload, indices

    def prepare(
        self, head_out: np.ndarray, indices: np.ndarray, rate: float, token_format: str
    ) -> Payload:
        """Packs the head's output for the wire at ``rate`` (JSCC: truncate to m symbols, normalise)."""
        idx = indices.astype(np.int16)  # positions < 32768: 2 bytes each, not 8
        if not self.jscc:
            packed = pack_tokens(head_out, token_format)
            wire = {
                "tokens": packed.tokens,
                **({"token_scale": packed.scale} if packed.scale is not None else {}),
            }
            return Payload({**wire, "indices": idx}, head_out)
        d_c = int(self.jscc["symbols"])
        m = symbols_kept(d_c, rate)
        re, im = normalise(
            head_out[..., :m], head_out[..., d_c : d_c + m], np.ones((1, 1, m), np.float32)
        )
        local = np.zeros_like(head_out)
        local[..., :m], local[..., d_c : d_c + m] = re, im
        dtype = np.float32 if token_format == "fp32" else np.float16
        symbols = np.concatenate([re, im], axis=-1).astype(dtype)
        c, h, w = self.model.image_shape
        return Payload(
            {"symbols": symbols, "indices": idx}, local, m, channel_uses(idx.shape[1], m, c * h * w)
        )

    def run_tail(self, local: np.ndarray) -> np.ndarray:
        """Logits (1, classes) computed on the device from :attr:`Payload.local`."""
        return run_tail(self.tail, local, np.ones(local.shape[:2], np.float32), self.payload_name)


def check_image(image: np.ndarray, image_shape: tuple[int, int, int]) -> np.ndarray:
    """The image as float32 (1, C, H, W), or a :class:`TensorError` naming the expected form."""
    expected = (1, *image_shape)
    if image.shape != expected:
        raise TensorError(
            f"input 'image' must have shape {list(expected)} (normalised FP32), got {list(image.shape)}"
        )
    image = image.astype(np.float32)
    if not np.isfinite(image).all():
        raise TensorError("input 'image' holds NaN or infinite values")
    return image


def decode_image(data: bytes, image_shape: tuple[int, int, int], max_pixels: int) -> np.ndarray:
    """A PNG/JPEG upload -> normalised (1, C, H, W), resized to the model's input."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > max_pixels:
                raise TensorError(
                    f"image of {img.width}x{img.height} exceeds the limit of {max_pixels} pixels"
                )
            c, h, w = image_shape
            resized = img.convert("L" if c == 1 else "RGB").resize(
                (w, h), Image.Resampling.BILINEAR
            )
            arr = np.asarray(resized, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as exc:
        raise TensorError(f"the upload is not a decodable PNG or JPEG image: {exc}") from None
    if c == 1:
        return ((arr - DIGITS_MEAN) / DIGITS_STD)[None, None].astype(np.float32)
    return ((arr - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)[None].astype(np.float32)
