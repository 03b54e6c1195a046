"""Runtime configuration of the edge server: flags or ``SEMLINK_SERVER_*`` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_REPOSITORY = Path(__file__).resolve().parent.parent / "zoo"


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SEMLINK_SERVER_", protected_namespaces=())

    model_repository: Path = Field(
        DEFAULT_REPOSITORY, description="folder of <model>/<version>/manifest.json"
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
    max_queue: int = Field(
        1024, ge=1, description="waiting requests per model before shedding load"
    )
    max_message_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="largest gRPC message / HTTP body"
    )
    threads: int = Field(2, ge=1, le=64, description="ONNX Runtime worker threads")
    drain_seconds: float = Field(
        10.0, ge=0.0, description="grace period for in-flight requests on shutdown"
    )
