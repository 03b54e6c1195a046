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

from semlink.models.data import DIGITS_MEAN, DIGITS_STD
from semlink.runtime.images import decode_image
from semlink.runtime.pipelines import WireOptions, make_pipeline
from semlink.runtime.repository import resolve, scan

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
        self.model = resolve(scan(repository), model)
        self.pipeline = make_pipeline(self.model)
        self.pipeline.open(self.pipeline.device_graphs())

    def predict(self, upload: bytes) -> int:
        """The label of one JPEG/PNG upload, every token kept (budget 1)."""
        image = decode_image(upload, self.model.manifest, MAX_PIXELS)
        stretch = self.pipeline.run_stretch(0, image, 1.0, None)
        offload = self.pipeline.offload(stretch, 1.0, 1.0, WireOptions("fp32"))
        return int(self.pipeline.answer_locally(stretch, offload).argmax())


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
