"""``semlink advise`` reads a regime map: the cell for a deployment (the nearest frame rate and
deadline), its strategies ranked by on-time accuracy, measured figures over predicted ones."""

from __future__ import annotations

import json

import pytest

from semlink.advise import AdviseConfig, advise, find_cell, format_advice, load_map


def _strategy(kind: str, on_time: float, measured: float | None = None) -> dict:
    s = {"kind": kind, "on_time": on_time, "ci95": [on_time - 0.05, on_time + 0.05], "n": 300}
    s.update(bytes_up=0.0 if kind == "device" else 900.0, energy_mj=1.0)
    if measured is not None:
        s["measured"] = {"on_time": measured, "ci95": [measured - 0.04, measured + 0.04]}
        s["measured"].update(n=150, bytes_up=s["bytes_up"])
    return s


def _cell(fps: float, deadline: float, measured: bool = False) -> dict:
    strategies = {
        "exit1": _strategy("device", 0.6, 0.5 if measured else None),
        "s1:a0.25": _strategy("offload", 0.8),
        "planner": _strategy("planner", 0.78, 0.7 if measured else None),
        "oracle": _strategy("oracle", 0.95),
    }
    key = {"model": "scene-xl", "profile": "pi4", "link": "1mbit"}
    return {
        **key,
        "fps": fps,
        "deadline_ms": deadline,
        "measured": measured,
        "strategies": strategies,
    }


MAP = {
    "headline": {"model": "scene-xl"},
    "cells": [_cell(5.0, 100.0), _cell(15.0, 100.0, measured=True), _cell(15.0, 250.0)],
}


def test_the_nearest_cell_by_ratio_of_rate_then_deadline():
    assert find_cell(MAP, AdviseConfig(profile="pi4", fps=8.0, deadline_ms=90))["fps"] == 5.0
    cell = find_cell(MAP, AdviseConfig(profile="pi4", fps=12.0, deadline_ms=200))
    assert (cell["fps"], cell["deadline_ms"]) == (15.0, 250.0)


def test_a_predicted_cell_ranks_every_strategy_and_names_the_ties():
    a = advise(MAP, AdviseConfig(profile="pi4", fps=5.0, deadline_ms=100))
    assert [r["strategy"] for r in a["ranked"]] == ["s1:a0.25", "planner", "exit1"]
    assert a["best"] == "s1:a0.25" and a["overlapping"] == ["planner"]  # 0.78 + 0.05 > 0.75
    assert not a["measured"] and a["oracle_on_time"] == 0.95
    text = format_advice(a, AdviseConfig(profile="pi4", fps=5.0, deadline_ms=100))
    assert "predicted by the simulator" in text and "run s1:a0.25" in text


def test_a_measured_cell_ranks_what_was_measured():
    a = advise(MAP, AdviseConfig(profile="pi4", fps=15.0, deadline_ms=100))
    assert a["measured"] and [r["strategy"] for r in a["ranked"]] == ["planner", "exit1"]
    assert a["ranked"][0]["on_time"] == 0.7 and a["ranked"][0]["n"] == 150


def test_what_the_map_lacks_is_named(tmp_path):
    with pytest.raises(ValueError, match="no profile 'sensor'.*'pi4'"):
        advise(MAP, AdviseConfig(profile="sensor"))
    with pytest.raises(ValueError, match="no link '3mbit'"):
        advise(MAP, AdviseConfig(profile="pi4", link="3mbit"))
    with pytest.raises(ValueError, match="positive"):
        advise(MAP, AdviseConfig(profile="pi4", fps=0))
    with pytest.raises(FileNotFoundError, match="semlink bench regimes"):
        load_map(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text(json.dumps({"cells": 3}))
    with pytest.raises(ValueError, match="not a regime map"):
        load_map(tmp_path / "bad.json")
