"""Runtime configuration of a device: flags or ``SEMLINK_DEVICE_*`` environment variables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from semlink.device.replicas import Target, parse_targets
from semlink.runtime.front_settings import HttpFrontSettings
from semlink.runtime.images import ImageLimits
from semlink.runtime.repository import DEFAULT_REPOSITORY


def default_decode_workers() -> int:
    """Threads for decoding uploads: one per CPU this process may use beyond the one the event
    loop and the model need, at least 1 and at most 4 (Pillow releases the GIL while it decodes,
    so they run in parallel; more threads than CPUs would only take the event loop's)."""
    return max(1, min(4, len(os.sched_getaffinity(0)) - 1))


class DeviceSettings(HttpFrontSettings):
    """Runtime configuration of a device; every field is also a ``semlink device`` flag."""

    model_config = SettingsConfigDict(env_prefix="SEMLINK_DEVICE_", protected_namespaces=())

    server: str = Field(
        "127.0.0.1:8001",
        description="server (or link emulator) gRPC address HOST:PORT; several replicas as a "
        "comma-separated list or a name that resolves to several addresses (re-resolved every "
        "resolve_s)",
    )
    proxy: str | None = Field(
        None,
        description="HOST:PORT of the link emulator to reach the servers through (HTTP "
        "CONNECT): one shaped uplink to every replica",
    )
    balance: Literal["expected-delay", "round-robin"] = Field(
        "expected-delay",
        description="which replica gets a request: least expected network + queueing delay, "
        "or round robin",
    )
    transport: Literal["stream", "unary"] = Field(
        "stream",
        description="offloads on one ModelStreamInfer stream per replica (about 0.3 ms less per "
        "round trip), or a ModelInfer call each (for servers without the streaming extension)",
    )
    resolve_s: float = Field(
        2.0, gt=0.0, le=3600.0, description="seconds between DNS lookups of the server names"
    )
    link_state_url: str | None = Field(
        None, description="link emulator state endpoint, e.g. http://127.0.0.1:9002/state"
    )
    model_repository: Path = Field(DEFAULT_REPOSITORY)
    model_name: str = Field("digits-vit")
    model_version: str = Field("", description="empty = highest")
    host: str = Field("127.0.0.1")
    http_port: int = Field(8080, ge=0, le=65535)
    budget: float = Field(0.25, gt=0.0, le=1.0, description="default token budget alpha")
    rate: float = Field(0.25, gt=0.0, le=1.0, description="default JSCC rate r (JSCC pipelines)")
    channel: Literal["awgn", "rayleigh", "none"] = Field(
        "awgn", description="channel the server simulates for JSCC symbols: awgn | rayleigh | none"
    )
    token_format: Literal["fp16", "int8", "fp32"] = Field("fp16", description="fp16 | int8 | fp32")
    deadline_ms: float = Field(
        2000.0, gt=0.0, le=600_000.0, description="default end-to-end deadline"
    )
    controller: Literal["fixed", "planner", "lyapunov", "rl", "threshold", "growth", "local"] = (
        Field(
            "fixed",
            description="what chooses each frame's option; each model says which fit it: fixed "
            "(--option, or --budget/--rate for token pipelines) | planner | lyapunov | rl (any-split "
            "networks, e.g. scene-split; lyapunov also JSCC pipelines) | rl | threshold | growth "
            "(early exits) | local (any model: the device answers alone)",
        )
    )
    option: str | None = Field(
        None,
        description="fixed: the option every frame takes, e.g. exit2, s1:a0.25, s1:a0.25:r0.125, "
        "jpeg75 (default: the budget and rate below at the model's first split)",
    )
    exit_threshold: float = Field(
        0.9, ge=0.0, le=1.01, description="threshold/growth: exit when confidence reaches this"
    )
    grow_threshold: float = Field(
        0.0, ge=-1.0, le=1.0, description="growth: offload when confidence grows less than this"
    )
    channel_budget: float = Field(
        0.02, gt=0.0, description="lyapunov: long-term average channel uses per pixel"
    )
    energy_budget_j: float | None = Field(
        None, gt=0.0, description="lyapunov: average device energy per request"
    )
    latency_budget_ms: float | None = Field(
        None, gt=0.0, description="lyapunov: average latency per request"
    )
    lyapunov_v: float = Field(10.0, gt=0.0, description="lyapunov: accuracy weight V")
    lyapunov_mu: float = Field(100.0, gt=0.0, description="lyapunov: queue step mu")
    link_utilisation: float = Field(
        0.8,
        gt=0.0,
        le=1.0,
        description="lyapunov: the share of the link's rate frames may use on average",
    )
    device_utilisation: float = Field(
        0.9,
        gt=0.0,
        le=1.0,
        description="lyapunov: the share of the time between frames the device may compute",
    )
    max_waiting: int = Field(
        32,
        ge=0,
        le=4096,
        description="frames that may wait for the device; one more is refused at once",
    )
    inline_max_ms: float = Field(
        2.0,
        ge=0.0,
        le=100.0,
        description="run the model on the event loop while a stretch takes under this long "
        "(saves a thread hop); slower ones run on the worker thread; 0 = never",
    )
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(
        ImageLimits.pixels,
        ge=2,
        description="uploads must have fewer pixels (width x height) than this; 400 otherwise",
    )
    max_image_side: int = Field(
        ImageLimits.side,
        ge=2,
        description="each side of an upload must be shorter than this (pixels)",
    )
    max_image_aspect: float = Field(
        ImageLimits.aspect,
        gt=1.0,
        le=1e6,
        description="an upload's long side must be less than this many times its short side",
    )
    decode_workers: int = Field(
        default_factory=default_decode_workers,
        ge=1,
        le=64,
        description="uploads decoded at once, each on a thread of its own (default: the CPUs "
        "this process may use less one, 1 to 4); more wait, and one that cannot start before "
        "its deadline is answered 503 at once",
    )
    max_concurrent_per_client: int = Field(
        64, ge=0, description="HTTP requests in flight per client address (0 = no limit); 429 above"
    )
    state_poll_ms: float = Field(
        500.0,
        gt=0.0,
        description="how often the device reads the link's state (each read costs CPU)",
    )
    server_probe_s: float = Field(
        1.0,
        gt=0.0,
        le=3600.0,
        description="seconds between ServerReady probes of every replica (readiness, load, "
        "network time)",
    )

    device_profile: Literal["none", "phone", "pi4", "pi-zero-2", "sensor", "camera"] = Field(
        "none",
        description="run this process under a CPU quota, a real slower device of a class "
        "calibrated to published figures (phone 0.66 of a core, pi4 0.22, pi-zero-2 0.083, "
        "sensor 0.0195; camera 0.1), with the smallest quota period the kernel accepts (needs "
        "root for cgroups; in containers use the CPU limit instead)",
    )
    cpu_quota: float | None = Field(
        None,
        gt=0.0,
        le=64.0,
        description="CPU share (cores) of the quota, instead of a profile's",
    )
    dashboard: bool = Field(
        False,
        description="serve the live dashboard at /dashboard: it shows every client's recent "
        "images and answers to whoever can reach this port (behind the API keys when they are set)",
    )
    breaker_failures: int = Field(
        3, ge=1, le=1000, description="consecutive failed offloads that open the circuit breaker"
    )
    breaker_reset_s: float = Field(
        2.0, gt=0.0, le=300.0, description="seconds the breaker stays open before a trial request"
    )
    insecure: bool = Field(
        False, description="plaintext gRPC to the server: trusted networks and tests only"
    )
    tls_ca: Path | None = Field(None, description="PEM CA that signed the server's certificate")
    tls_cert: Path | None = Field(None, description="PEM client certificate (mutual TLS)")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert")
    tls_server_name: str | None = Field(
        None, description="name to verify in the server's certificate, if not the address's host"
    )

    def image_limits(self) -> ImageLimits:
        """The geometry an upload's header may announce."""
        return ImageLimits(self.max_image_pixels, self.max_image_side, self.max_image_aspect)

    def check_transport(self) -> None:
        """Refuses plaintext gRPC unless ``insecure`` says so explicitly."""
        if not self.insecure and self.tls_ca is None:
            raise ValueError(
                "the device refuses to send to the server without TLS: pass --tls-ca (and "
                "--tls-cert/--tls-key for mutual TLS; `semlink certs --out DIR` makes a development "
                "set), or --insecure on a trusted network"
            )

    @field_validator("server")
    @classmethod
    def _addr(cls, v: str) -> str:
        parse_targets(v)
        return v

    @field_validator("proxy")
    @classmethod
    def _proxy(cls, v: str | None) -> str | None:
        if v is not None:
            Target.parse(v)
        return v
