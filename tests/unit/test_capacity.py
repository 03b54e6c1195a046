"""The capacity formula and the batching-queue simulation behind docs/capacity.md."""

import time

import pytest

from semlink.bench.capacity import batch_model, replicas_needed, simulate


def test_batch_model_reproduces_both_measurements():
    a, c = batch_model(single_ms=6.0, mu_rps=400.0, batch=8)
    assert a + c == pytest.approx(6.0)
    assert 8 / (a + 8 * c) * 1000 == pytest.approx(400.0)


def test_replicas_needed_is_the_ceiling_of_load_over_planned_capacity():
    # 1000 devices x 2 req/s x 50 % offloaded = 1000 req/s; 0.6 x 250 = 150 per replica
    assert replicas_needed(1000, 2.0, 0.5, mu=250.0, rho=0.6) == 7
    assert replicas_needed(1, 0.1, 0.1, mu=250.0, rho=0.6) == 1


def test_simulation_queues_grow_towards_capacity_and_replicas_share_the_load():
    a, c = batch_model(6.0, 300.0, 8)
    light = simulate(a, c, 8, 1, rate=60.0)
    heavy = simulate(a, c, 8, 1, rate=270.0)
    assert light["p50_ms"] == pytest.approx(6.0, rel=0.3)  # mostly alone in its batch
    assert heavy["p95_ms"] > 2 * light["p95_ms"]
    # the same load per replica: more replicas, no worse (power of two smooths the bursts)
    one, three = simulate(a, c, 8, 1, rate=200.0), simulate(a, c, 8, 3, rate=600.0)
    assert three["p95_ms"] <= one["p95_ms"] * 1.05


def test_a_child_process_cpu_time_is_read_from_proc(tmp_path):
    """``bench capacity`` charges a replica the CPU time it spent; an idle child spends ~none."""
    import subprocess
    import sys

    from semlink.procs import Processes

    procs = Processes(tmp_path)
    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
    procs.children["busy"] = subprocess.Popen(
        [sys.executable, "-c", busy + "time.sleep(30)"], start_new_session=True
    )
    procs.children["idle"] = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True
    )
    try:
        deadline = time.monotonic() + 20
        while procs.cpu_seconds("busy") < 0.3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert 0.3 <= procs.cpu_seconds("busy") < 1.0
        assert procs.cpu_seconds("idle") < 0.2
    finally:
        procs.stop()
