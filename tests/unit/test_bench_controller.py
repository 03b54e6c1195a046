"""``semlink bench controller`` picks the controller's V and mu on validation, never on test."""

import json

import numpy as np
import pytest

from semlink.bench.controller import (
    ControllerBenchConfig,
    cell_weights,
    choose_on_validation,
    realised_accuracy,
    run,
    snr_processes,
)
from semlink.device.controller import CalibrationTable
from semlink.runtime.repository import DEFAULT_REPOSITORY

MODEL_DIR = DEFAULT_REPOSITORY / "digits-vit-jscc" / "1"


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    cfg = ControllerBenchConfig(
        model_dir=str(MODEL_DIR),
        requests=400,
        budgets=(0.01,),
        budget=0.01,
        out=str(tmp_path_factory.mktemp("controller")),
    )
    return cfg, run(cfg)


def test_v_and_mu_come_from_the_validation_sweep(result):
    cfg, r = result
    manifest = json.loads((MODEL_DIR / "manifest.json").read_text())
    val = CalibrationTable.load(MODEL_DIR / "calibration.json", manifest["model_hash"])
    val_snr = snr_processes(cfg.requests, cfg.seed + 1, None)
    for point in r["settings"]:
        V, mu, sweep = choose_on_validation(val, val_snr[point["setting"]], cfg.budget)
        assert (point["V"], point["mu"]) == (V, mu)
        assert point["chosen_on"] == "validation" and len(sweep) == len(point["sweep"])
        chosen = next(s for s in sweep if (s["V"], s["mu"]) == (V, mu))
        within = [s for s in sweep if s["avg_channel_use"] <= cfg.budget * 1.01]
        assert chosen["accuracy"] == max(s["accuracy"] for s in within)


def test_the_difference_to_the_best_fixed_action_is_paired_over_the_test_images(result):
    """The per-image scores average to the accuracies the table gives, so the paired
    difference is the difference of the reported accuracies, with its bootstrap interval."""
    _, r = result
    assert r["n_test"] == 269
    for point in r["settings"]:
        d = point["minus_best_fixed"]
        assert d["diff"] == pytest.approx(100 * (point["accuracy"] - point["best_fixed"]), abs=1e-6)
        assert d["lo"] <= d["diff"] <= d["hi"] and d["n"] == 269
        assert d["tie"] == (d["lo"] <= 0 <= d["hi"])


def test_cell_weights_reproduce_the_interpolated_accuracy():
    manifest = json.loads((MODEL_DIR / "manifest.json").read_text())
    table = CalibrationTable.load(MODEL_DIR / "calibration.json", manifest["model_hash"])
    rng = np.random.default_rng(0)
    snr = np.concatenate([rng.uniform(-30, 40, 500), table.snrs])  # beyond both ends, on points
    chosen = rng.integers(0, table.accuracy.shape[1], len(snr))
    weights = cell_weights(table.snrs, snr, chosen, table.accuracy.shape[1])
    expected = realised_accuracy(table, snr)[np.arange(len(snr)), chosen].mean()
    assert (weights * table.accuracy).sum() == pytest.approx(expected)
    assert weights.sum() == pytest.approx(1.0) and (weights >= 0).all()
