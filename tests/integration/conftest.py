"""Real processes on free loopback ports: server, link emulator, device."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def start(name: str, log_dir: Path, *argv: str) -> Proc:
    log = log_dir / f"{name}.log"
    popen = subprocess.Popen(
        [sys.executable, "-m", "semlink.cli", *argv], stdout=log.open("w"), stderr=subprocess.STDOUT
    )
    return Proc(name, popen, log)


def wait_http(proc: Proc, url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(
                f"{proc.name} exited ({proc.popen.returncode}):\n{proc.log.read_text()[-3000:]}"
            )
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{proc.name} not ready at {url}:\n{proc.log.read_text()[-3000:]}")


@dataclass
class Stack:
    server_grpc: int
    server_http: int
    link: int
    link_state: int
    device_http: int
    procs: dict[str, Proc]
    repository: Path
    log_dir: Path

    @property
    def device_url(self) -> str:
        return f"http://127.0.0.1:{self.device_http}"

    @property
    def server_url(self) -> str:
        return f"http://127.0.0.1:{self.server_http}"

    def link_state_json(self) -> dict:
        return httpx.get(f"http://127.0.0.1:{self.link_state}/state", timeout=2.0).json()

    def start_server(self) -> None:
        self.procs["server"] = start(
            "server",
            self.log_dir,
            "server",
            "--model-repository",
            str(self.repository),
            "--grpc-port",
            str(self.server_grpc),
            "--http-port",
            str(self.server_http),
        )
        wait_http(self.procs["server"], f"{self.server_url}/v2/health/ready")


def launch_stack(
    repository: Path,
    log_dir: Path,
    model: str,
    rate: str = "50mbit",
    delay_ms: float = 2.0,
    token_format: str = "fp16",
) -> Stack:
    s = Stack(
        free_port(), free_port(), free_port(), free_port(), free_port(), {}, repository, log_dir
    )
    s.start_server()
    s.procs["link"] = start(
        "link",
        log_dir,
        "link",
        "--listen",
        f"127.0.0.1:{s.link}",
        "--upstream",
        f"127.0.0.1:{s.server_grpc}",
        "--rate",
        rate,
        "--delay-ms",
        str(delay_ms),
        "--state-port",
        str(s.link_state),
    )
    wait_http(s.procs["link"], f"http://127.0.0.1:{s.link_state}/health")
    s.procs["device"] = start(
        "device",
        log_dir,
        "device",
        "--server",
        f"127.0.0.1:{s.link}",
        "--http-port",
        str(s.device_http),
        "--model-repository",
        str(repository),
        "--model-name",
        model,
        "--token-format",
        token_format,
        "--link-state-url",
        f"http://127.0.0.1:{s.link_state}/state",
    )
    wait_http(s.procs["device"], f"{s.device_url}/v2/health/ready")
    return s


@pytest.fixture(scope="module")
def stack(tiny_repository, tmp_path_factory):
    s = launch_stack(
        tiny_repository, tmp_path_factory.mktemp("logs"), "tiny-vit", token_format="fp32"
    )
    yield s
    for p in s.procs.values():
        p.stop()
