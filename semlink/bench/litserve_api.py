"""The LitServe baseline: its API in a module of its own (LitServe pickles it into its worker
process, and only a module-level class pickles) and the server that runs it."""

from __future__ import annotations

import base64
from pathlib import Path

import litserve as ls

from semlink.bench.baselines import FullModel, Tls


class JpegAPI(ls.LitAPI):
    """``{"image": base64 JPEG}`` -> ``{"label": int}`` from the whole model."""

    def __init__(self, repository: Path, model: str) -> None:
        super().__init__()
        self.repository, self.model_name = repository, model

    def setup(self, device: str) -> None:
        self.model = FullModel(self.repository, self.model_name)

    def decode_request(self, request: dict) -> bytes:
        return base64.b64decode(request["image"])

    def predict(self, upload: bytes) -> int:
        return self.model.predict(upload)

    def encode_response(self, label: int) -> dict:
        return {"label": label}


def serve_litserve(port: int, repository: Path, model: str, tls: Tls | None = None) -> None:
    """LitServe's ``POST /predict`` with ``{"image": base64 JPEG}`` -> ``{"label": int}``,
    on HTTPS when ``tls`` is given (LitServe hands the settings to uvicorn)."""
    server = ls.LitServer(JpegAPI(repository, model), accelerator="cpu", workers_per_device=1)
    server.run(
        host="127.0.0.1",
        port=port,
        generate_client_file=False,
        log_level="warning",
        **(tls.uvicorn_args() if tls else {}),
    )
