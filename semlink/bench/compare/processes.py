"""The processes of ``semlink bench compare``: the semlink server and the baseline servers every
system shares, and each system's link (and device) on each link."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import httpx

from semlink.bench.compare.clients import tls_verify
from semlink.bench.compare.config import SYSTEMS, CompareBenchConfig, Link, System
from semlink.procs import Processes, Stack, reserve_port
from semlink.runtime.repository import DEFAULT_REPOSITORY, shipped_pipeline


@dataclass
class Endpoint:
    """Where one system on one link takes requests, once its processes are ready."""

    url: str
    state_url: str | None  # the link's state (None: the system does not use a link)
    names: tuple[str, ...]  # its processes
    wait: Callable[[], None]


@dataclass
class Bench:
    """The processes every system shares: the semlink server and the baseline servers."""

    cfg: CompareBenchConfig
    procs: Processes
    base: Stack
    baselines: dict[tuple[str, str], int] = field(default_factory=dict)  # (kind, model) -> port

    @property
    def scheme(self) -> str:
        """``https`` on mutual TLS, else ``http``."""
        return "https" if self.cfg.tls else "http"

    def start_baselines(self) -> None:
        """One FastAPI or LitServe server per (kind, model) the JPEG systems need, started
        without waiting (:meth:`wait_baselines` waits)."""
        tls = self.base.security_args("server") if self.cfg.tls else []
        for s in SYSTEMS:
            key = (s.kind, s.model)
            if not s.jpeg or key in self.baselines:
                continue
            port = self.baselines[key] = reserve_port()
            name = f"baseline-{s.kind}-{s.model}"
            self.procs.start(
                name,
                "baseline-server",
                s.kind,
                "--port",
                str(port),
                "--model",
                shipped_pipeline(self.cfg.dataset, s.model),
                "--model-repository",
                str(DEFAULT_REPOSITORY),
                *tls,
            )

    def wait_baselines(self) -> None:
        """Waits until every baseline server answers its health check."""
        with self.http() as client:
            for (kind, model), port in self.baselines.items():
                url = f"{self.scheme}://127.0.0.1:{port}/health"
                self.procs.wait_http(f"baseline-{kind}-{model}", url, client=client)

    def http(self) -> httpx.Client:
        """A client that presents the device certificate on HTTPS (the JPEG uploads)."""
        return httpx.Client(timeout=120, **self.tls_kw())

    @property
    def pki(self) -> dict[str, str] | None:
        """Paths of the development PKI the clients use (None on plaintext)."""
        if not self.cfg.tls:
            return None
        return {k: str(v) for k, v in self.base.pki.items()}

    def tls_kw(self) -> dict[str, Any]:
        """httpx's ``verify`` for this benchmark's transport."""
        return tls_verify(self.pki)

    def start_system(
        self, system: System, link: Link | None, tag: str, profile_name: str | None = None
    ) -> Endpoint:
        """Starts ``system``'s link (and for semlink its device, under the device profile or
        ``profile_name``), without waiting."""
        profile = ("--device-profile", profile_name or self.cfg.device_profile)
        model = shipped_pipeline(self.cfg.dataset, system.model)
        if system.kind in ("semlink", "local"):
            stack = replace(self.base.sibling(f"-{tag}"), model=model)
            if link is not None:
                stack.start_link(*link.args, wait=False)
            budget = system.latency_budget_share
            latency = (
                ("--latency-budget-ms", f"{budget * self.cfg.deadline_ms:g}") if budget else ()
            )
            stack.start_device(
                *system.device_args,
                *latency,
                *profile,
                through_link=link is not None,
                wait=False,
            )

            def ready() -> None:
                if link is not None:
                    stack.wait_link()
                stack.wait_device()

            names = (f"device-{tag}",) + ((f"link-{tag}",) if link is not None else ())
            state = stack.state_url if link is not None else None
            return Endpoint(stack.device_url, state, names, ready)
        assert link is not None
        port, state_port = reserve_port(), reserve_port()
        name = f"link-{tag}"
        upstream = self.baselines[(system.kind, system.model)]
        self.procs.start(
            name,
            "link",
            "--listen",
            f"127.0.0.1:{port}",
            "--upstream",
            f"127.0.0.1:{upstream}",
            "--state-port",
            str(state_port),
            *link.args,
        )
        state_url = f"http://127.0.0.1:{state_port}/state"
        return Endpoint(
            f"{self.scheme}://127.0.0.1:{port}",
            state_url,
            (name,),
            lambda: self.procs.wait_http(name, state_url),
        )
