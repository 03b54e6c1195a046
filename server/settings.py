"""Runtime configuration of the edge server: flags or ``SEMLINK_SERVER_*`` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from semlink.runtime.front_settings import HttpFrontSettings
from semlink.runtime.repository import DEFAULT_REPOSITORY


class ServerSettings(HttpFrontSettings):
    """Runtime configuration of the server; every field is also a ``semlink server`` flag."""

    model_config = SettingsConfigDict(env_prefix="SEMLINK_SERVER_", protected_namespaces=())

    model_repository: Path = Field(
        DEFAULT_REPOSITORY, description="folder of <model>/<version>/manifest.json"
    )
    models: list[str] = Field(
        default_factory=list,
        description="serve only these models of the repository (all of them when none is named); "
        "a name the repository does not hold stops the server",
    )
    host: str = Field("127.0.0.1", description="address to bind; 0.0.0.0 inside containers")
    grpc_port: int = Field(8001, ge=0, le=65535)
    http_port: int = Field(8000, ge=0, le=65535)
    max_batch_size: int = Field(16, ge=1, le=1024)
    max_queue_delay_ms: float = Field(
        0.0,
        ge=0.0,
        le=1000.0,
        description="extra wait for a fuller batch; 0 = greedy (see server/batcher.py)",
    )
    inline_max_ms: float = Field(
        2.0,
        ge=0.0,
        le=100.0,
        description="a lone request on an idle model whose batches take under this long runs on "
        "the event loop, skipping the queue and the thread hop; 0 = never (server/batcher.py)",
    )
    max_queue: int = Field(
        1024, ge=1, description="waiting requests per model before shedding load"
    )
    max_message_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="largest gRPC message / HTTP body"
    )
    max_concurrent_per_client: int = Field(
        256,
        ge=0,
        description="HTTP requests in flight per client address (0 = no limit); 429 above",
    )
    threads: int = Field(2, ge=1, le=64, description="ONNX Runtime worker threads")
    cpu_quota: float | None = Field(
        None,
        gt=0.0,
        le=64.0,
        description="run under a CPU quota of this many cores (cgroups, root): a weaker replica "
        "for tests and capacity benchmarks",
    )
    drain_seconds: float = Field(
        10.0, ge=0.0, description="grace period for in-flight requests on shutdown"
    )
    insecure: bool = Field(
        False, description="serve gRPC without TLS: trusted networks and tests only, logged loudly"
    )
    tls_cert: Path | None = Field(None, description="PEM certificate of the gRPC port")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert")
    tls_client_ca: Path | None = Field(
        None, description="PEM CA: only clients with a certificate it signed (mutual TLS)"
    )

    def check_transport(self) -> None:
        """Refuses plaintext gRPC unless ``insecure`` says so explicitly."""
        if self.insecure:
            return
        if self.tls_cert is None or self.tls_key is None:
            raise ValueError(
                "the server refuses to serve gRPC without TLS: pass --tls-cert and --tls-key "
                "(and --tls-client-ca for mutual TLS; `semlink certs --out DIR` makes a development "
                "set), or --insecure on a trusted network"
            )
