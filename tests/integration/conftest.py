"""Real processes on free loopback ports: server, link emulator, device."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from semlink.procs import Processes, Stack
from tests.conftest import shared_dir

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def stack(tiny_repository, tmp_path_factory):
    s = Stack(
        Processes(tmp_path_factory.mktemp("logs")), repository=tiny_repository, model="tiny-vit"
    )
    try:
        s.start_all(
            link_args=("--rate", "50mbit", "--delay-ms", "2"),
            device_args=("--token-format", "fp32", "--dashboard"),
        )
        yield s
    finally:
        s.procs.stop()


def _source_files(root: Path) -> list[str]:
    """The checkout's files a build reads: tracked and untracked ones git does not ignore (or,
    outside a git work tree, everything but environments, caches, build output and keys)."""
    try:
        listed = subprocess.run(
            [
                "git",
                "-C",
                str(root),
                "ls-files",
                "-z",
                "--cached",
                "--others",
                "--exclude-standard",
            ],
            capture_output=True,
            check=True,
        )
        return [p for p in listed.stdout.decode().split("\0") if p and (root / p).is_file()]
    except (OSError, subprocess.CalledProcessError):
        pass
    skip = {".git", ".venv", "build", "runs", "certs", "samples", "__pycache__"}
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in skip and not d.endswith((".egg-info", "_cache"))]
        files += [str((Path(folder) / n).relative_to(root)) for n in names]
    return files


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """semlink's wheel, built once per run and shared by every worker, from a copy of the
    checkout: setuptools builds inside the source tree, so two builds in the checkout itself
    would write (and delete) each other's build/ folder, and would leave one behind."""
    from filelock import FileLock

    shared = shared_dir(tmp_path_factory)
    with FileLock(str(shared / "wheel.lock")):
        wheels = shared / "wheel"
        built = sorted(wheels.glob("semlink-*.whl"))
        if built:
            return built[0]
        source = shared / "wheel-source"
        for name in _source_files(ROOT):
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
        done = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check"]
            + ["--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        shutil.rmtree(source, ignore_errors=True)
        return next(wheels.glob("semlink-*.whl"))
