"""The server's HTTP front before its models are loaded: live, but not ready."""

from fastapi.testclient import TestClient

from semlink.server.core import InferenceCore
from semlink.server.http_app import create_app
from semlink.server.settings import ServerSettings


def test_ready_is_503_with_retry_after_until_models_load(tiny_repository):
    core = InferenceCore(ServerSettings(model_repository=tiny_repository))
    client = TestClient(create_app(core))
    assert client.get("/v2/health/live").status_code == 200
    resp = client.get("/v2/health/ready")
    assert resp.status_code == 503 and resp.headers["retry-after"] == "1"
    resp = client.post("/v2/models/tiny-vit/infer", content=b"{}")
    assert resp.status_code == 503 and "loading" in resp.json()["error"]


def test_missing_repository_names_the_layout(tmp_path):
    import asyncio

    import pytest

    core = InferenceCore(ServerSettings(model_repository=tmp_path / "none"))
    with pytest.raises(FileNotFoundError, match="<model>/<version>/manifest.json"):
        asyncio.run(core.load())
