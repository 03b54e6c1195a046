"""A device profile is a real CPU quota: the same work takes several times longer under it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


needs_cgroups = pytest.mark.skipif(
    os.geteuid() != 0
    or not (CGROUP_ROOT / "cpu" / "cgroup.procs").exists()
    and not (CGROUP_ROOT / "cgroup.controllers").exists(),
    reason="a CPU quota needs root and a cgroup CPU controller",
)


@needs_cgroups
def test_a_quota_of_a_tenth_of_a_core_slows_the_same_work_several_fold():
    free, limited = _seconds("none"), _seconds("0.1")
    assert limited > 4 * free, (free, limited)  # about 10x; generous for a noisy machine


@needs_cgroups
def test_devices_starting_together_do_not_remove_each_others_groups():
    """A group that a live process just made (still empty) stays; one of a dead process goes."""
    base = CGROUP_ROOT if (CGROUP_ROOT / "cgroup.controllers").exists() else CGROUP_ROOT / "cpu"
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    starting, stale = (
        base / f"semlink-test-{live.pid}",
        base / f"semlink-test-{gone.stdout.strip()}",
    )
    try:
        starting.mkdir()
        stale.mkdir(exist_ok=True)
        # another process takes a quota: it cleans up before making its own group
        code = "from semlink.runtime.cpu_quota import limit_cpu; print(limit_cpu(0.5, 'test'))"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert starting.is_dir() and not stale.exists()
        assert Path(out.stdout.strip()).name.startswith("semlink-test-")
    finally:
        live.kill()
        live.wait()
        for g in (starting, stale):
            if g.is_dir():
                g.rmdir()


def test_profiles_name_their_share():
    assert profile_share("none") is None and profile_share("camera") == 0.1
    with pytest.raises(ValueError, match="device profile must be one of"):
        profile_share("toaster")


def test_profiles_are_device_classes_with_the_smallest_period_the_kernel_accepts():
    from semlink.runtime.cpu_quota import CALIBRATION_MS, PROFILES, smallest_period

    for p in PROFILES.values():
        if p.share is None:
            continue
        assert p.period_us == smallest_period(p.share) and p.share * p.period_us >= 1000 - 1
        if p.published_ms is not None:  # a slower class gets a smaller share of this core
            assert p.share == pytest.approx(CALIBRATION_MS / p.published_ms, rel=5e-3)
            assert "ncnn" in p.source
    shares = [PROFILES[n].share for n in ("phone", "pi4", "pi-zero-2", "sensor")]
    assert shares == sorted(shares, reverse=True)
    assert (
        smallest_period(0.1) == 10_000
        and smallest_period(0.02) == 50_000
        and smallest_period(1.0) == 1000
    )


RELEASE = """
import os, time
from semlink.runtime.cpu_quota import limit_cpu, release_cpu
group = limit_cpu(0.1, "test")
busy = lambda: sum(i * i for i in range(1_000_000))
t0 = time.perf_counter(); busy(); limited = time.perf_counter() - t0
release_cpu(group)
t0 = time.perf_counter(); busy(); free = time.perf_counter() - t0
print(group.exists(), limited / free)
"""


@needs_cgroups
def test_a_released_process_leaves_its_group_and_runs_at_full_speed():
    """The device's teardown after its drain: out of the quota, and its cgroup removed."""
    out = subprocess.run(
        [sys.executable, "-c", RELEASE], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    exists, slowdown = out.stdout.split()
    assert exists == "False" and float(slowdown) > 4, out.stdout  # about 10x
