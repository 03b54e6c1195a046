"""The images and docker-compose.yml, for real: build, bring the stack up, send requests to both
devices through their link containers, take the server away and bring it back, tear down.

Several minutes on a cold machine (engine install, base image, image builds); about one with the
engine and images cached. Skips only where no Docker engine can be started (see conftest.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tarfile
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from semlink.models.data import load_digits_canvas
from semlink.procs import reserve_port
from semlink.protocol.http_codec import build_infer_request
from tests.e2e.conftest import ROOT, TAG, compose_command, sh

pytestmark = pytest.mark.slow

PROJECT = "semlink-e2e"
IMAGE_LIMIT_MB = 400  # device and server, the target
REQUESTS = 24
PEM_KEY = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----\r?\n[A-Za-z0-9+/=\r\n]{64}")
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD", re.IGNORECASE)


class ComposeStack:
    def __init__(self, base_image: str, logs: Path) -> None:
        self.logs = logs
        self.ports = {
            name: reserve_port()
            for name in (
                "DEVICE_A_PORT",
                "DEVICE_B_PORT",
                "LINK_A_STATE_PORT",
                "LINK_B_STATE_PORT",
            )
        }
        server_port = reserve_port()  # replicas take the ports from here up
        self.env = {
            **os.environ,
            **{k: str(v) for k, v in self.ports.items()},
            "SERVER_HTTP_PORTS": f"{server_port}-{server_port + 9}",
            "SEMLINK_TAG": TAG,
            "SEMLINK_BASE_IMAGE": base_image,
        }
        self.cmd = [*compose_command(), "-p", PROJECT, "-f", str(ROOT / "docker-compose.yml")]

    def __call__(self, *args: str, timeout: float = 300, check: bool = True):
        return sh(*self.cmd, *args, env=self.env, timeout=timeout, check=check)

    def url(self, port: str) -> str:
        return f"http://127.0.0.1:{self.ports[port]}"

    def containers(self, service: str) -> list[str]:
        return self("ps", "-q", service).stdout.split()

    def health(self, service: str) -> str:
        """The service's health: every replica's, ``healthy`` only if all are."""
        states = {
            sh("docker", "inspect", "--format", "{{.State.Health.Status}}", c).stdout.strip()
            for c in self.containers(service)
        }
        return states.pop() if len(states) == 1 else ",".join(sorted(states))

    def wait_healthy(self, *services: str, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            states = {s: self.health(s) for s in services}
            if all(v == "healthy" for v in states.values()):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"not healthy after {timeout_s:.0f} s: {states}")
            time.sleep(1)

    def save_logs(self) -> None:
        proc = self("logs", "--no-color", timeout=60, check=False)
        (self.logs / "compose.log").write_text(proc.stdout + proc.stderr)


@pytest.fixture(scope="module")
def stack(images, engine, tmp_path_factory):
    s = ComposeStack(engine, tmp_path_factory.mktemp("compose"))
    s("down", "--volumes", "--remove-orphans", check=False)
    try:
        s("up", "--detach", "--no-build")
        s.wait_healthy("server", "link-a", "link-b", "device-a", "device-b")
        yield s
    finally:
        s.save_logs()
        s("down", "--volumes", "--remove-orphans", check=False)


@pytest.fixture(scope="module")
def digits():
    return load_digits_canvas("test")


def classify(url: str, image: np.ndarray, request_id: str) -> dict:
    body, headers = build_infer_request({"image": image[None]}, request_id=request_id)
    resp = httpx.post(
        f"{url}/v2/models/digits-vit/infer", content=body, headers=headers, timeout=30
    )
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    label = int(next(o for o in doc["outputs"] if o["name"] == "label")["data"][0])
    return {"label": label, **doc["parameters"]}


def delivered(url: str) -> int:
    return httpx.get(f"{url}/state", timeout=5).json()["uplink"]["delivered_bytes"]


def secrets_in(ref: str) -> list[str]:
    """Files in any layer of ``ref`` that hold a PEM private key. Compiled code is skipped: OpenSSL,
    GnuTLS and ONNX Runtime carry test vectors in their binaries, not secrets of ours."""
    found = []
    save = subprocess.Popen(["docker", "save", ref], stdout=subprocess.PIPE)
    with tarfile.open(fileobj=save.stdout, mode="r|") as image:
        for member in image:
            if not member.name.endswith("layer.tar"):
                continue
            with tarfile.open(fileobj=image.extractfile(member), mode="r|") as layer:
                for f in layer:
                    if not f.isfile() or f.size > 1 << 20:
                        continue
                    head = layer.extractfile(f).read()  # type: ignore[union-attr]
                    if not head.startswith(b"\x7fELF") and PEM_KEY.search(head):
                        found.append(f.name)
    assert save.wait() == 0
    return found


def test_images_are_small_torch_free_unprivileged_and_hold_no_secret(images):
    for role, ref in images.items():
        info = json.loads(sh("docker", "image", "inspect", ref).stdout)[0]
        size_mb = info["Size"] / 1e6
        print(f"{ref}: {size_mb:.0f} MB")
        if role in ("server", "device"):
            assert size_mb <= IMAGE_LIMIT_MB, f"{ref} is {size_mb:.0f} MB"
        assert info["Config"]["User"] == "semlink"
        assert info["Config"]["Healthcheck"]["Test"][0] == "CMD"
        probe = "import importlib.util as u; print(u.find_spec('torch'), u.find_spec('onnxruntime') is not None)"
        out = sh("docker", "run", "--rm", "--entrypoint", "python3", ref, "-c", probe).stdout
        assert out.split() == ["None", "True"], out
        assert secrets_in(ref) == []
        env = dict(e.split("=", 1) for e in info["Config"]["Env"])
        assert not [k for k, v in env.items() if SECRET_NAME.search(k) and v], env


def test_both_devices_answer_through_their_link_containers(stack, digits):
    links = {"a": stack.url("LINK_A_STATE_PORT"), "b": stack.url("LINK_B_STATE_PORT")}
    devices = {"a": stack.url("DEVICE_A_PORT"), "b": stack.url("DEVICE_B_PORT")}
    for name, url in devices.items():
        before = delivered(links[name])
        answers = [classify(url, digits.images[i], f"e2e-{name}-{i}") for i in range(REQUESTS)]
        after = delivered(links[name])
        accuracy = np.mean([a["label"] == digits.labels[i] for i, a in enumerate(answers)])
        assert accuracy >= 0.85, f"device {name}: accuracy {accuracy:.2f}"
        assert all(a["exit"] == "server" and not a["degraded"] for a in answers)
        sent = sum(a["request_bytes"] for a in answers)
        assert sent <= after - before <= sent * 1.5 + 300 * REQUESTS
        budget = {"a": 0.25, "b": 0.5}[name]  # the compose defaults
        assert {a["budget"] for a in answers} == {budget}


def test_devices_degrade_while_the_server_is_away_and_recover_when_it_returns(stack, digits):
    url = stack.url("DEVICE_A_PORT")
    stack("stop", "--timeout", "10", "server")
    try:
        answers = [classify(url, digits.images[i], f"e2e-down-{i}") for i in range(6)]
        assert all(a["degraded"] and a["exit"] == "device" for a in answers), answers
        labels = [a["label"] for a in answers]
        assert np.mean(np.array(labels) == digits.labels[:6]) >= 0.5  # still real answers
    finally:
        stack("start", "server")
    stack.wait_healthy("server")
    t0 = time.monotonic()
    while True:
        a = classify(url, digits.images[0], "e2e-back")
        if not a["degraded"] and a["exit"] == "server":
            break
        assert time.monotonic() - t0 < 15, "the device did not offload again within 15 s"
        time.sleep(0.25)
    print(f"offloading again {time.monotonic() - t0:.1f} s after the server was healthy")
    stack.wait_healthy("device-a", "device-b")


def _run_detached(ref: str, *args: str, env: dict[str, str], mounts: tuple[str, ...] = ()) -> str:
    cmd = ["docker", "run", "--detach", "--restart", "on-failure:3"]
    cmd += [a for m in mounts for a in ("--volume", m)]
    cmd += [a for k, v in env.items() for a in ("--env", f"{k}={v}")]
    cmd += ["--health-start-period", "1s", "--health-interval", "1s", "--health-retries", "2"]
    return sh(*cmd, ref, *args).stdout.strip()


def _settled(container: str, line: str, timeout_s: float = 60) -> tuple[dict, str]:
    """The container's state and log once it stopped restarting or was marked unhealthy, and
    ``line`` is in its log."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = json.loads(sh("docker", "inspect", container).stdout)[0]
        logs = sh("docker", "logs", container)
        log = logs.stdout + logs.stderr
        s = state["State"]
        stopped = s["Status"] == "exited" and state["RestartCount"] >= 3
        if line in log and (stopped or s.get("Health", {}).get("Status") == "unhealthy"):
            return state, log
        assert time.monotonic() < deadline, f"{container} did not settle: {s}\n{log[-2000:]}"
        time.sleep(0.5)


def test_bad_configuration_exits_or_reports_unhealthy_with_a_clear_line(images, tmp_path):
    bad_trace = tmp_path / "bad.trace"
    bad_trace.write_text("0\n12\nnot-a-number\n")
    bad_trace.chmod(0o644)
    tmp_path.chmod(0o755)
    cases = [
        (
            images["server"],
            {"SEMLINK_SERVER_MODEL_REPOSITORY": "/nowhere"},
            ("--insecure",),
            (),
            "model repository /nowhere does not exist",
        ),
        (
            images["link"],
            {"SEMLINK_LINK_UPLINK": "/traces/custom/bad.trace"},
            (),
            (f"{tmp_path}:/traces/custom:ro",),
            "bad.trace",
        ),
        (
            images["device"],
            {"SEMLINK_DEVICE_SERVER": "nowhere.invalid:8001", "SEMLINK_DEVICE_SERVER_PROBE_S": "1"},
            ("--insecure",),
            (),
            "server nowhere.invalid:8001 is unreachable",
        ),
    ]
    containers = []
    try:
        for ref, env, args, mounts, line in cases:
            containers.append(c := _run_detached(ref, *args, env=env, mounts=mounts))
            state, log = _settled(c, line)
            print(f"{ref}: {next(ln for ln in log.splitlines() if line in ln)}")
            # exits: stopped after the policy's three restarts, each with a growing back-off;
            # runs: unhealthy, not restarted
            assert state["RestartCount"] <= 3
    finally:
        for c in containers:
            sh("docker", "rm", "--force", c, check=False)


def test_scaled_servers_share_the_load_and_a_killed_replica_loses_nothing(stack, digits):
    """`--scale server=3`: both devices reach every replica through their own link, spread
    their requests over them, and a replica killed under load costs no request."""
    import concurrent.futures as cf

    stack("up", "--detach", "--no-build", "--scale", "server=3", timeout=300)
    try:
        stack.wait_healthy("server", timeout_s=180)
        devices = [stack.url("DEVICE_A_PORT"), stack.url("DEVICE_B_PORT")]
        deadline = time.monotonic() + 30
        while not all(
            httpx.get(f"{u}/v2/health/ready", timeout=5).json()["replicas_ready"] == 3
            for u in devices
        ):
            assert time.monotonic() < deadline, "devices did not find the three replicas"
            time.sleep(0.5)
        victim = stack.containers("server")[0]

        def one(i: int) -> dict:
            url = devices[i % 2]
            body, headers = build_infer_request(
                {"image": digits.images[i % len(digits.images)][None]}, request_id=f"scale-{i}"
            )
            try:
                resp = httpx.post(
                    f"{url}/v2/models/digits-vit/infer", content=body, headers=headers, timeout=30
                )
            except httpx.HTTPError as exc:
                return {"status": 0, "error": repr(exc)}
            return {"status": resp.status_code, **resp.json().get("parameters", {})}

        n = 240
        with cf.ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(one, i) for i in range(n)]
            time.sleep(2.0)
            sh("docker", "kill", victim)  # no drain: SIGKILL mid-stream
            answers = [f.result() for f in futures]
        lost = [a for a in answers if a["status"] != 200]
        assert not lost, lost[:3]
        replicas = {a["server_replica"] for a in answers if a.get("exit") == "server"}
        assert len(replicas) >= 2, replicas
        degraded = sum(bool(a.get("degraded")) for a in answers)
        print(f"{n} requests over {len(replicas)} replicas, one killed: {degraded} degraded")
        assert degraded <= n // 20
    finally:
        stack("up", "--detach", "--no-build", "--scale", "server=1", timeout=300)
        stack.wait_healthy("server", timeout_s=180)
