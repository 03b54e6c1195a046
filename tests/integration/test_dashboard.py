"""The device's live dashboard in a real headless Chromium (Debian's package, installed here if
missing): the page loads with no outside asset, shows the requests as they flow, and is
screenshotted."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest

from semlink.protocol.http_codec import build_infer_request
from tests.conftest import may_change_machine, system_skip_reason

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


@pytest.fixture(scope="module")
def chromium() -> str:
    found = shutil.which("chromium")
    if found:
        return found
    if not may_change_machine():
        pytest.skip(system_skip_reason("no chromium"))
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("no chromium, and installing Debian's package needs root and apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        if proc.returncode != 0:
            pytest.skip(f"could not install chromium: {proc.stderr[-500:]}")
    return shutil.which("chromium") or pytest.fail("chromium installed but not on PATH")


def browse(chromium: str, url: str, profile: Path, *args: str) -> str:
    """Loads ``url`` and lets its scripts run for a few seconds; returns stdout (the DOM with
    ``--dump-dom``)."""
    proc = subprocess.run(
        [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "--window-size=1280,1000",
            "--virtual-time-budget=4000",
            *args,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def text_of(dom: str, element_id: str) -> str:
    found = re.search(rf'id="{element_id}"[^>]*>([^<]*)<', dom)
    assert found, f"#{element_id} not in the page"
    return found.group(1)


def send(stack, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for i in range(n):
        image = rng.normal(size=(1, 1, 48, 48)).astype(np.float32)
        body, headers = build_infer_request({"image": image}, {"budget": 0.25, "label": i % 10})
        resp = httpx.post(
            f"{stack.device_url}/v2/models/tiny-vit/infer",
            content=body,
            headers=headers,
            timeout=30,
        )
        assert resp.status_code == 200, resp.text


def test_page_is_self_contained(stack):
    page = httpx.get(f"{stack.device_url}/dashboard").text
    assert "<canvas" in page
    assert not re.search(r"(src|href)=\"(https?:)?//", page), "the page loads an outside asset"
    assert "https://" not in page and "http://" not in page


def test_state_reports_requests_with_their_kept_patches(stack):
    before = httpx.get(f"{stack.device_url}/dashboard/state").json()["counts"]["requests"]
    send(stack, 3, seed=5)
    state = httpx.get(f"{stack.device_url}/dashboard/state").json()
    assert state["counts"]["requests"] == before + 3
    last = state["recent"][0]
    assert len(last["kept"]) == last["tokens_sent"] == 9  # ceil(0.25 * 36)
    assert all(0 <= k < state["grid"] ** 2 for k in last["kept"])
    assert last["truth"] == 2 and last["image_png"]
    assert state["labelled"] >= 3 and 0.0 <= state["accuracy"] <= 1.0
    # on time: right and within the deadline; every frame so far answered in time
    assert 0.0 <= state["on_time_accuracy"] <= state["accuracy"]
    assert state["within_deadline"] == 1.0
    assert state["latency_ms"]["p50"] > 0
    assert state["link"] and state["link"][-1]["bandwidth_bps"] > 0


def test_label_out_of_range_is_a_client_error(stack):
    image = np.zeros((1, 1, 48, 48), np.float32)
    body, headers = build_infer_request({"image": image}, {"label": 10})
    resp = httpx.post(
        f"{stack.device_url}/v2/models/tiny-vit/infer", content=body, headers=headers, timeout=30
    )
    assert resp.status_code == 400 and "label" in resp.json()["error"]


def test_chromium_renders_the_page_and_follows_the_requests(stack, chromium, tmp_path):
    url = f"{stack.device_url}/dashboard"
    first = int(text_of(browse(chromium, url, tmp_path / "a", "--dump-dom"), "requests"))
    send(stack, 4, seed=6)
    dom = browse(chromium, url, tmp_path / "b", "--dump-dom")
    assert int(text_of(dom, "requests")) == first + 4
    assert text_of(dom, "accuracy").endswith("%")
    assert text_of(dom, "bandwidth").endswith("Mbit/s")
    assert dom.count('class="req"') >= 4  # one tile per recent request, patches drawn over it
    shot = tmp_path / "dashboard.png"
    browse(chromium, url, tmp_path / "c", f"--screenshot={shot}")
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
    artifacts = os.environ.get("SEMLINK_TEST_ARTIFACTS")
    if artifacts:
        shutil.copy(shot, Path(artifacts) / "dashboard.png")
