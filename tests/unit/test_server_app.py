"""The server's HTTP front before its models are loaded: live, but not ready."""

import asyncio

import httpx

from semlink.server.core import InferenceCore
from semlink.server.http_app import create_app
from semlink.server.settings import ServerSettings


def test_ready_is_503_with_retry_after_until_models_load(tiny_repository):
    core = InferenceCore(ServerSettings(model_repository=tiny_repository))
    transport = httpx.ASGITransport(app=create_app(core))

    async def go() -> None:
        async with httpx.AsyncClient(transport=transport, base_url="http://server") as client:
            assert (await client.get("/v2/health/live")).status_code == 200
            resp = await client.get("/v2/health/ready")
            assert resp.status_code == 503 and resp.headers["retry-after"] == "1"
            resp = await client.post("/v2/models/tiny-vit/infer", content=b"{}")
            assert resp.status_code == 503 and "loading" in resp.json()["error"]

    asyncio.run(go())


def test_missing_repository_names_the_layout(tmp_path):
    import asyncio

    import pytest

    core = InferenceCore(ServerSettings(model_repository=tmp_path / "none"))
    with pytest.raises(FileNotFoundError, match="<model>/<version>/manifest.json"):
        asyncio.run(core.load())


def test_models_serves_only_those_named_and_refuses_one_the_repository_lacks(tiny_repository):
    import pytest

    async def load(models: list[str]) -> InferenceCore:
        core = InferenceCore(ServerSettings(model_repository=tiny_repository, models=models))
        try:
            await core.load()
        finally:
            await core.close()
        return core

    assert set(asyncio.run(load(["tiny-jscc"])).models) == {"tiny-jscc"}
    assert set(asyncio.run(load([])).models) == {"tiny-vit", "tiny-jscc"}
    with pytest.raises(ValueError, match="--models names nope, which .* holds tiny-jscc, tiny-vit"):
        asyncio.run(load(["tiny-vit", "nope"]))
