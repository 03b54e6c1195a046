"""The device's Prometheus metrics: what each request sent and cost, and the controller's state."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from semlink.runtime.metrics import FRACTION_BUCKETS, LATENCY_BUCKETS

if TYPE_CHECKING:
    from semlink.device.answer import Answer


class DeviceMetrics:
    """The device's Prometheus metrics, in a registry of its own."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.registry = r = CollectorRegistry()
        self._answers(r)
        self._decisions(r)
        self._wire_and_link(r)

    def _answers(self, r: CollectorRegistry) -> None:
        """What was answered, how fast, and what crossed the link."""
        self.requests = Counter(
            "semlink_device_requests",
            "Answers given, by where they came from",
            ["model", "outcome"],
            registry=r,
        )
        self.latency = Histogram(
            "semlink_device_request_duration_seconds",
            "End-to-end time on the device",
            ["model", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "semlink_device_tokens_sent", "Patch tokens sent to the server", ["model"], registry=r
        )
        self.payload = Counter(
            "semlink_device_payload_bytes", "Raw tensor bytes sent", ["model"], registry=r
        )
        self.request_bytes = Counter(
            "semlink_device_request_bytes",
            "Serialised gRPC request bytes sent",
            ["model"],
            registry=r,
        )

    def _decisions(self, r: CollectorRegistry) -> None:
        """What the controller chose and what each frame cost the device."""
        self.exit_decisions = Counter(
            "semlink_device_exit_decisions",
            "Early-exit networks: where each request stopped (device blocks run) and what the "
            "controller did there (exit, offload)",
            ["model", "split", "action"],
            registry=r,
        )
        self.budget = Histogram(
            "semlink_device_budget_ratio",
            "Token budget alpha chosen",
            ["model"],
            buckets=FRACTION_BUCKETS,
            registry=r,
        )
        self.rate = Histogram(
            "semlink_device_rate_ratio",
            "JSCC rate r chosen",
            ["model"],
            buckets=FRACTION_BUCKETS,
            registry=r,
        )
        self.channel_uses = Histogram(
            "semlink_device_channel_uses_ratio",
            "JSCC channel uses per pixel",
            ["model"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.5),
            registry=r,
        )
        self.options = Counter(
            "semlink_device_options",
            "Options taken: what was done (exit, local, offload, upload) after how many device blocks",
            ["model", "action", "split"],
            registry=r,
        )
        self.frames = Counter(
            "semlink_device_frames",
            "Frames by whether their answer met their deadline (met, missed), and frames answered "
            "late or refused before the device started on them (late, dropped)",
            ["model", "deadline"],
            registry=r,
        )
        self.device_cpu = Histogram(
            "semlink_device_cpu_seconds",
            "The device's CPU time on one frame (decoding and model)",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queued = Histogram(
            "semlink_device_queued_seconds",
            "Time a frame waited for the device before its work started",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    def _wire_and_link(self, r: CollectorRegistry) -> None:
        """Replies, the controller's virtual queues and the link's reported state."""
        self.reply_bytes = Counter(
            "semlink_device_reply_bytes",
            "Serialised gRPC reply bytes received",
            ["model"],
            registry=r,
        )
        self.queue = Gauge(
            "semlink_device_virtual_queue",
            "Controller virtual queue Z",
            ["model", "constraint"],
            registry=r,
        )
        self.bandwidth = Gauge(
            "semlink_device_link_bandwidth_bits_per_second",
            "Link bandwidth reported by the link",
            registry=r,
        )
        self.snr = Gauge(
            "semlink_device_link_snr_db", "Channel SNR reported by the link", registry=r
        )
        self.rtt = Gauge(
            "semlink_device_link_rtt_seconds", "Round-trip time reported by the link", registry=r
        )

    def record(self, a: Answer) -> None:
        """Counts one answer: outcome, latency, tokens, bytes and the decisions taken."""
        outcome = "degraded" if a.degraded else a.exit
        m = self.model
        self.requests.labels(m, outcome).inc()
        self.latency.labels(m, outcome).observe(a.timing_ms["total_ms"] / 1000.0)
        self.tokens.labels(m).inc(a.tokens_sent)
        self.payload.labels(m).inc(a.payload_bytes)
        self.request_bytes.labels(m).inc(a.request_bytes)
        self.reply_bytes.labels(m).inc(a.reply_bytes)
        action = a.option.split(":")[0].rstrip("0123456789") if a.option != "local" else "local"
        self.options.labels(
            m, {"s": "offload", "jpeg": "upload"}.get(action, action), str(a.split)
        ).inc()
        self.frames.labels(m, "met" if a.on_time else "missed").inc()
        self.device_cpu.labels(m).observe(a.device_cpu_ms / 1000.0)
        self.queued.labels(m).observe(a.queued_ms / 1000.0)
        if a.exits:
            self.exit_decisions.labels(m, str(a.split), a.exits[-1]["action"]).inc()
        self.budget.labels(m).observe(a.budget)
        if a.rate is not None:
            self.rate.labels(m).observe(a.rate)
        if a.channel_uses is not None:
            self.channel_uses.labels(m).observe(a.channel_uses)
        for key, value in a.controller.items():
            if key.startswith("Z_"):
                self.queue.labels(m, key[2:]).set(value)
        self._channel(a.channel)

    def missed(self, kind: str) -> None:
        """Counts a frame answered ``late`` or ``dropped`` before the device started on it."""
        self.frames.labels(self.model, kind).inc()

    def _channel(self, c: dict[str, Any]) -> None:
        if c.get("bandwidth_bps") is not None:
            self.bandwidth.set(c["bandwidth_bps"])
        if c.get("snr_db") is not None:
            self.snr.set(c["snr_db"])
        if c.get("rtt_ms") is not None:
            self.rtt.set(c["rtt_ms"] / 1000.0)
