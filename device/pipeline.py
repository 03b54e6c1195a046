"""The device's models on ONNX Runtime: the head, and the tail for local fallback."""

from __future__ import annotations

import io
import logging

import numpy as np
from PIL import Image, UnidentifiedImageError

from models.data import DIGITS_MEAN, DIGITS_STD, IMAGENET_MEAN, IMAGENET_STD
from protocol.codec import TensorError
from server.repository import ModelVersion, run_tail

log = logging.getLogger(__name__)


class DevicePipeline:
    def __init__(self, model: ModelVersion) -> None:
        self.model = model
        self.head = model.session("head", threads=1)
        self.tail = model.session(
            "tail", threads=1
        )  # local fallback: the whole model fits on the device

    def run_head(self, image: np.ndarray, budget: float) -> tuple[np.ndarray, np.ndarray]:
        """Kept tokens (1, 1+k, d) float32 and their patch indices (1, k) for one image (1, C, H, W)."""
        tokens, indices = self.head.run(
            ["tokens", "indices"], {"image": image, "alpha": np.array([budget], np.float32)}
        )
        return tokens, indices

    def run_tail(self, tokens: np.ndarray) -> np.ndarray:
        """Logits (1, classes) computed on the device."""
        return run_tail(self.tail, tokens, np.ones(tokens.shape[:2], np.float32))

    def check_image(self, image: np.ndarray) -> np.ndarray:
        expected = (1, *self.model.image_shape)
        if image.shape != expected:
            raise TensorError(
                f"input 'image' must have shape {list(expected)} (normalised FP32), got {list(image.shape)}"
            )
        image = image.astype(np.float32)
        if not np.isfinite(image).all():
            raise TensorError("input 'image' holds NaN or infinite values")
        return image

    def decode_image(self, data: bytes, max_pixels: int) -> np.ndarray:
        """A PNG/JPEG upload -> normalised (1, C, H, W), resized to the model's input."""
        try:
            with Image.open(io.BytesIO(data)) as img:
                if img.width * img.height > max_pixels:
                    raise TensorError(
                        f"image of {img.width}x{img.height} exceeds the limit of {max_pixels} pixels"
                    )
                c, h, w = self.model.image_shape
                resized = img.convert("L" if c == 1 else "RGB").resize(
                    (w, h), Image.Resampling.BILINEAR
                )
                arr = np.asarray(resized, dtype=np.float32) / 255.0
        except (UnidentifiedImageError, OSError) as exc:
            raise TensorError(f"the upload is not a decodable PNG or JPEG image: {exc}") from None
        if c == 1:
            return ((arr - DIGITS_MEAN) / DIGITS_STD)[None, None].astype(np.float32)
        return ((arr - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)[None].astype(np.float32)
