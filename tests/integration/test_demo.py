"""The README's main job, end to end on a few images with the shipped model."""

import json
import subprocess
import sys


def test_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "semlink.cli", "demo", "--requests", "8", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "on time" in proc.stdout and "p50" in proc.stdout and "options taken" in proc.stdout
    assert "no quota, a real" not in proc.stdout  # the profile line says one thing
    summary = json.loads((out / "summary.json").read_text())["summary"]
    assert summary["requests"] == 8 and summary["model"] == "scene-split"
    assert summary["controller"] == "planner" and summary["device_profile"] in ("camera", "none")
    assert 0.0 <= summary["on_time"] <= summary["within_deadline"] + 1e-9
    assert sum(summary["decisions"].values()) + summary["late"] + summary["dropped"] == 8
    assert (out / "timeline.png").stat().st_size > 1000


def test_demo_with_the_lyapunov_controller(tmp_path):
    out = tmp_path / "demo-lyapunov"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "semlink.cli",
            "demo",
            "--model",
            "scene-vit-jscc",
            "--device-profile",
            "none",
            "--deadline-ms",
            "2000",
            "--controller",
            "lyapunov",
            "--channel-budget",
            "0.02",
            "--requests",
            "6",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())["summary"]
    assert summary["model"] == "scene-vit-jscc" and summary["device_profile"] == "none"
    assert summary["avg_channel_uses"] > 0 and "channel uses" in proc.stdout
