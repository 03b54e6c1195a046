"""``semlink bench controller`` picks the controller's V and mu on validation, never on test."""

import json

import pytest

from semlink.bench.controller import (
    ControllerBenchConfig,
    choose_on_validation,
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


def test_every_accuracy_difference_carries_its_interval(result):
    _, r = result
    assert r["n_test"] == 269
    for point in r["settings"]:
        d = point["minus_best_fixed"]
        assert d["lo"] <= d["diff"] <= d["hi"] and d["n"] == 269
        assert d["tie"] == (d["lo"] <= 0 <= d["hi"])
