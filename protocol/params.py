"""semlink's request parameters: names, types and valid ranges, shared by device and server.

They ride in the OIP ``parameters`` map of a request (gRPC ``InferParameter`` or HTTP JSON).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

BUDGET = "budget"  # alpha in (0, 1]: fraction of patch tokens sent
RATE = "rate"  # r in (0, 1]: fraction of JSCC symbols kept per token
SPLIT = "split"  # split point s: blocks 0..s-1 on the device
SNR_DB = "snr_db"  # channel SNR the receiver simulates, dB in [-50, 100]
DEADLINE_MS = "deadline_ms"  # end-to-end deadline the device must answer within
REQUEST_ID = "request_id"  # also the OIP `id` field; shared across device, link and server logs
MAX_REQUEST_ID = 128  # characters of a request id: echoed whole in the answer, never cut
TOKEN_FORMAT = "token_format"  # fp16 | int8 | fp32
CHANNEL = "channel"  # awgn | rayleigh | none: the channel the receiver simulates (JSCC pipelines)
CHANNELS = ("awgn", "rayleigh", "none")
LABEL = "label"  # the true class, when the client knows it: the device's dashboard counts accuracy
OPTION = (
    "option"  # the option a frame takes, by name (exit2, s1:a0.25, jpeg75, ...): a fixed choice
)

# What each parameter a client may send the device is, for the error that refuses one a model
# cannot apply.
DEVICE_PARAMETERS = {
    BUDGET: "the share of patch tokens a token pipeline sends",
    RATE: "the JSCC coder's rate, for pipelines that code their tokens",
    SPLIT: "the device's to choose (its controller picks where to stop or offload)",
    SNR_DB: "the SNR the receiver simulates for JSCC symbols",
    DEADLINE_MS: "the deadline the device answers within",
    REQUEST_ID: "the request's id in every log",
    LABEL: "the true class, for the dashboard's accuracy",
    CHANNEL: "the channel the receiver simulates for JSCC symbols",
    OPTION: "an option of the model's option space, by name",
    TOKEN_FORMAT: "the device's setting, not a request's",
}
# ... and the server.
SERVER_PARAMETERS = {
    BUDGET: "the share of patch tokens, for token pipelines",
    RATE: "the JSCC rate, for pipelines that code their tokens",
    SPLIT: "the number of device blocks the payload comes from, for pipelines with several splits",
    SNR_DB: "the SNR at which to simulate the channel, for JSCC symbols",
    CHANNEL: "the channel to simulate, for JSCC symbols",
}

# The server's load, in the trailing metadata of ServerReady and ModelInfer (and as headers of
# HTTP /v2/health/ready): how devices pick the replica that will answer soonest. OIP clients
# ignore them.
QUEUE_DEPTH_KEY = "semlink-queue-depth"  # requests in the server now (queued or running)
SERVICE_MS_KEY = "semlink-service-ms"  # recent compute time per request, ms (EWMA)


class ParameterError(ValueError):
    """A request parameter out of range or of the wrong type; the message names the fix."""


@dataclass(frozen=True)
class Range:
    """The valid range of a numeric parameter; ``low_open`` excludes ``low`` itself."""

    low: float
    high: float
    low_open: bool = False

    def check(self, name: str, value: Any) -> float:
        """``value`` as float; raises :class:`ParameterError` naming the range."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParameterError(f"parameter {name!r} must be a number, got {shown(value)}")
        try:
            v = float(value)
        except OverflowError:  # an integer beyond any float
            raise ParameterError(
                f"parameter {name!r} must be in {self}, got a {len(str(value))}-digit integer"
            ) from None
        below = v <= self.low if self.low_open else v < self.low
        if math.isnan(v) or below or v > self.high:
            raise ParameterError(f"parameter {name!r} must be in {self}, got {shown(value)}")
        return v

    def __str__(self) -> str:
        """The range as every message writes it: ``(0, 1]`` or ``[-50, 100]``, as checked."""
        return f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"


RANGES = {
    BUDGET: Range(0.0, 1.0, low_open=True),
    RATE: Range(0.0, 1.0, low_open=True),
    SNR_DB: Range(-50.0, 100.0),
    DEADLINE_MS: Range(0.0, 600_000.0, low_open=True),
}


def check(name: str, value: Any) -> float:
    """Validates one numeric parameter against its range; returns it as float."""
    return RANGES[name].check(name, value)


def check_value(name: str, value: Any) -> Any:
    """Validates any request parameter semlink reads by name: a number within its range, the
    channel, or the request id (a string). Raises :class:`ParameterError`."""
    if name in RANGES:
        return check(name, value)
    if name == CHANNEL:
        return check_channel(value)
    if name == TOKEN_FORMAT:
        raise ParameterError(f"parameter {name!r} is {DEVICE_PARAMETERS[name]}; leave it out")
    return str(value)


def shown(value: Any, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters: an error quotes what it refused, never all of
    a client's megabyte."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def check_request_id(value: Any, name: str = REQUEST_ID) -> str:
    """A request id (the OIP ``id``, or the ``request_id`` parameter): a string of at most
    :data:`MAX_REQUEST_ID` characters, returned whole (a client matches answers by it, so it is
    never cut); raises :class:`ParameterError`."""
    if not isinstance(value, str):
        raise ParameterError(
            f"{name!r} must be a string of at most {MAX_REQUEST_ID} characters, got {shown(value)}"
        )
    if len(value) > MAX_REQUEST_ID:
        raise ParameterError(
            f"{name!r} must be at most {MAX_REQUEST_ID} characters, got {len(value)}: send a "
            "shorter id (answers and logs carry it whole)"
        )
    return value


def check_ids(request_id: Any, parameters: dict[str, Any]) -> None:
    """Checks a request's OIP ``id`` (when given) and its ``request_id`` parameter (when
    given) with :func:`check_request_id`, before any work is done on the request."""
    if request_id is not None and request_id != "":
        check_request_id(request_id, "id")
    if parameters.get(REQUEST_ID) is not None:
        check_request_id(parameters[REQUEST_ID])


def check_channel(value: Any) -> str:
    """Validates the ``channel`` parameter."""
    if value not in CHANNELS:
        raise ParameterError(f"parameter 'channel' must be one of {CHANNELS}, got {shown(value)}")
    return str(value)


def check_label(value: Any, num_classes: int) -> int:
    """Validates the ``label`` parameter: a class index of the model."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < num_classes:
        raise ParameterError(
            f"parameter 'label' must be an integer class index in [0, {num_classes}), got {shown(value)}"
        )
    return value
