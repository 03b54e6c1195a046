"""The server's Prometheus metrics: requests by outcome, latency, batch sizes, queue depth."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from semlink.runtime.metrics import LATENCY_BUCKETS


class ServerMetrics:
    """The server's Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "semlink_server_requests",
            "Inference requests by outcome",
            ["model", "outcome"],
            registry=r,
        )
        self.latency = Histogram(
            "semlink_server_request_duration_seconds",
            "Time in the server (queue + compute)",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "semlink_server_tokens_received", "Patch tokens received", ["model"], registry=r
        )
        self.batch = Histogram(
            "semlink_server_batch_size",
            "Requests per tail call",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.queue_depth = Gauge(
            "semlink_server_queue_depth",
            "Inference requests in the server now (queued or running): the autoscaling signal",
            registry=r,
        )
        self.service = Gauge(
            "semlink_server_service_seconds",
            "Recent compute time per request (EWMA), queueing excluded",
            registry=r,
        )
