"""What the processes read from others is checked, not trusted: the link's state, trace files,
API key files; and what clients send cannot forge a log line."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import httpx
import pytest

from semlink.device.channel_state import ChannelMonitor, parse_state
from semlink.device.controller.base import ChannelState
from semlink.link.shaper import SnrProcess
from semlink.link.traces import MAX_TRACE_BYTES, TraceError, load_trace
from semlink.runtime.logs import TextFormatter
from semlink.runtime.security import load_api_keys

GOOD = {"bandwidth_bps": 2e6, "rtt_ms": 40.0, "snr_db": 12.0, "uplink": {"queued_bytes": 0}}


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        ([1, 2], "JSON object"),
        ({**GOOD, "bandwidth_bps": "fast"}, "'bandwidth_bps' must be a number"),
        ({**GOOD, "rtt_ms": -1}, "'rtt_ms' must be in"),
        ({**GOOD, "snr_db": 1e9}, "'snr_db' must be in"),
        ({**GOOD, "snr_db": True}, "must be a number"),
        ({**GOOD, "bandwidth_bps": 10**400}, r"must be in \[0, 1e\+12\], got a 401-digit"),
        ({**GOOD, "uplink": []}, "'uplink' must be an object"),
    ],
)
def test_a_malformed_link_state_is_refused(doc, fragment):
    with pytest.raises(ValueError, match=fragment):
        parse_state(doc)


def test_the_monitor_keeps_the_last_good_state_and_goes_on(caplog):
    answers = [GOOD, {"snr_db": "garbage"}, [], {**GOOD, "snr_db": 3.0}]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=answers.pop(0) if answers else GOOD)

    async def go() -> list[ChannelState]:
        monitor = ChannelMonitor("http://link/state", poll_ms=1)
        seen = []
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            for _ in range(4):
                with contextlib.suppress(ValueError):
                    await monitor.refresh(client)
                seen.append(monitor.current)
        return seen

    seen = asyncio.run(go())
    assert [s.snr_db for s in seen] == [12.0, 12.0, 12.0, 3.0]


def test_traces_refuse_what_is_not_a_plain_timestamp(tmp_path):
    for text, fragment in [
        ("10\n+20\n", "not an integer"),
        ("10\n2_0\n", "not an integer"),
        ("10\n٣\n", "not ASCII"),
        ("1" * 5000 + "\n", "past"),
    ]:
        path = tmp_path / "t.up"
        path.write_text(text)
        with pytest.raises(TraceError, match=fragment) as err:
            load_trace(path)
        assert str(path) in str(err.value) and len(str(err.value)) < 300


def test_a_trace_over_the_size_cap_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge.up"
    with path.open("wb") as f:
        f.truncate(MAX_TRACE_BYTES + 1)  # sparse: no time or memory spent writing it
    with pytest.raises(TraceError, match=r"bytes \(64 MiB\) a trace may be"):
        load_trace(path)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("0 10\n100 500\n", "outside"),
        ("0 10\n100 nan\n", "expected"),
        ("0 1\n-5 2\n", "non-negative"),
    ],
)
def test_snr_traces_are_checked_when_read(tmp_path, text, fragment):
    path = tmp_path / "snr.txt"
    path.write_text(text)
    with pytest.raises(TraceError, match=fragment):
        SnrProcess(trace=path)
    path.write_text("0 -10\n200 25\n400 5\n")
    assert SnrProcess(trace=path).at(250) == 25.0


def test_api_key_files_take_comments_and_refuse_whitespace(tmp_path):
    path = tmp_path / "keys"
    path.write_text("  # an indented comment\n\nkey-aaaaaaaaaaaaaaaa\n")
    assert load_api_keys(None, path) == ["key-aaaaaaaaaaaaaaaa"]
    path.write_text("key-aaaaaaaaaaaaaaaa  # trailing comment\n")
    with pytest.raises(ValueError, match=r"keys:1: an API key holds whitespace"):
        load_api_keys(None, path)


def test_text_logs_escape_control_characters():
    forged = "r1\n2026-01-01 00:00:00 INFO semlink: forged\x1b[2J"
    record = logging.LogRecord("x", logging.INFO, "f.py", 1, "request %s: ok", (forged,), None)
    line = TextFormatter().format(record)
    assert "\n" not in line and "\x1b" not in line and "\\n2026" in line
