"""The device's answer to one frame: the prediction and what it cost. One type that the HTTP front,
the stream, the metrics, the dashboard and the logs all read."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

# what became of a frame
SERVER = "server"  # the server answered the offload
DEVICE = "device"  # the device answered by itself, as planned
DEGRADED = "degraded"  # the offload failed: the device answered by itself
OUTCOMES = (SERVER, DEVICE, DEGRADED)

_SCALARS = (str, int, float, bool)


@dataclass
class Answer:
    """What the client gets: the prediction and what it cost."""

    request_id: str
    label: int
    probabilities: list[float]
    exit: str  # "server" | "device"
    degraded: bool
    degraded_reason: str | None
    option: str  # the option taken (exit2, s1:a0.25, jpeg75, local, ...)
    budget: float
    rate: float | None  # JSCC rate r; None where no rate applies
    split: int  # model blocks the device ran (0: the picture was uploaded)
    tokens_sent: int
    symbols_per_token: int | None  # JSCC: complex symbols per token (m)
    channel_uses: float | None  # JSCC: complex symbols per source value
    snr_db: float | None  # the SNR the receiver simulated (JSCC), or the link's
    kept_indices: list[int]
    payload_bytes: int  # tensor bytes sent
    request_bytes: int  # the serialised request: what went up the link
    reply_bytes: int  # the serialised reply: what came down
    deadline_ms: float
    on_time: bool  # answered within the deadline (counted from the frame's arrival)
    device_cpu_ms: float  # the device's CPU time on the frame (decoding and model)
    queued_ms: float  # waiting for the device before its work started
    channel: dict[str, Any]
    controller: dict[str, Any]
    timing_ms: dict[str, float] = field(default_factory=dict)
    # the replica that answered (or was tried last), its expected delay when chosen, and tries
    server: dict[str, Any] | None = None
    # each device exit reached, its confidence and what was decided there
    exits: list[dict[str, Any]] | None = None
    # how far the input is from the training data (the manifest's input_check), and a warning
    # when it is too far for the label to be trusted
    input_distance: float | None = None
    warning: str | None = None

    @property
    def outcome(self) -> str:
        """server, device or degraded."""
        return DEGRADED if self.degraded else self.exit

    def as_dict(self) -> dict[str, Any]:
        """The answer as a JSON-ready dict (``/v1/classify``, the stream)."""
        return asdict(self)

    def parameters(self) -> dict[str, Any]:
        """The cost report flattened into OIP response parameters (scalars only)."""
        # the scalar fields, read off the answer: dataclasses.asdict deep-copies every list and
        # dict first, 48 of the 56 us this took on every request
        out: dict[str, Any] = {
            f.name: v
            for f in fields(self)
            if f.name != "label" and (isinstance(v := getattr(self, f.name), _SCALARS) or v is None)
        }
        out["kept_indices"] = ",".join(map(str, self.kept_indices))
        if self.exits:  # what happened at each device exit reached
            out["exit_index"] = self.exits[-1]["exit"]
            out["exit_confidences"] = ",".join(f"{e['confidence']:.4f}" for e in self.exits)
            out["exit_actions"] = ",".join(e["action"] for e in self.exits)
        for k, v in (
            self.server or {}
        ).items():  # the replica tried last, its expected delay, tries
            out[f"server_{k}"] = v
        for group in ("channel", "controller", "timing_ms"):
            for k, v in getattr(self, group).items():
                out[f"{group}.{k}" if group != "timing_ms" else k] = v
        return out

    def log_fields(self, model: str) -> dict[str, Any]:
        """What the request's log line carries (``--log-format json``)."""
        return {
            "request_id": self.request_id,
            "model": model,
            "outcome": self.outcome,
            "option": self.option,
            "budget": self.budget,
            "rate": self.rate,
            "split": self.split,
            "tokens_sent": self.tokens_sent,
            "request_bytes": self.request_bytes,
            "channel_uses": self.channel_uses,
            "snr_db": self.snr_db,
            "on_time": self.on_time,
            "device_cpu_ms": self.device_cpu_ms,
            "queued_ms": self.queued_ms,
            **self.timing_ms,
        }


__all__ = ["DEGRADED", "DEVICE", "OUTCOMES", "SERVER", "Answer"]
