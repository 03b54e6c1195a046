"""Logging setup: human-readable lines, or one JSON object per line (``--log-format json``).

Request logs carry their fields in ``extra={"request": {...}}``; the JSON formatter merges them
into the line, so device and server lines of one request share its ``request_id``.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any


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


# Characters that would let a client's value forge a line or a terminal sequence in a text log:
# the C0 and C1 controls and DEL (newline, carriage return, escape, the C1 next line U+0085,
# the information separators U+001C-U+001E that Python's str.splitlines breaks at, ...) and the
# Unicode line and paragraph separators (U+2028, U+2029: line breaks to Python, JavaScript and
# most editors). Every character any common reader treats as a line break is among them.
LINE_BREAKING = (*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029)
_ESCAPES = {c: f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}" for c in LINE_BREAKING}
_ESCAPES.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})
# a traceback keeps its own newlines, but nothing else that breaks a line
_TRACEBACK_ESCAPES = {c: e for c, e in _ESCAPES.items() if c != ord("\n")}


def escape(text: str) -> str:
    """``text`` on one line: every character of :data:`LINE_BREAKING` written as an escape."""
    return text.translate(_ESCAPES)


class TextFormatter(logging.Formatter):
    """``time level logger: message``, one line per record whatever the message holds: control
    characters and line separators in the message (a client's request id, say) are escaped; a
    traceback, which is ours, follows on lines of its own, broken at its newlines only."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        """The line with the message's line-breaking characters escaped."""
        record.message = escape(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:  # noqa: N802 - logging's name
        """The traceback, its lines broken at newlines only (an exception's message may quote
        a client's value)."""
        return super().formatException(ei).translate(_TRACEBACK_ESCAPES)

    def formatStack(self, stack_info: str) -> str:  # noqa: N802 - logging's name
        """The stack, broken at newlines only."""
        return super().formatStack(stack_info).translate(_TRACEBACK_ESCAPES)


def configure(level: str = "INFO", fmt: str = "text") -> None:
    """Configures the root logger once per process."""
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be 'text' or 'json', got {fmt!r}")
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # warnings (numpy's "overflow encountered in cast", say) become records of the logger
    # "py.warnings" in the chosen format, not raw lines on stderr
    logging.captureWarnings(True)
    # httpx logs every request at INFO: the device's link-state polls, five a second
    logging.getLogger("httpx").setLevel(max(root.level, logging.WARNING))
