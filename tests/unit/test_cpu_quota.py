"""A device profile is a real CPU quota: the same work takes several times longer under it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from semlink.runtime.cpu_quota import CGROUP_ROOT, profile_share

WORK = """
import sys, time
from semlink.runtime.cpu_quota import limit_cpu
if sys.argv[1] != "none":
    limit_cpu(float(sys.argv[1]), "test")
t0 = time.process_time(), time.perf_counter()
x = 0
for i in range(3_000_000):
    x += i * i
print(time.perf_counter() - t0[1])
"""


def _seconds(share: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", WORK, share], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return float(out.stdout)


@pytest.mark.skipif(
    os.geteuid() != 0
    or not (CGROUP_ROOT / "cpu" / "cgroup.procs").exists()
    and not (CGROUP_ROOT / "cgroup.controllers").exists(),
    reason="a CPU quota needs root and a cgroup CPU controller",
)
def test_a_quota_of_a_tenth_of_a_core_slows_the_same_work_several_fold():
    free, limited = _seconds("none"), _seconds("0.1")
    assert limited > 4 * free, (free, limited)  # about 10x; generous for a noisy machine


def test_profiles_name_their_share():
    assert profile_share("none") is None and profile_share("camera") == 0.1
    with pytest.raises(ValueError, match="device profile must be one of"):
        profile_share("toaster")


def test_profile_bench_times_the_whole_model_under_the_quota_and_without():
    from semlink.bench.profile import ProfileBenchConfig, bench, format_table

    r = bench(ProfileBenchConfig(repeats=5))
    assert r["cpu_share"] == 0.1 and r["device_ms"] > 0 and r["server_ms"] > 0
    assert r["ratio"] == r["device_ms"] / r["server_ms"]
    assert "slower (target >= 8x" in format_table(r)
