"""The device's HTTP front on bad uploads: a 400 whose message a person can act on."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from semlink.device.http_app import create_app
from semlink.device.service import DeviceService
from semlink.device.settings import DeviceSettings


@pytest.fixture
def device() -> DeviceSettings:
    # no server behind it: answers are local (degraded), which is all these tests need
    return DeviceSettings(insecure=True, server="127.0.0.1:9")


def _post(settings: DeviceSettings, **kw) -> httpx.Response:
    async def go() -> httpx.Response:
        service = DeviceService(settings)  # its gRPC channel belongs to this event loop
        transport = httpx.ASGITransport(app=create_app(service))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://device") as client:
                return await client.post("/v1/classify", **kw)
        finally:
            await service.close()

    return asyncio.run(go())


def test_a_non_image_names_the_formats_not_a_python_object(device):
    r = _post(device, files={"image": ("x.png", b"not an image at all", "image/png")})
    assert r.status_code == 400
    message = r.json()["error"]
    assert "PNG or JPEG" in message and "object at" not in message and "BytesIO" not in message


def test_a_form_field_of_the_wrong_type_is_a_400(device):
    r = _post(
        device,
        files={"image": ("x.png", b"\x89PNG", "image/png")},
        data={"budget": "a lot"},
    )
    assert r.status_code == 400 and "budget" in r.json()["error"]
