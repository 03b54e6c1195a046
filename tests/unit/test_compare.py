"""The comparison benchmark's pieces: the baselines' JPEG path and whole model, the targets."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from semlink.bench.baselines import FullModel, to_jpeg
from semlink.bench.compare import SYSTEMS, format_report, targets
from semlink.models.data import load_digits_canvas
from semlink.runtime.repository import DEFAULT_REPOSITORY


def test_jpeg_is_the_camera_image_and_the_whole_model_reads_it():
    data = load_digits_canvas("test")
    full = FullModel(DEFAULT_REPOSITORY, "digits-vit")
    jpegs = [to_jpeg(im) for im in data.images[:40]]
    assert Image.open(io.BytesIO(jpegs[0])).size == (48, 48)
    assert all(300 < len(j) < 3000 for j in jpegs)
    right = np.mean([full.predict(j) == y for j, y in zip(jpegs, data.labels[:40], strict=True)])
    assert right >= 0.9


def _row(system: str, rate: float, accuracy: float, p50: float, within: float = 1.0) -> dict:
    return {
        "system": system,
        "rate_mbit": rate,
        "requests": 10,
        "accuracy": accuracy,
        "bytes_up": 1000.0,
        "bytes_down": 200.0,
        "p50_ms": p50,
        "p95_ms": 2 * p50,
        "within_deadline": within,
        "degraded": 0,
        "throughput_rps": 5.0,
    }


def test_targets_compare_each_controller_with_the_jpeg_upload():
    fixed, lyap, rl, jpeg = (s.name for s in SYSTEMS[:4])
    results = [
        _row(jpeg, 1.0, 0.97, 90.0),
        _row(jpeg, 100.0, 0.97, 20.0),
        _row(fixed, 1.0, 0.97, 30.0),  # exactly a third
        _row(fixed, 100.0, 0.96, 10.0),  # one point lower: still met
        _row(lyap, 1.0, 0.9, 10.0),
        _row(lyap, 100.0, 0.9, 10.0),  # seven points lower
        _row(rl, 1.0, 0.98, 31.0),  # a bit slower than a third
        _row(rl, 100.0, 0.98, 5.0),
        _row(fixed, 0.1, 0.97, 100.0, within=0.99),
        _row(lyap, 0.1, 0.9, 100.0, within=0.98),
        _row(rl, 0.1, 0.98, 5.0),
        _row(jpeg, 0.1, 0.97, 300.0, within=0.5),
    ]
    report = {"machine": {}, "deadline_ms": 500.0, "results": results}
    got = {(t["system"], "p50_ratio" in t): t["met"] for t in targets(report)}
    assert got == {
        (fixed, True): True,
        (lyap, True): False,
        (rl, True): False,
        (fixed, False): True,
        (lyap, False): False,
        (rl, False): True,
    }
    report["targets"] = targets(report)
    report["machine"] = {"processor": "x86_64", "cpus": 2, "platform": "Linux", "python": "3.11"}
    text = format_report(report)
    assert "**0.1 Mbit/s**" in text and "| JPEG → FastAPI, full model | 97.0±" in text
    assert "✗ semlink Lyapunov (JSCC)" in text
