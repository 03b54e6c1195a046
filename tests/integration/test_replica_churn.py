"""Several servers, two devices, on real processes: a replica killed and one added under load.

Three servers on loopback (one under a CPU quota of a twentieth of a core), two devices, each
through its own link emulator used as a CONNECT proxy to every replica. The comparison of the
expected-delay choice with round robin is a benchmark (``semlink bench replicas``); here: nothing
lost, nothing answered twice, a new replica in use within 5 s of being ready.
"""

from __future__ import annotations

import httpx
import pytest

from semlink.bench.replicas import Fleet, ReplicasBenchConfig, churn
from semlink.models.data import load_digits_canvas
from semlink.procs import Processes


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    cfg = ReplicasBenchConfig(seconds=9.0, rate_per_s=25.0, concurrency=4, model="digits-vit")
    procs = Processes(tmp_path_factory.mktemp("replicas") / "logs")
    f = Fleet(procs, cfg)
    try:
        for i in range(cfg.servers):
            f.start_server(i, cfg.slow_quota if i == cfg.servers - 1 else None)
        f.start_links()
        yield f
    finally:
        procs.stop()


def test_a_killed_and_an_added_replica_lose_nothing_and_the_new_one_serves_within_5_s(fleet):
    result = churn(fleet, load_digits_canvas("test").images)
    assert result["requests"] > 300
    assert result["lost"] == 0 and result["answered"] == result["requests"], result
    assert result["duplicated"] == 0, result
    assert result["join_s"] is not None and result["join_s"] <= 5.0, result
    # the new replica took a real share of what was sent once it was ready (of three replicas,
    # one slowed; a count would depend on how fast this machine answered in the last third)
    assert result["after_join"] > 0 and result["joined_share"] >= 0.10, result
    assert result["degraded"] <= 0.02 * result["requests"], result


def test_a_device_reports_its_replicas_and_the_server_its_load(fleet):
    fleet.start_devices("expected-delay")
    try:
        doc = httpx.get(f"http://127.0.0.1:{fleet.device_ports[0]}/v2/health/ready").json()
        assert doc["server"] == "reachable" and doc["replicas_ready"] >= 2
        ready = httpx.get(f"http://127.0.0.1:{fleet.http[1]}/v2/health/ready")
        assert int(ready.headers["semlink-queue-depth"]) >= 0
        assert float(ready.headers["semlink-service-ms"]) >= 0.0
        metrics = httpx.get(f"http://127.0.0.1:{fleet.http[1]}/metrics").text
        assert "semlink_server_queue_depth" in metrics
        assert "semlink_server_service_seconds" in metrics
    finally:
        fleet.stop_devices()
