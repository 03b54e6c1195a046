"""Prometheus /metrics on device, server and link reflect the requests that flowed."""

import httpx
import numpy as np

from semlink.protocol.http_codec import build_infer_request


def _metrics(url: str) -> str:
    resp = httpx.get(url, timeout=5)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    return resp.text


def _value(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_metrics_count_what_flowed(stack):
    before = _value(
        _metrics(f"{stack.device_url}/metrics"),
        'semlink_device_requests_total{model="tiny-vit",outcome="server"}',
    )
    for i in range(3):
        body, headers = build_infer_request(
            {"image": np.zeros((1, 1, 48, 48), np.float32)}, {"budget": 0.25}, f"m{i}"
        )
        assert (
            httpx.post(stack.infer_url(), content=body, headers=headers, timeout=30).status_code
            == 200
        )
    device = _metrics(f"{stack.device_url}/metrics")
    assert (
        _value(device, 'semlink_device_requests_total{model="tiny-vit",outcome="server"}')
        == before + 3
    )
    assert _value(device, "semlink_device_tokens_sent_total") >= 27
    assert "semlink_device_request_duration_seconds_bucket" in device
    assert _value(device, "semlink_device_link_bandwidth_bits_per_second") > 0
    server = _metrics(f"{stack.server_url}/metrics")
    assert _value(server, 'semlink_server_requests_total{model="tiny-vit",outcome="ok"}') >= 3
    assert "semlink_server_batch_size_bucket" in server
    link = _metrics(f"http://127.0.0.1:{stack.ports['state']}/metrics")
    assert _value(link, 'semlink_link_delivered_bytes_total{direction="uplink"}') > 0
    assert "semlink_link_snr_db 20.0" in link
