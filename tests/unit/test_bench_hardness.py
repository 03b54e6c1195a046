"""``semlink bench hardness``: checks its settings before any work, measures what it reports, and
fine-tunes the shipped network on the recipe it names."""

from __future__ import annotations

import pytest

from semlink.bench.hardness import HardnessBenchConfig, bench, format_table, fractions, verdict


@pytest.mark.parametrize(
    "kwargs",
    [
        {"hardness": "2"},
        {"hardness": "a,b"},
        {"hardness": ""},
        {"epochs": -1},
        {"lr": 0.0},
        {"max_steps": 0},
    ],
)
def test_bad_settings_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        HardnessBenchConfig(**kwargs)


def test_fractions() -> None:
    assert fractions("0, 0.5,1") == [0.0, 0.5, 1.0]


def _row(full: float, lo: float, diff: float) -> dict:
    return {"full": full, "gap": {"diff": diff, "lo": lo, "hi": diff + 2}}


def test_verdict_needs_both_conditions() -> None:
    assert verdict(_row(0.95, 11.0, 12.0)) == "met"
    assert verdict(_row(0.95, 8.0, 10.5)) == "met on the point estimate"
    assert verdict(_row(0.95, 4.0, 6.5)) == "gap < 10"
    assert verdict(_row(0.85, 11.0, 12.0)) == "server below 90 %"


def test_bench_measures_the_shipped_network_then_fine_tunes_it(tmp_path) -> None:
    cfg = HardnessBenchConfig(
        hardness="1", epochs=1, max_steps=3, placements=1, val_placements=1, out=str(tmp_path)
    )
    r = bench(cfg)
    (rec,) = r["recipes"]
    assert list(rec["recipe"]["digit_px"]) == [24, 40]  # t = 1: digits-scene-shifted's recipe
    assert (rec["device_exit_block"], rec["full_block"]) == (2, 6)
    before, after = rec["rows"]
    for row in (before, after):
        assert row["n"] == 270  # one frame of each validation digit
        assert row["exits"][-1] == pytest.approx(100 * row["full"])
        assert row["exits"][1] == pytest.approx(100 * row["device"])
        assert row["gap"]["diff"] == pytest.approx(100 * (row["full"] - row["device"]))
    # the shipped weights are far below their own recipe's accuracy on the shifted one, and
    # three steps of fine-tuning change the answers
    assert before["full"] < 0.8
    assert after["exits"] != before["exits"] and after["loss"] > 0
    assert (tmp_path / "hardness.png").stat().st_size > 0
    assert "server below 90 %" in format_table(r)
