"""``semlink bench`` gathers benchmarks into one report and one JSON: a real (short) link
benchmark in its own process."""

from __future__ import annotations

import json

import pytest

from semlink.bench import report


def test_report_and_json_gather_each_benchmark(tmp_path, monkeypatch):
    monkeypatch.setitem(
        report.BENCHMARKS, "link", (("link", "--seconds", "0.5"), "link emulator rate accuracy")
    )
    assert report.main(tmp_path / "out", str(tmp_path / "all.json"), ["link"]) == 0
    doc = json.loads((tmp_path / "all.json").read_text())
    assert set(doc) == {"machine", "link"} and doc["machine"]["cpus"] >= 1
    assert doc["link"]  # the link benchmark's own figures
    md = (tmp_path / "out" / "report.md").read_text()
    assert "Machine: " in md and "| [link](#link) |" in md and "| ok |" in md
    assert "`semlink bench link --seconds 0.5`" in md
    assert "it/s" not in md  # progress bars stay in progress.log


def test_one_benchmark_rerun_keeps_the_others_last_runs_in_the_report(tmp_path, monkeypatch):
    args = ("link", "--seconds", "0.5")  # shorter misses the 5 % target at 0.1 Mbit/s
    monkeypatch.setitem(report.BENCHMARKS, "link", (args, "first"))
    monkeypatch.setitem(report.BENCHMARKS, "link-again", (args, "second"))
    monkeypatch.setattr(report, "NO_OUT", {"link", "link-again"})
    out = tmp_path / "out"
    assert report.main(out, None, ["link"]) == 0
    assert report.main(out, None, ["link-again"]) == 0  # link's run.json is still there
    md = (out / "report.md").read_text()
    assert "| [link](#link) | first |" in md and "| [link-again](#link-again) | second |" in md
    assert md.index("## link\n") < md.index("## link-again")  # in the benchmarks' order
    assert (out / "link" / "run.json").is_file() and (out / "link-again" / "run.json").is_file()


def test_unknown_benchmark_names_the_choices(tmp_path):
    with pytest.raises(ValueError, match="choose from"):
        report.main(tmp_path, None, ["nope"])
