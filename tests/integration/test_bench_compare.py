"""``semlink bench compare`` end to end on a short run: every system answers through its own link
(the JPEG baselines behind real FastAPI and LitServe processes), and the figures add up."""

from __future__ import annotations

import subprocess

import pytest

from semlink.bench.compare import SYSTEMS, CompareBenchConfig, run

pytestmark = pytest.mark.slow


def test_every_system_answers_on_one_link_rate(tmp_path):
    report = run(CompareBenchConfig(requests=6, burst=4, rates_mbit=(20.0,), out=str(tmp_path)))
    rows = {r["system"]: r for r in report["results"]}
    assert set(rows) == {s.name for s in SYSTEMS}
    for name, r in rows.items():
        assert r["requests"] == 6 and r["accuracy"] >= 0.5, (name, r)
        assert r["p50_ms"] > 0 and r["throughput_rps"] > 0
    assert rows["small model, local only"]["bytes_up"] == 0
    fp32, fixed = rows["all tokens, fp32"], rows["semlink fixed (α 0.25, int8)"]
    assert fp32["bytes_up"] > 5 * fixed["bytes_up"] > 0  # 36 fp32 tokens vs 9 int8 ones
    jpeg, lit = rows["JPEG → FastAPI, full model"], rows["JPEG → LitServe, full model"]
    assert lit["bytes_up"] > jpeg["bytes_up"] > 300  # base64 in JSON costs a third more
    assert (tmp_path / "compare.png").stat().st_size > 10_000
    assert report["machine"]["cpus"] >= 1

    # every process the benchmark started is gone, LitServe's worker processes included
    left = subprocess.run(
        ["pgrep", "-af", "semlink.cli baseline-server"], capture_output=True, text=True
    )
    assert left.stdout == "", f"processes left behind: {left.stdout}"
