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


@pytest.mark.parametrize("model", ["digits-vit", "digits-ee"])
def test_the_local_controller_answers_every_request_on_the_device(model):
    from semlink.models.data import load_digits_canvas

    data = load_digits_canvas("test")
    settings = DeviceSettings(
        insecure=True, server="127.0.0.1:9", model_name=model, controller="local"
    )

    async def go() -> list:
        service = DeviceService(settings)
        try:
            return [await service.classify(data.images[i : i + 1], {}) for i in range(20)]
        finally:
            await service.close()

    answers = asyncio.run(go())
    # never offloaded, so never degraded: the device answered by design, not for want of a server
    assert all(a.exit == "device" and not a.degraded and a.payload_bytes == 0 for a in answers)
    assert all(a.budget == 1.0 for a in answers)  # every token: the whole model
    if model == "digits-ee":  # every device block ran; the last device exit answered
        assert all([e["action"] for e in a.exits] == ["continue"] * 3 + ["exit"] for a in answers)
    right = sum(a.label == y for a, y in zip(answers, data.labels[:20], strict=True))
    assert right >= 17


def test_answer_parameters_flatten_every_scalar_and_group_but_not_the_label() -> None:
    from semlink.device.answer import Answer

    a = Answer(
        request_id="r1", label=3, probabilities=[0.1] * 10, exit="server", degraded=True,
        degraded_reason=None, option="s2:a0.25", budget=0.25, rate=None, split=2, tokens_sent=16,
        symbols_per_token=None, channel_uses=None, snr_db=20.0, kept_indices=[4, 9],
        payload_bytes=1900, request_bytes=2000, reply_bytes=150, deadline_ms=100.0,
        on_time=True, device_cpu_ms=1.5, queued_ms=0.2, channel={"rtt_ms": 20.0},
        controller={"z": 0.5}, timing_ms={"total_ms": 2.0}, server={"tries": 2},
        exits=[{"exit": 0, "confidence": 0.51234, "action": "continue"},
               {"exit": 1, "confidence": 0.9, "action": "offload"}],
        input_distance=1.5, warning=None,
    )  # fmt: skip
    p = a.parameters()
    scalars = {k: v for k, v in a.as_dict().items() if not isinstance(v, (list, dict))}
    del scalars["label"]  # the label is an output tensor, not a parameter
    assert {k: p[k] for k in scalars} == scalars
    assert p["kept_indices"] == "4,9" and p["exit_index"] == 1
    assert p["exit_confidences"] == "0.5123,0.9000" and p["exit_actions"] == "continue,offload"
    assert (p["channel.rtt_ms"], p["controller.z"], p["total_ms"], p["server_tries"]) == (
        20.0, 0.5, 2.0, 2,
    )  # fmt: skip
    assert "label" not in p and "probabilities" not in p and "exits" not in p
