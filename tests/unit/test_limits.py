"""The HTTP limits shared by device and server: requests in flight per client, body size."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI, Request

from semlink.runtime import errors as http_errors


def app_with_limit(limit: int) -> tuple[FastAPI, asyncio.Event]:
    app = FastAPI()
    http_errors.install(app, max_body_bytes=100, max_concurrent_per_client=limit)
    gate = asyncio.Event()

    @app.get("/slow")
    async def slow() -> dict:
        await gate.wait()
        return {"ok": True}

    @app.get("/v2/health/live")
    async def live() -> dict:
        return {"live": True}

    @app.post("/echo")
    async def echo() -> dict:
        return {}

    return app, gate


def test_too_many_requests_in_flight_from_one_client_get_429():
    async def main() -> tuple[list[int], int, int, httpx.Response]:
        app, gate = app_with_limit(2)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            first = [asyncio.create_task(c.get("/slow")) for _ in range(2)]
            await asyncio.sleep(0.05)
            third = await c.get("/slow")
            health = await c.get("/v2/health/live")  # probes are never limited
            gate.set()
            done = [(await t).status_code for t in first]
            return done, third.status_code, health.status_code, third

    done, third_status, health, third = asyncio.run(main())
    assert done == [200, 200] and health == 200
    assert third_status == 429 and third.headers["retry-after"] == "1"
    assert "in flight" in third.json()["error"]


def test_body_over_the_limit_gets_413():
    app, _ = app_with_limit(0)

    async def main() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await c.post("/echo", content=b"x" * 101)

    resp = asyncio.run(main())
    assert resp.status_code == 413 and "101 bytes" in resp.json()["error"]


def test_a_body_without_a_length_is_stopped_at_the_limit_while_it_streams():
    """Chunked (no Content-Length): the app sees at most the limit, then the client is gone;
    the client gets 413."""
    app = FastAPI()
    http_errors.install(app, max_body_bytes=1000)
    seen: list[int] = []

    @app.post("/upload")
    async def upload(request: Request) -> dict:
        async for chunk in request.stream():
            seen.append(len(chunk))
        return {"read": sum(seen)}

    async def chunks():
        for _ in range(100):  # 100 x 100 bytes: ten times the limit
            yield b"x" * 100

    async def main() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await c.post("/upload", content=chunks())

    resp = asyncio.run(main())
    assert resp.status_code == 413 and "exceeds the limit of 1000" in resp.json()["error"]
    assert sum(seen) <= 1000  # the app never read past the limit
