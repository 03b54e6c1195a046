"""``semlink bench front`` runs locust against both HTTP fronts and reports real throughput."""

import json

from semlink.cli import main


def test_front_bench_drives_both_fronts_with_locust(tmp_path, capsys):
    out = tmp_path / "front.json"
    rc = main(
        [
            "bench",
            "front",
            "--seconds",
            "2",
            "--users",
            "2",
            "--out",
            str(tmp_path),
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    r = json.loads(out.read_text())
    for key in ("server_alone", "device_front"):
        assert r[key]["requests"] > 20 and r[key]["failures"] == 0, r[key]
    assert 0 < r["share"] < 2
    assert all(ms > 0 for ms in r["device_front"]["cpu_ms_per_request"].values())
    assert "of the server alone's throughput" in capsys.readouterr().out
