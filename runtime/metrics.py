"""Prometheus metrics shared by the three processes: one registry per process object (so several
can live in one test process), exposed on ``GET /metrics`` in the text format."""

from __future__ import annotations

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
FRACTION_BUCKETS = (0.05, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0)


def mount(app: FastAPI, registry: CollectorRegistry) -> None:
    """Adds ``GET /metrics`` serving ``registry``."""

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        """The Prometheus text exposition of the registry."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
