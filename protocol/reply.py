"""semlink's reply parameters: what a server says in every answer besides the logits, shared by
the server that writes them and the device that reads them (the request's are in
:mod:`semlink.protocol.params`).

They ride in the OIP ``parameters`` map of a ``ModelInferResponse`` (gRPC, and HTTP JSON); the
load also in trailing metadata and HTTP headers (``semlink-queue-depth``, ``semlink-service-ms``,
see :mod:`semlink.protocol.params`). An OIP client ignores them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from semlink.protocol.params import QUEUE_DEPTH_KEY, SERVICE_MS_KEY

# -- where the server's time went (ms) --------------------------------------------------------
QUEUE_MS = "server_queue_ms"  # waiting in the batcher's queue
COMPUTE_MS = "server_compute_ms"  # after the queue: the batch's work and the hop back
DECODE_MS = "server_decode_ms"  # the request's message into arrays
ADMIT_MS = "server_admit_ms"  # validation, channel simulation, picture decoding
HOP_MS = "server_hop_ms"  # the hop to and from the model's thread
ORT_MS = "server_ort_ms"  # ONNX Runtime's run of the batch
HANDLER_MS = "server_handler_ms"  # the decoded message to the reply built
BATCH = "server_batch"  # requests in the batch that carried this one
SPANS = (DECODE_MS, ADMIT_MS, QUEUE_MS, HOP_MS, ORT_MS, HANDLER_MS)

# -- the server's load -----------------------------------------------------------------------
QUEUE_DEPTH = "server_queue_depth"  # requests in the server as it answered
SERVICE_MS = "server_service_ms"  # its recent compute time per request (EWMA)

# -- what the server received ------------------------------------------------------------------
TOKENS = "server_tokens"  # patch tokens per sample
SYMBOLS_PER_TOKEN = "symbols_per_token"  # JSCC: complex symbols per token (m)
CHANNEL = "channel"  # JSCC: the channel the server simulated
SNR_DB = "snr_db"  # JSCC: at this SNR
SPLIT = "split"  # blocks the device ran before the payload was sent (0: a picture)

# -- a failed answer on a stream ----------------------------------------------------------------
ERROR_CODE = "error_code"  # the gRPC status code's name of a failed request on a stream


@dataclass(frozen=True)
class Load:
    """What a server tells devices about its load, so each can pick the replica that answers
    soonest: requests in it now, and its recent service time per request."""

    queue_depth: int
    service_ms: float  # EWMA of queue-free time per request; 0 before any

    def parameters(self) -> dict[str, int | float]:
        """The load as reply parameters."""
        return {QUEUE_DEPTH: self.queue_depth, SERVICE_MS: self.service_ms}

    def headers(self) -> list[tuple[str, str]]:
        """The load as (key, value) metadata pairs: the trailing metadata of ``ServerReady`` and
        of failed calls, and the headers of ``/v2/health/ready``."""
        return [
            (QUEUE_DEPTH_KEY, str(self.queue_depth)),
            (SERVICE_MS_KEY, f"{self.service_ms:.3f}"),
        ]

    @classmethod
    def from_metadata(cls, metadata: Any) -> Load | None:
        """The load in a call's trailing metadata (or headers); ``None`` when absent or
        malformed (a server that does not report it, e.g. another OIP server)."""
        values = dict(metadata or ())
        try:
            depth = int(values[QUEUE_DEPTH_KEY])
            service = float(values[SERVICE_MS_KEY])
        except (KeyError, ValueError, TypeError):
            return None
        if depth < 0 or not 0.0 <= service < 1e7:
            return None
        return cls(depth, service)

    @classmethod
    def from_parameters(cls, parameters: dict[str, Any]) -> Load | None:
        """The load a reply carries; ``None`` from a server that does not report it."""
        depth, service = parameters.get(QUEUE_DEPTH), parameters.get(SERVICE_MS)
        if (
            isinstance(depth, int)
            and not isinstance(depth, bool)
            and isinstance(service, (int, float))
            and depth >= 0
            and 0.0 <= service < 1e7
        ):
            return cls(depth, float(service))
        return None


def server_ms(parameters: dict[str, Any]) -> float:
    """The server's time on one request, as its reply reports it: queue plus compute (ms)."""
    return _number(parameters, QUEUE_MS) + _number(parameters, COMPUTE_MS)


def spans(parameters: dict[str, Any]) -> dict[str, float]:
    """The server's time spans a reply reports (:data:`SPANS`), those that are numbers."""
    return {k: float(v) for k in SPANS if isinstance(v := parameters.get(k), (int, float))}


def _number(parameters: dict[str, Any], key: str) -> float:
    value = parameters.get(key, 0.0)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


__all__ = [
    "ADMIT_MS",
    "BATCH",
    "CHANNEL",
    "COMPUTE_MS",
    "DECODE_MS",
    "ERROR_CODE",
    "HANDLER_MS",
    "HOP_MS",
    "Load",
    "ORT_MS",
    "QUEUE_DEPTH",
    "QUEUE_MS",
    "SERVICE_MS",
    "SNR_DB",
    "SPANS",
    "SPLIT",
    "SYMBOLS_PER_TOKEN",
    "TOKENS",
    "server_ms",
    "spans",
]
