"""What a user would run instead of semlink, for ``semlink bench compare``: upload the camera's
JPEG to a server that runs the whole model on ONNX Runtime, behind a plain FastAPI app or
LitServe. ``semlink baseline-server plain|litserve`` starts one.

The model is the one semlink's split pipelines complete (the same backbone and weights, every
token, head then tail in one process), so the baselines differ from semlink only in what crosses
the link and where the model runs. With TLS material the baseline serves HTTPS (mutual TLS with a
client CA), like semlink's own device -> server hop.
"""

from __future__ import annotations

import io
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from PIL import Image

from semlink.runtime.images import ImageLimits, decode_image
from semlink.runtime.manifest import Normalisation
from semlink.runtime.pipelines import make_pipeline
from semlink.runtime.repository import resolve, scan

JPEG_QUALITY = 90
LIMITS = ImageLimits()  # the device's defaults: the baselines take what the device takes


def to_jpeg(image: np.ndarray, norm: Normalisation, quality: int = JPEG_QUALITY) -> bytes:
    """A normalised image (C, H, W) as the camera's JPEG at ``quality`` (grey for one channel,
    RGB for three), its pixels recovered with the model's own statistics ``norm``."""
    pixels = norm.invert(image)  # (H, W, C) uint8
    buf = io.BytesIO()
    Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels).save(
        buf, "JPEG", quality=quality
    )
    return buf.getvalue()


class FullModel:
    """The whole network on ONNX Runtime: decode the upload, run every token through."""

    def __init__(self, repository: Path, model: str) -> None:
        self.model = resolve(scan(repository), model)
        self.pipeline = make_pipeline(self.model)
        self.pipeline.open(self.pipeline.device_graphs() + self.pipeline.server_graphs())

    def predict(self, upload: bytes) -> int:
        """The label of one JPEG/PNG upload from the whole model: the pipeline's device half
        with every token kept (budget 1, fp32; an early-exit network through all its device
        blocks), then its server half, in this one process."""
        image = decode_image(upload, self.model.manifest, LIMITS)
        return int(self.pipeline.whole(image)[0].argmax())


@dataclass(frozen=True)
class Tls:
    """HTTPS for a baseline server: its certificate and key, and the CA whose client
    certificates it admits (mutual TLS) when given."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def uvicorn_args(self) -> dict[str, Any]:
        """uvicorn's (and LitServe's) keyword arguments for this TLS setting."""
        args: dict[str, Any] = {"ssl_certfile": str(self.cert), "ssl_keyfile": str(self.key)}
        if self.client_ca is not None:
            args |= {"ssl_ca_certs": str(self.client_ca), "ssl_cert_reqs": ssl.CERT_REQUIRED}
        return args


def serve_plain(port: int, repository: Path, model: str, tls: Tls | None = None) -> None:
    """``POST /predict`` with the JPEG as the body -> ``{"label": int}``."""
    full = FullModel(repository, model)
    app = FastAPI(title="baseline: JPEG upload, full model")

    @app.get("/health")
    async def health() -> dict:
        return {"ok": True}

    @app.post("/predict")
    async def predict(request: Request) -> dict:
        return {"label": full.predict(await request.body())}

    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        **(tls.uvicorn_args() if tls else {}),
    )
