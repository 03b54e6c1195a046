"""The containers' health probe against a real HTTP server on loopback."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from semlink.healthcheck import check, main

ANSWERS = {"/ready": (200, {"ready": True, "server": "reachable"}), "/loading": (503, {})}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status, body = ANSWERS.get(self.path, (404, {}))
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def base():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_healthy_when_200_and_every_field_matches(base):
    assert check(f"{base}/ready", {}) is None
    assert check(f"{base}/ready", {"server": "reachable", "ready": "true"}) is None
    assert main([f"{base}/ready", "server=reachable"]) == 0


def test_unhealthy_says_why(base, capsys):
    assert "server is 'reachable', want 'unreachable'" in check(
        f"{base}/ready", {"server": "unreachable"}
    )
    assert "503" in check(f"{base}/loading", {})
    assert main([f"{base}/loading"]) == 1
    assert "unhealthy" in capsys.readouterr().out
    port = int(base.rsplit(":", 1)[1])
    assert check(f"http://127.0.0.1:{port + 1}/ready", {}, timeout_s=0.5) is not None


def test_usage_errors_exit_2():
    assert main([]) == 2
    assert main(["http://x", "no-equals-sign"]) == 2
