"""What a user would run instead of semlink, for ``semlink bench compare``: upload the camera's
JPEG to a server that runs the whole model on ONNX Runtime, behind a plain FastAPI app or
LitServe. ``semlink baseline-server plain|litserve`` starts one.

The model is the shipped one at full budget (every token, head then tail in one process), so the
baselines differ from semlink only in what crosses the link and where the model runs.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from PIL import Image

from device.pipeline import DevicePipeline, decode_image
from models.data import DIGITS_MEAN, DIGITS_STD
from server.repository import resolve, scan

JPEG_QUALITY = 90
MAX_PIXELS = 4096 * 4096


def to_jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """A normalised digits-canvas image (1, H, W) as the camera's JPEG (grey, 8 bits)."""
    canvas = np.clip(image[0] * DIGITS_STD + DIGITS_MEAN, 0.0, 1.0)
    buf = io.BytesIO()
    Image.fromarray((canvas * 255.0).round().astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


class FullModel:
    """The whole network on ONNX Runtime: decode the upload, run every token through."""

    def __init__(self, repository: Path, model: str) -> None:
        version = resolve(scan(repository), model)
        self.pipeline = DevicePipeline(version)
        self.image_shape = version.image_shape

    def predict(self, upload: bytes) -> int:
        image = decode_image(upload, self.image_shape, MAX_PIXELS)
        tokens, _ = self.pipeline.run_head(image, 1.0)
        return int(self.pipeline.run_tail(tokens).argmax())


def serve_plain(port: int, repository: Path, model: str) -> None:
    """``POST /predict`` with the JPEG as the body -> ``{"label": int}``."""
    full = FullModel(repository, model)
    app = FastAPI(title="baseline: JPEG upload, full model")

    @app.get("/health")
    async def health() -> dict:
        return {"ok": True}

    @app.post("/predict")
    async def predict(request: Request) -> dict:
        return {"label": full.predict(await request.body())}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def serve_litserve(port: int, repository: Path, model: str) -> None:
    """LitServe's ``POST /predict`` with ``{"image": base64 JPEG}`` -> ``{"label": int}``."""
    import litserve as ls

    from semlink.bench.litserve_api import JpegAPI

    server = ls.LitServer(JpegAPI(repository, model), accelerator="cpu", workers_per_device=1)
    server.run(host="127.0.0.1", port=port, generate_client_file=False, log_level="warning")
