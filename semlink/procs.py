"""Child processes for the demo, the benchmarks and the integration tests: a server, link
emulator and device on free loopback ports, each with a log file, all stopped on exit.

Each child leads a process group of its own, and stopping it signals the whole group, so what a
child starts (LitServe's workers, multiprocessing helpers) stops with it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

STARTUP_TIMEOUT_S = 90.0


def split_cores() -> tuple[set[int] | None, set[int]]:
    """This machine's cores as (the system under test's, the load generator's): the first core
    and the rest, or ``(None, all)`` on a single core (nothing to separate)."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return None, set(cores)
    return {cores[0]}, set(cores[1:])


def start_replica(
    procs: Processes,
    name: str,
    grpc_port: int,
    http_port: int,
    quota: float | None = None,
    models: tuple[str, ...] = (),
) -> None:
    """A plaintext ``semlink server`` on loopback with one worker thread, under a CPU quota of
    ``quota`` cores when given, serving ``models`` of the zoo (every one when empty: loading all
    of them took a replica at 0.05 of a core 16 s), waited for until it is ready."""
    procs.start(
        name,
        "server",
        "--grpc-port",
        str(grpc_port),
        "--http-port",
        str(http_port),
        "--threads",
        "1",
        "--insecure",
        *(["--cpu-quota", str(quota)] if quota else []),
        *(["--models", *models] if models else []),
    )
    procs.wait_http(name, f"http://127.0.0.1:{http_port}/v2/health/ready")


@contextlib.contextmanager
def pinned(cpus: set[int]):  # type: ignore[no-untyped-def]
    """Runs the block with every thread of this process on the cores ``cpus`` (the load
    generator off the server's cores), restoring each thread's cores after."""
    before = {}
    for tid in map(int, os.listdir("/proc/self/task")):
        with contextlib.suppress(OSError):
            before[tid] = os.sched_getaffinity(tid)
            os.sched_setaffinity(tid, cpus)
    try:
        yield
    finally:
        for tid, mask in before.items():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, mask)


_HELD: dict[int, socket.socket] = {}  # port -> the socket that keeps it ours


def reserve_port() -> int:
    """A loopback TCP port for a child to listen on, held by this process for as long as it runs.

    Picking a port by binding port 0 and closing the socket leaves a window in which the kernel
    hands the same port to the next pick, or another process binds it or takes it as the
    source port of a connection, before the child binds it ("address already in use"). Here
    the socket stays bound with ``SO_REUSEADDR`` and never listens: no other port-0 pick and no
    outgoing connection can get the port, while the child, which sets ``SO_REUSEADDR`` too (as
    uvicorn, asyncio's servers and gRPC do), binds and listens on it (Linux lets sockets that
    share ``SO_REUSEADDR`` bind one port while none of them listens). A child that stops and
    starts again on the same port (a restarted replica) finds it still free.
    """
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    _HELD[port] = s
    return port


class Processes:
    """Named ``semlink`` child processes; :meth:`stop` terminates (then kills) them, none orphaned."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.children: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *argv: str, cpus: set[int] | None = None) -> None:
        """Starts ``semlink *argv`` as ``name``, on the CPU cores ``cpus`` only when given."""
        log = (self.log_dir / f"{name}.log").open("w")
        self.children[name] = subprocess.Popen(
            [sys.executable, "-m", "semlink.cli", *argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopping it stops its children
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )

    def cpu_seconds(self, name: str) -> float:
        """CPU time (user + system, every thread) the child ``name`` has used so far (Linux)."""
        fields = Path(f"/proc/{self.children[name].pid}/stat").read_text().rsplit(")", 1)[1]
        utime, stime = fields.split()[11:13]
        return (int(utime) + int(stime)) / os.sysconf("SC_CLK_TCK")

    def log_tail(self, name: str, chars: int = 3000) -> str:
        """The end of a child's log."""
        return (self.log_dir / f"{name}.log").read_text()[-chars:]

    def check_alive(self) -> None:
        """Raises with the log's tail if any child has exited."""
        for name, proc in self.children.items():
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with code {proc.returncode}; its log ends with:\n{self.log_tail(name)}"
                )

    def wait_http(
        self,
        name: str,
        url: str,
        timeout_s: float = STARTUP_TIMEOUT_S,
        client: httpx.Client | None = None,
    ) -> None:
        """Waits until ``url`` answers 200, failing fast (with the log) if the process dies.
        One client polls (``client``, for a TLS server's CA: a client made per poll would load
        the CA bundle each time, seconds of CPU over a run's polls)."""
        deadline = time.monotonic() + timeout_s
        with contextlib.ExitStack() as stack:
            poll = client or stack.enter_context(httpx.Client())
            while time.monotonic() < deadline:
                self.check_alive()
                with contextlib.suppress(httpx.HTTPError):
                    if poll.get(url, timeout=1.0).status_code == 200:
                        return
                time.sleep(0.1)
        raise TimeoutError(
            f"{name} not ready at {url} after {timeout_s:g} s; its log ends with:\n{self.log_tail(name)}"
        )

    def kill(self, name: str) -> None:
        """SIGKILL: no drain, no goodbye (fault injection)."""
        proc = self.children.pop(name)
        _signal_group(proc, signal.SIGKILL)
        proc.wait()

    def stop(self, *names: str) -> None:
        """SIGTERM to ``names`` (all children when none is named) at once, then waits for each
        to drain and exit (SIGKILL after 15 s)."""
        names = names or tuple(self.children)
        for n in names:
            if self.children[n].poll() is None:
                _signal_group(self.children[n], signal.SIGTERM)
        for n in names:
            proc = self.children.pop(n)  # a stopped child is no longer expected to be alive
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
            _signal_group(proc, signal.SIGKILL)  # whatever it started and left behind


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Sends ``sig`` to the child's process group (the child and whatever it started)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


@dataclass
class Stack:
    """Server, link and device wired together, on ports this process holds for them
    (:func:`reserve_port`)."""

    procs: Processes
    repository: Path | None = None
    model: str = "digits-vit"
    tls: bool = False
    """Mutual TLS on the device -> server hop with a fresh development PKI (else --insecure)."""
    ports: dict[str, int] = field(
        default_factory=lambda: {
            k: reserve_port() for k in ("grpc", "http", "link", "state", "device")
        }
    )
    pki: dict[str, Path] = field(default_factory=dict)
    suffix: str = ""
    """Appended to the link's and device's process names: several stacks can share one server."""
    flags: tuple[str, ...] = ()
    """semlink's global flags for every process started (e.g. ``--log-format json``)."""

    def sibling(self, suffix: str) -> Stack:
        """Another link and device on fresh ports, sharing this stack's server and PKI."""
        ports = {**self.ports, **{k: reserve_port() for k in ("link", "state", "device")}}
        return Stack(
            self.procs, self.repository, self.model, self.tls, ports, self.pki, suffix, self.flags
        )

    def security_args(self, role: str) -> list[str]:
        """The TLS (or --insecure) flags of ``role`` ("server" or "device")."""
        if not self.tls:
            return ["--insecure"]
        if not self.pki:
            from semlink.runtime.security import make_dev_pki

            self.pki = make_dev_pki(self.procs.log_dir / "pki")
        k = self.pki
        if role == "server":
            return ["--tls-cert", str(k["server_cert"]), "--tls-key", str(k["server_key"])] + [
                "--tls-client-ca",
                str(k["ca"]),
            ]
        return ["--tls-ca", str(k["ca"]), "--tls-cert", str(k["client_cert"])] + [
            "--tls-key",
            str(k["client_key"]),
        ]

    @property
    def device_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['device']}"

    @property
    def server_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['http']}"

    @property
    def state_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['state']}/state"

    def infer_url(self) -> str:
        return f"{self.device_url}/v2/models/{self.model}/infer"

    def link_state(self) -> dict:
        return httpx.get(self.state_url, timeout=2.0).json()

    def start_server(self, *extra: str, cpus: set[int] | None = None) -> None:
        repo = ["--model-repository", str(self.repository)] if self.repository else []
        self.procs.start(
            "server",
            *self.flags,
            "server",
            *repo,
            "--grpc-port",
            str(self.ports["grpc"]),
            "--http-port",
            str(self.ports["http"]),
            *self.security_args("server"),
            *extra,
            cpus=cpus,
        )
        self.procs.wait_http("server", f"{self.server_url}/v2/health/ready")

    def start_link(self, *extra: str, wait: bool = True) -> None:
        self.procs.start(
            f"link{self.suffix}",
            *self.flags,
            "link",
            "--listen",
            f"127.0.0.1:{self.ports['link']}",
            "--upstream",
            f"127.0.0.1:{self.ports['grpc']}",
            "--state-port",
            str(self.ports["state"]),
            *extra,
        )
        if wait:
            self.wait_link()

    def wait_link(self) -> None:
        self.procs.wait_http(f"link{self.suffix}", self.state_url)

    def start_device(
        self,
        *extra: str,
        through_link: bool = True,
        wait: bool = True,
        cpus: set[int] | None = None,
    ) -> None:
        repo = ["--model-repository", str(self.repository)] if self.repository else []
        target = self.ports["link"] if through_link else self.ports["grpc"]
        state = ["--link-state-url", self.state_url] if through_link else []
        self.procs.start(
            f"device{self.suffix}",
            *self.flags,
            "device",
            "--server",
            f"127.0.0.1:{target}",
            "--http-port",
            str(self.ports["device"]),
            "--model-name",
            self.model,
            *repo,
            *state,
            *self.security_args("device"),
            *extra,
            cpus=cpus,
        )
        if wait:
            self.wait_device()

    def wait_device(self) -> None:
        self.procs.wait_http(f"device{self.suffix}", f"{self.device_url}/v2/health/ready")

    def start_all(self, link_args: tuple[str, ...] = (), device_args: tuple[str, ...] = ()) -> None:
        self.start_server()
        self.start_link(*link_args)
        self.start_device(*device_args)
