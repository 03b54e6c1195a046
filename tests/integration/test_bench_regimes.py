"""`semlink bench regimes --quick`: the regime map's few-minute subset on the digits-canvas
fixture (digits-split), every cell predicted and some measured in real processes under CPU
quotas; the JSON keeps the shape the issue fixed (its keys are a contract)."""

from __future__ import annotations

import json

import pytest

from semlink.runtime.cpu_quota import quota_available

pytestmark = pytest.mark.slow

KINDS = {"device", "offload", "jpeg", "adaptive", "planner", "oracle"}
STRATEGY_KEYS = {
    "kind",
    "on_time",
    "ci95",
    "n",
    "answered_accuracy",
    "within_deadline",
    "p50_ms",
    "p95_ms",
    "bytes_up",
    "device_cpu_ms",
    "energy_mj",
    "predicted_on_time",
}
TARGETS = {
    "offloading_pays",
    "adaptivity_finds_every_regime",
    "adaptivity_pays_over_time",
    "never_worse_than_the_picture",
}


def test_the_quick_map_has_the_contracted_shape(tmp_path):
    if not quota_available():
        pytest.skip("no write access to the cgroup file system: no device class to run under")
    from semlink.cli import main

    out = tmp_path / "regimes.json"
    assert main(["bench", "regimes", "--quick", "--out", str(tmp_path), "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert set(r["headline"]) == {"model", "profile", "fps", "deadline_ms"}
    for p in r["profiles"].values():
        assert {"cpu_share", "period_us", "gflops", "device_class", "source"} <= set(p)
        assert 0 < p["cpu_share"] <= 1 and p["period_us"] >= 1000
        assert p["gflops"] > 0 and set(p["gflops_by_model"]) == {"digits-split"}
    assert len(r["cells"]) == 2 * 2 * 2  # profiles x links x frame rates, one deadline
    for cell in r["cells"]:
        assert {"model", "profile", "link", "fps", "deadline_ms", "measured"} <= set(cell)
        assert {s["kind"] for s in cell["strategies"].values()} <= KINDS
        for s in cell["strategies"].values():
            assert set(s) >= STRATEGY_KEYS, set(s) ^ STRATEGY_KEYS
            assert 0.0 <= s["on_time"] <= 1.0 and s["ci95"][0] <= s["on_time"] <= s["ci95"][1]
        assert set(cell["paired"]) <= {
            "best_adaptive_minus_best_fixed",
            "best_offload_minus_best_device",
            "best_adaptive_minus_best_jpeg",
        }
    measured = [c for c in r["cells"] if c["measured"]]
    assert measured  # real processes, predicted beside measured
    assert any("measured" in s for c in measured for s in c["strategies"].values())
    assert set(r["targets"]) == TARGETS
    assert all(
        isinstance(t["met"], bool) and t["figure"] is not None for t in r["targets"].values()
    )
    assert (tmp_path / "regimes.png").stat().st_size > 0
