"""Logging setup: human-readable lines, or one JSON object per line (``--log-format json``).

Request logs carry their fields in ``extra={"request": {...}}``; the JSON formatter merges them
into the line, so device and server lines of one request share its ``request_id``.
"""

from __future__ import annotations

import json
import logging
import time


class JsonFormatter(logging.Formatter):
    """One JSON object per line; a request's fields under ``request``."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        doc = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update(getattr(record, "request", {}))
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


# control characters (newline, carriage return, escape, ...) that would let a client's value
# forge a line or a terminal sequence in a text log
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)}
_CONTROL.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})


class TextFormatter(logging.Formatter):
    """``time level logger: message``, one line per record whatever the message holds: control
    characters in the message (a client's request id, say) are escaped; a traceback, which is
    ours, follows on lines of its own."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        """The line with the message's control characters escaped."""
        record.message = record.message.translate(_CONTROL)
        return super().formatMessage(record)


def configure(level: str = "INFO", fmt: str = "text") -> None:
    """Configures the root logger once per process."""
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be 'text' or 'json', got {fmt!r}")
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every request at INFO: the device's link-state polls, five a second
    logging.getLogger("httpx").setLevel(max(root.level, logging.WARNING))
