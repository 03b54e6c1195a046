"""Images into a model's input: uploads decoded and normalised with the statistics the model's
manifest carries, and tensors checked against the model's input shape."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from semlink.protocol.codec import TensorError
from semlink.runtime.manifest import Manifest


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


# The geometry limits are the caller's (checked from the header before decoding); Pillow's own
# warning below its hard limit would only repeat them. Past Pillow's hard limit it raises, and we
# refuse.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

FORMATS = ("PNG", "JPEG")  # what an upload may be; anything else is refused before decoding
# Resizing first reduces by a whole factor (a box filter) while the image is over this many
# times the target: a 4095 x 4095 upload resizes in ~90 instead of ~115 ms here.
REDUCING_GAP = 3.0


@dataclass(frozen=True)
class ImageLimits:
    """What an upload's header may announce, each checked before anything is decoded. Every
    bound is a limit an image must stay below: one that reaches it is refused.

    Decoding costs time in the pixel count, and Pillow's resize also in the longest side (its
    filter weights: a 16,777,216 x 1 strip spent ~620 ms there holding the GIL, a square of as
    many pixels ~150 ms), so each is bounded, and the aspect ratio with them.
    """

    pixels: int = 4096 * 4096
    """An upload must have fewer pixels (width x height) than this."""
    side: int = 8192
    """Each side must be shorter than this (pixels)."""
    aspect: float = 16.0
    """The long side must be less than this many times the short side."""

    def check(self, width: int, height: int) -> None:
        """Raises :class:`TensorError` naming the limit (and its setting) that ``width`` x
        ``height`` reaches."""
        size = f"{width}x{height}"
        if width < 1 or height < 1:
            raise TensorError(f"image of {size} has no pixels; send a PNG or JPEG of some")
        if max(width, height) >= self.side:
            raise TensorError(
                f"image of {size} is too large: each side must be shorter than {self.side} "
                "pixels (max_image_side); scale it down before sending"
            )
        if max(width, height) >= self.aspect * min(width, height):
            raise TensorError(
                f"image of {size} is too elongated: the long side must be less than "
                f"{self.aspect:g} times the short side (max_image_aspect); crop it first"
            )
        if width * height >= self.pixels:
            raise TensorError(
                f"image of {size} ({width * height} pixels) is too large: an upload must have "
                f"fewer than {self.pixels} pixels (max_image_pixels); scale it down before sending"
            )


def decode_image(data: bytes, manifest: Manifest, limits: ImageLimits) -> np.ndarray:
    """A PNG/JPEG upload -> the model's normalised input (1, C, H, W), resized to it.

    The format and the geometry (:class:`ImageLimits`) are read from the header and checked
    before anything is decoded. CPU-bound: servers call it off their event loop.

    Raises:
        TensorError: not a PNG or JPEG, beyond ``limits``, or undecodable.
    """
    c, h, w = manifest.image_shape
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as img:  # reads the header only
            limits.check(img.width, img.height)
            resized = img.convert("L" if c == 1 else "RGB").resize(
                (w, h), Image.Resampling.BILINEAR, reducing_gap=REDUCING_GAP
            )
            pixels = np.asarray(resized, dtype=np.float32) / 255.0
    except TensorError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own limit, checked from the header
        raise TensorError(f"image refused as a decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        raise TensorError(
            f"the upload ({len(data)} bytes) is not a PNG or JPEG image; send one of {FORMATS}"
        ) from None
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt data of a known format
        raise TensorError(f"the upload is not a decodable PNG or JPEG image: {exc}") from None
    return manifest.normalisation.apply(pixels.reshape(h, w, c))
