"""Lyapunov drift-plus-penalty controller on hand-made tables."""

import json

import numpy as np
import pytest

from semlink.device.controller import ChannelState, Constraint, FrameState, LyapunovController
from semlink.runtime.calibration import CalibrationTable


def table(
    acc_low_snr=(0.5, 0.6, 0.9), acc_high_snr=(0.8, 0.9, 0.95), uses=(0.01, 0.02, 0.1)
) -> CalibrationTable:
    """Three actions (cheap, medium, dear) at two calibrated SNRs (0 and 10 dB)."""
    rows = []
    for snr, accs in ((0.0, acc_low_snr), (10.0, acc_high_snr)):
        for i, (acc, u) in enumerate(zip(accs, uses, strict=True)):
            rows.append(
                {
                    "snr_db": snr,
                    "alpha": 0.1 * (i + 1),
                    "rate": 0.5,
                    "k": 1,
                    "m": 1,
                    "channel_uses": u,
                    "accuracy": acc,
                }
            )
    return CalibrationTable.from_rows(rows)


def test_queue_update_is_max_zero_of_drift():
    c = Constraint("channel_use", budget=0.02, mu=10.0)
    ctl = LyapunovController(table(), [c], V=1.0)
    ctl.update({"channel_use": 0.1})
    assert c.queue == pytest.approx(10 * (0.1 - 0.02))
    ctl.update({"channel_use": 0.0})
    assert c.queue == pytest.approx(0.8 - 0.2)
    for _ in range(10):
        ctl.update({"channel_use": 0.0})
    assert c.queue == 0.0  # never negative
    assert ctl.state()["avg_channel_use"] == pytest.approx(0.1 / 12)


def test_empty_queue_picks_the_most_accurate_action():
    ctl = LyapunovController(table(), [Constraint("channel_use", 0.02)], V=1.0)
    assert ctl.choose(0.0, ChannelState()) == 2


def test_full_queue_picks_a_cheaper_action():
    ctl = LyapunovController(table(), [Constraint("channel_use", 0.02)], V=1.0)
    ctl.constraints[0].queue = 10.0  # -V*acc + Z*gamma: 0.5 vs 0.6-... -> cheap wins
    assert ctl.choose(0.0, ChannelState()) == 0


def test_snr_between_points_uses_the_lower_one_and_below_range_is_a_guess():
    t = table()
    np.testing.assert_allclose(t.accuracy_at(9.9), [0.5, 0.6, 0.9])
    np.testing.assert_allclose(t.accuracy_at(10.0), [0.8, 0.9, 0.95])
    np.testing.assert_allclose(t.accuracy_at(-3.0), [0.1, 0.1, 0.1])


def test_constraint_holds_on_a_simulated_run():
    rng = np.random.default_rng(0)
    c = Constraint("channel_use", budget=0.03, mu=10.0)
    ctl = LyapunovController(table(), [c], V=1.0)
    used = []
    for _ in range(5000):
        a = ctl.choose(float(rng.choice([0.0, 10.0])), ChannelState())
        ctl.update({"channel_use": float(ctl.table.channel_use[a])})
        used.append(ctl.table.channel_use[a])
    assert np.mean(used[1000:]) <= 0.03 * 1.01
    assert np.mean(used[1000:]) > 0.02  # and it does spend the budget, not starve


def test_latency_constraint_uses_channel_state():
    ctl = LyapunovController(table(), [Constraint("latency", 50.0, mu=0.01)], V=1.0)
    costs = ctl.costs(ChannelState(bandwidth_bps=1e6, rtt_ms=20.0))
    assert costs["latency"][0] == pytest.approx(32 / 1e6 * 1000 + 20.0)


@pytest.mark.parametrize(
    "kwargs,fragment",
    [({"V": 0.0}, "V must be positive"), ({"constraints": []}, "at least one constraint")],
)
def test_bad_configuration_is_refused(kwargs, fragment):
    args = {"table": table(), "constraints": [Constraint("channel_use", 0.02)], "V": 1.0, **kwargs}
    with pytest.raises(ValueError, match=fragment):
        LyapunovController(**args)


@pytest.mark.parametrize(
    "name,budget,mu,fragment",
    [
        ("bandwidth", 1.0, 1.0, "unknown constraint"),
        ("channel_use", 0.0, 1.0, "budget must be positive"),
        ("energy", 1.0, -1.0, "mu for energy"),
    ],
)
def test_bad_constraint_is_refused(name, budget, mu, fragment):
    with pytest.raises(ValueError, match=fragment):
        Constraint(name, budget, mu)


def test_table_from_another_model_is_refused(tmp_path):
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"calibration_version": 1, "model_hash": "aaa", "grid": []}))
    with pytest.raises(ValueError, match="made for model 'aaa'"):
        CalibrationTable.load(path, "bbb")
    with pytest.raises(FileNotFoundError, match="semlink calibrate"):
        CalibrationTable.load(tmp_path / "none.json")


def test_shipped_table_loads_and_decides():

    from semlink.cli.common import DEFAULT_JSCC_DIR

    manifest = json.loads((DEFAULT_JSCC_DIR / "manifest.json").read_text())
    t = CalibrationTable.load(DEFAULT_JSCC_DIR / "calibration.json", manifest["model_hash"])
    ctl = LyapunovController(t, [Constraint("channel_use", 0.02, 10.0)], V=10.0)
    assert t.accuracy.shape == (11, 36)
    d = ctl.decide(FrameState({}, ChannelState(snr_db=7.0), deadline_ms=500.0))
    assert 0 < d.budget <= 1 and 0 < d.rate <= 1
