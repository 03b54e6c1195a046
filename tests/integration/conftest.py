"""Real processes on free loopback ports: server, link emulator, device."""

from __future__ import annotations

import pytest

from semlink.procs import Processes, Stack


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
