"""``semlink bench compare`` end to end on a short run: every system answers through its own link
(the JPEG baselines behind real FastAPI and LitServe processes on mutual TLS, sent by a camera
process under the device profile), a trace link is replayed for each system, the whole-split
pass (bounded to the split's first frames) is answered once by a twin without the quota, and the
figures add up."""

from __future__ import annotations

import multiprocessing
import subprocess

import numpy as np
import pytest

from semlink.bench.compare import SYSTEMS, CompareBenchConfig, format_report, run
from semlink.link.traces import rates_to_timestamps, write_mahimahi

pytestmark = pytest.mark.slow


def test_every_system_answers_on_a_rate_and_a_trace(tmp_path):
    trace = tmp_path / "Test-LTE.up"
    write_mahimahi(str(trace), rates_to_timestamps(np.full(20, 4e6), 100))
    children = set(multiprocessing.active_children())
    cfg = CompareBenchConfig(
        dataset="digits-canvas",
        requests=6,
        other_requests=5,
        rates_mbit=(20.0,),
        traces=(str(trace),),
        device_profile="phone",  # the devices and the JPEG uploads' camera under a real quota
        whole_split_frames=24,  # of the fixture's 269: the pass runs, six times in_flight
        out=str(tmp_path),
    )
    report = run(cfg)
    assert [lk["name"] for lk in report["links"]] == ["20 Mbit/s", "Test-LTE"]
    rows = {(r["system"], r["link"]): r for r in report["results"]}
    alone = {s.name for s in SYSTEMS if s.kind == "local"}
    for s in SYSTEMS:
        for link in ("device alone",) if s.name in alone else ("20 Mbit/s", "Test-LTE"):
            r = rows[(s.name, link)]
            assert r["requests"] >= 5 and r["accuracy"] >= 0.5, (s.name, link, r)
            assert r["p50_ms"] > 0 and len(r["correct"]) == r["requests"]
        w = report["whole_split"][s.name]  # the split's first 24 frames, every system
        assert w["requests"] == 24 == len(w["correct"]), (s.name, w)
        assert w["accuracy"] >= 0.9 and w["throughput_rps"] > 0, (s.name, w)
        assert w["link"] == ("device alone" if s.name in alone else "20 Mbit/s")
        if not s.jpeg:  # a twin device without the quota answered the whole split
            assert w["device_profile"] == "none"
    lte = {name: r for (name, link), r in rows.items() if link == "Test-LTE"}
    fp32, fixed = lte["all tokens, fp32"], lte["semlink fixed (α 0.25, int8)"]
    assert fp32["bytes_up"] > 5 * fixed["bytes_up"] > 0  # 36 fp32 tokens vs 9 int8 ones
    assert fixed["offloaded"] == 1.0 and fixed["degraded"] == 0
    q50, q90 = lte["JPEG q50 → FastAPI"], lte["JPEG q90 → FastAPI"]
    lit = lte["JPEG q90 → LitServe"]
    assert lit["bytes_up"] > q90["bytes_up"] > q50["bytes_up"] > 300  # base64 costs a third more
    kinds = {t["kind"] for t in report["targets"]}
    assert kinds == {"jpeg", "deadline", "local"}
    assert report["setup"]["whole_split_frames"] == 24
    assert "**Test split's first 24 frames**" in format_report(report)
    assert (tmp_path / "compare.png").stat().st_size > 10_000

    # every process the benchmark started is gone, LitServe's worker processes included
    left = subprocess.run(
        ["pgrep", "-af", "semlink.cli baseline-server"], capture_output=True, text=True
    )
    assert left.stdout == "", f"processes left behind: {left.stdout}"
    assert set(multiprocessing.active_children()) <= children  # the camera process too
