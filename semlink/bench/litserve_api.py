"""The LitServe baseline's API, in a module of its own: LitServe pickles it into its worker
process, and only a module-level class pickles."""

from __future__ import annotations

import base64
from pathlib import Path

import litserve as ls

from semlink.bench.baselines import FullModel


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
