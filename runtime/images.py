"""Images into a model's input: uploads decoded and normalised with the statistics the model's
manifest carries, and tensors checked against the model's input shape."""

from __future__ import annotations

import io
import warnings

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


# The pixel limit is the caller's (checked from the header before decoding); Pillow's own warning
# below its hard limit would only repeat it. Past Pillow's hard limit it raises, and we refuse.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

FORMATS = ("PNG", "JPEG")  # what an upload may be; anything else is refused before decoding


def decode_image(data: bytes, manifest: Manifest, max_pixels: int) -> np.ndarray:
    """A PNG/JPEG upload -> the model's normalised input (1, C, H, W), resized to it.

    The format and the pixel count are read from the header and checked before anything is
    decoded. CPU-bound: servers call it off their event loop.

    Raises:
        TensorError: not a PNG or JPEG, over ``max_pixels`` pixels, or undecodable.
    """
    c, h, w = manifest.image_shape
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as img:  # reads the header only
            if img.width * img.height > max_pixels:
                raise TensorError(
                    f"image of {img.width}x{img.height} exceeds the limit of {max_pixels} pixels"
                )
            resized = img.convert("L" if c == 1 else "RGB").resize(
                (w, h), Image.Resampling.BILINEAR
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
