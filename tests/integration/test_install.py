"""A non-editable install is one import package, ``semlink``, with its zoo, and the demo runs
from it in another directory."""

import json
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest


@pytest.mark.slow
def test_wheel_install_runs_the_demo_elsewhere(tmp_path, wheel):
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"semlink"}, f"only one import package may install, got {sorted(tops)}"
    assert "semlink/zoo/digits-vit/1/head.onnx" in names  # the zoo is package data
    assert not any(n.endswith("checkpoint.pt") for n in names)  # training files stay out

    # a fresh environment holding the wheel; its dependencies come from this one (no download)
    env = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    purelib = next(env.glob("lib/python*/site-packages"))
    (purelib / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    installed = subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(purelib), "--upgrade", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    python = env / "bin" / "python"
    where = subprocess.run(
        [str(python), "-c", "import semlink.runtime.repository as r; print(r.DEFAULT_REPOSITORY)"],
        capture_output=True,
        text=True,
        cwd=elsewhere,
    )
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(purelib), where.stdout
    out = elsewhere / "demo"
    demo = subprocess.run(
        [str(python), "-m", "semlink.cli", "demo", "--requests", "4", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=elsewhere,
    )
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["summary"]["requests"] == 4
