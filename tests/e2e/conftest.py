"""A Docker engine, a base image and the three semlink images, made here if they are missing.

No registry is reachable on these machines, so the engine comes from Debian's packages and the
base image from ``docker/build-base.sh`` (debootstrap) unless ``python:3.11-slim`` is already
present or can be pulled. The engine and the images outlive the test run, so a second run on the
same machine starts from the cache. The test skips only where no engine can be started.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import may_change_machine, system_skip_reason

ROOT = Path(__file__).resolve().parents[2]
OFFICIAL_BASE = "python:3.11-slim"
LOCAL_BASE = "semlink-base:bookworm"
TAG = "e2e"
IMAGES = {role: f"semlink-{role}:{TAG}" for role in ("server", "device", "link")}


def sh(*cmd: str, timeout: float = 600, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Runs a command, its output captured; on failure the error carries the output's tail."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-3000:]}"
        )
    return proc


def _engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    return sh("docker", "info", timeout=30, check=False).returncode == 0


def _apt_install(*packages: str) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    sh("apt-get", "update", "-q", timeout=300, env=env)
    sh("apt-get", "install", "-y", "-q", *packages, timeout=600, env=env)


def start_engine(log_dir: Path) -> tuple[str | None, subprocess.Popen | None]:
    """Makes ``docker info`` answer. Returns why it cannot (or ``None``) and the daemon this
    started (or ``None``), which the caller stops."""
    if _engine_answers():
        return None, None
    if not may_change_machine():
        return system_skip_reason("no Docker engine answers"), None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "no Docker engine answers, and installing one needs root and apt-get", None
    missing = [
        pkg
        for pkg, exe in (("docker.io", "dockerd"), ("docker-compose", "docker-compose"))
        if shutil.which(exe) is None
    ]
    try:
        if missing:
            _apt_install(*missing)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        return f"could not install {' '.join(missing)}: {exc}", None
    log = log_dir / "dockerd.log"
    with open(log, "ab") as out:
        daemon = subprocess.Popen(["dockerd"], stdout=out, stderr=out, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if _engine_answers():
            return None, daemon
        time.sleep(1)
    stop_daemon(daemon)
    return f"dockerd did not come up within 60 s; its log:\n{log.read_text()[-2000:]}", None


def stop_daemon(daemon: subprocess.Popen) -> None:
    """Stops a dockerd this run started (SIGTERM, then SIGKILL after 30 s), with its group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(daemon.pid, signal.SIGTERM)
    try:
        daemon.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(daemon.pid, signal.SIGKILL)
        daemon.wait()


def _has_image(ref: str) -> bool:
    return sh("docker", "image", "inspect", ref, check=False).returncode == 0


def base_image() -> str:
    """``SEMLINK_BASE_IMAGE``, the official slim image (present or pulled), or a local one built
    with debootstrap (cached under its tag between runs)."""
    if os.environ.get("SEMLINK_BASE_IMAGE"):
        return os.environ["SEMLINK_BASE_IMAGE"]
    if _has_image(OFFICIAL_BASE):
        return OFFICIAL_BASE
    if _has_image(LOCAL_BASE):
        return LOCAL_BASE
    try:
        if sh("docker", "pull", OFFICIAL_BASE, timeout=60, check=False).returncode == 0:
            return OFFICIAL_BASE
    except subprocess.TimeoutExpired:
        pass
    if shutil.which("debootstrap") is None and not may_change_machine():
        pytest.skip(system_skip_reason("no base image and no debootstrap to build one"))
    if shutil.which("debootstrap") is None:
        _apt_install("debootstrap")
    sh(str(ROOT / "docker" / "build-base.sh"), LOCAL_BASE, timeout=900)
    return LOCAL_BASE


def compose_command() -> list[str]:
    """``docker compose`` (v2) where the plugin exists, else Debian's ``docker-compose``."""
    if sh("docker", "compose", "version", check=False).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"]


@pytest.fixture(scope="session")
def engine(tmp_path_factory) -> Iterator[str]:
    """The base image the images are built on, once an engine answers; a daemon started here
    is stopped when the session ends."""
    reason, daemon = start_engine(tmp_path_factory.mktemp("engine"))
    if reason:
        pytest.skip(f"no Docker engine: {reason}")
    try:
        yield base_image()
    finally:
        if daemon is not None:
            stop_daemon(daemon)


@pytest.fixture(scope="session")
def images(engine) -> dict[str, str]:
    """The three images, built from this checkout (the engine's layer cache makes rebuilds
    quick)."""
    for role, ref in IMAGES.items():
        sh(
            "docker",
            "build",
            "--quiet",
            "--file",
            str(ROOT / "docker" / f"{role}.Dockerfile"),
            "--build-arg",
            f"BASE_IMAGE={engine}",
            "--tag",
            ref,
            str(ROOT),
            timeout=900,
        )
    return IMAGES
