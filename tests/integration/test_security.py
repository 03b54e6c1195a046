"""Who may talk to whom: mutual TLS on the device -> server hop, API keys on HTTP, no secret in
logs, and no plaintext unless asked for explicitly. Real processes on loopback."""

from __future__ import annotations

import subprocess
import sys

import grpc
import httpx
import numpy as np
import pytest

from semlink.procs import Processes, Stack
from semlink.protocol import grpc_service_pb2 as pb
from semlink.protocol import grpc_service_pb2_grpc as pb_grpc
from semlink.protocol.http_codec import build_infer_request
from semlink.runtime.security import make_dev_pki

SERVER_KEY = "server-key-" + "7f3a9c" * 4
DEVICE_KEY = "device-key-" + "b41e02" * 4


@pytest.fixture(scope="module")
def secure(tiny_repository, tmp_path_factory):
    logs = tmp_path_factory.mktemp("logs")
    (logs / "server.keys").write_text(f"# server API keys\n{SERVER_KEY}\n")
    # an indented comment is a comment, not a key
    (logs / "device.keys").write_text(f"  # the device's key\n{DEVICE_KEY}\n")
    s = Stack(Processes(logs), repository=tiny_repository, model="tiny-vit", tls=True)
    try:
        s.start_server("--api-keys-file", str(logs / "server.keys"))
        s.start_link("--rate", "50mbit", "--delay-ms", "1")
        s.start_device("--api-keys-file", str(logs / "device.keys"), "--dashboard")
        yield s
    finally:
        s.procs.stop()


def ready(address: str, credentials: grpc.ChannelCredentials | None) -> pb.ServerReadyResponse:
    channel = (
        grpc.secure_channel(address, credentials)
        if credentials is not None
        else grpc.insecure_channel(address)
    )
    with channel:
        return pb_grpc.GRPCInferenceServiceStub(channel).ServerReady(
            pb.ServerReadyRequest(), timeout=3
        )


def creds(pki: dict, with_cert: bool = True) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=pki["ca"].read_bytes(),
        private_key=pki["client_key"].read_bytes() if with_cert else None,
        certificate_chain=pki["client_cert"].read_bytes() if with_cert else None,
    )


def test_device_with_its_certificate_offloads_over_mutual_tls(secure):
    body, headers = build_infer_request({"image": np.zeros((1, 1, 48, 48), np.float32)})
    headers["Authorization"] = f"Bearer {DEVICE_KEY}"
    resp = httpx.post(secure.infer_url(), content=body, headers=headers, timeout=30)
    assert resp.status_code == 200, resp.text
    p = resp.json()["parameters"]
    assert p["exit"] == "server" and not p["degraded"]
    assert ready(f"127.0.0.1:{secure.ports['grpc']}", creds(secure.pki)).ready


@pytest.mark.parametrize("client", ["plaintext", "no client certificate", "wrong CA"])
def test_server_rejects_clients_without_a_valid_certificate(secure, tmp_path, client):
    credentials = {
        "plaintext": None,
        "no client certificate": creds(secure.pki, with_cert=False),
        "wrong CA": creds(make_dev_pki(tmp_path / "other")),
    }[client]
    with pytest.raises(grpc.RpcError) as err:
        ready(f"127.0.0.1:{secure.ports['grpc']}", credentials)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    ("who", "path", "key"),
    [("server", "/v2", SERVER_KEY), ("device", "/v2/models/tiny-vit", DEVICE_KEY)],
)
def test_http_needs_an_api_key_but_health_does_not(secure, who, path, key):
    base = secure.server_url if who == "server" else secure.device_url
    assert httpx.get(f"{base}/v2/health/ready", timeout=5).status_code == 200
    missing = httpx.get(f"{base}{path}", timeout=5)
    assert missing.status_code == 401 and "Authorization: Bearer" in missing.json()["error"]
    assert missing.headers["www-authenticate"].startswith("Bearer")
    wrong = httpx.get(f"{base}{path}", headers={"Authorization": "Bearer " + "x" * 30}, timeout=5)
    assert wrong.status_code == 401
    good = httpx.get(f"{base}{path}", headers={"Authorization": f"Bearer {key}"}, timeout=5)
    assert good.status_code == 200


def test_no_secret_reaches_a_log(secure):
    secrets = [SERVER_KEY, DEVICE_KEY]
    secrets += [secure.pki[k].read_text().splitlines()[1] for k in ("server_key", "client_key")]
    for name in ("server", "device", "link"):
        text = secure.procs.log_tail(name, chars=10**7)
        assert not any(s in text for s in secrets), f"a secret appears in the {name} log"


@pytest.mark.parametrize("role", ["server", "device"])
def test_plaintext_needs_to_be_asked_for(role, tmp_path):
    argv = [role, "--http-port", "0"] + (["--grpc-port", "0"] if role == "server" else [])
    proc = subprocess.run(
        [sys.executable, "-m", "semlink.cli", *argv],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "without TLS" in proc.stderr and "--insecure" in proc.stderr


def test_a_browser_reaches_the_dashboard_with_the_key_as_password(secure):
    """Basic auth (any user, the key as password) is what a browser sends with the page's own
    polling; without it the page and its state are 401 with a challenge the browser answers."""
    for path in ("/dashboard", "/dashboard/state"):
        r = httpx.get(f"{secure.device_url}{path}")
        assert r.status_code == 401 and "Basic" in r.headers["www-authenticate"]
        assert (
            httpx.get(f"{secure.device_url}{path}", auth=("me", "wrong-key-" * 3)).status_code
            == 401
        )
        assert httpx.get(f"{secure.device_url}{path}", auth=("me", DEVICE_KEY)).status_code == 200
    # the comment line of the keys file is not a key
    assert (
        httpx.get(f"{secure.device_url}/v1/stats", auth=("me", "# the device's key")).status_code
        == 401
    )


def test_the_dashboard_is_off_unless_asked_for(tiny_repository, tmp_path):
    s = Stack(Processes(tmp_path), repository=tiny_repository, model="tiny-vit")
    try:
        s.start_server()
        s.start_device(through_link=False)
        r = httpx.get(f"{s.device_url}/dashboard/state")
        assert r.status_code == 404 and "--dashboard" in r.json()["error"]
    finally:
        s.procs.stop()


def test_refused_handshakes_do_not_flood_the_server_log(secure):
    """A plaintext client retrying against the TLS port: refused each time, no OpenSSL line
    per attempt in the server's log (one line at start-up says how such clients are treated)."""
    for _ in range(3):
        with pytest.raises(grpc.RpcError):
            ready(f"127.0.0.1:{secure.ports['grpc']}", None)
    log = (secure.procs.log_dir / "server.log").read_text()
    assert "Handshake failed" not in log and "SSL_ERROR" not in log
    assert "refused without a log line each" in log
