"""What the processes read from others is checked, not trusted: the link's state, trace files,
API key files; and what clients send cannot forge a log line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import threading
import time
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from semlink.bench.hostile import StateBomb
from semlink.device.channel_state import (
    MAX_STATE_BYTES,
    STATE_TIMEOUT_S,
    ChannelMonitor,
    parse_state,
)
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


class StateEndpoint:
    """A real HTTP state endpoint on loopback answering ``answers`` in turn (each a body, or a
    ``(body, headers, delay_s)`` triple: sent a byte at a time, ``delay_s`` apart), then GOOD."""

    def __init__(self, answers: list) -> None:
        self.answers = answers
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                answer = endpoint.answers.pop(0) if endpoint.answers else json.dumps(GOOD)
                body, headers, delay = answer if isinstance(answer, tuple) else (answer, {}, 0)
                body = body.encode() if isinstance(body, str) else body
                self.send_response(200)
                for k, v in {"content-length": str(len(body)), **headers}.items():
                    self.send_header(k, v)
                self.end_headers()
                with contextlib.suppress(OSError):
                    for i in range(0, len(body), 1 if delay else len(body) or 1):
                        self.wfile.write(body[i : i + (1 if delay else len(body))])
                        self.wfile.flush()
                        time.sleep(delay)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/state"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def refresh_each(url: str, times: int) -> list[tuple[ChannelState, str]]:
    """The monitor's state after each of ``times`` reads of ``url``, and the error of each."""

    async def go() -> list[tuple[ChannelState, str]]:
        monitor = ChannelMonitor(url, poll_ms=1)
        seen = []
        async with httpx.AsyncClient() as client:
            for _ in range(times):
                error = ""
                try:
                    await monitor.refresh(client)
                except ValueError as exc:
                    error = str(exc)
                seen.append((monitor.current, error))
        return seen

    return asyncio.run(go())


def test_the_monitor_keeps_the_last_good_state_and_goes_on():
    endpoint = StateEndpoint(
        [json.dumps(GOOD), '{"snr_db": "garbage"}', "[]", json.dumps({**GOOD, "snr_db": 3.0})]
    )
    try:
        seen = refresh_each(endpoint.url, 4)
    finally:
        endpoint.close()
    assert [s.snr_db for s, _ in seen] == [12.0, 12.0, 12.0, 3.0]


def test_an_oversized_link_state_is_refused_as_it_streams():
    """A state endpoint streaming 64 MB without a declared length (issue: 400 MB grew the device
    to 1.76 GB): refused after 64 kB, in milliseconds, the last good state kept, and the reader
    never holds more than the cap."""
    bomb = StateBomb(size=64 * 2**20)
    endpoint = StateEndpoint([json.dumps(GOOD)])
    try:
        tracemalloc.start()
        t0 = time.perf_counter()
        ((good, _),) = refresh_each(endpoint.url, 1)

        async def bad() -> str:
            monitor = ChannelMonitor(bomb.url)
            monitor.current = good
            async with httpx.AsyncClient() as client:
                with pytest.raises(ValueError) as err:
                    await monitor.refresh(client)
            assert monitor.current == good
            return str(err.value)

        message = asyncio.run(bad())
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        bomb.close()
        endpoint.close()
    assert f"over the {MAX_STATE_BYTES} bytes" in message
    assert elapsed < 1.0 and bomb.served < 16 * 2**20, (elapsed, bomb.served)
    assert peak < 8 * 2**20, peak


@pytest.mark.parametrize(
    ("answer", "fragment"),
    [
        (("x", {"content-length": str(400 * 2**20)}, 0), "400 MB declared"),
        (("{}", {"content-encoding": "gzip"}, 0), "must not be compressed"),
        ((json.dumps(GOOD), {}, 0.2), "within 1 s"),  # a byte every 0.2 s: never whole in time
        ("[" + "0," * 40_000 + "0]", "over the"),
        ("[" * 30_000, "too deeply"),
    ],
    ids=["declared length", "compressed", "slow drip", "too long", "too deep"],
)
def test_a_state_answer_past_any_bound_is_refused(answer, fragment):
    endpoint = StateEndpoint([answer])
    try:
        t0 = time.perf_counter()
        ((state, error),) = refresh_each(endpoint.url, 1)
        elapsed = time.perf_counter() - t0
    finally:
        endpoint.close()
    fragment = fragment.replace("400 MB declared", f"{400 * 2**20} bytes")
    assert fragment in error and state == ChannelState(), error
    assert elapsed < STATE_TIMEOUT_S + 0.5


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


def test_an_api_key_file_saved_with_a_byte_order_mark(tmp_path):
    """The mark is stripped before the lines are parsed: a first-line comment without spaces
    once became a valid key, one with spaces stopped the process ("an API key holds
    whitespace"); a first-line key is read without it."""
    path, key = tmp_path / "keys", "key-aaaaaaaaaaaaaaaa"
    for first in ("#first-line-comment-without-spaces", "# a comment with spaces"):
        path.write_bytes(f"\ufeff{first}\n{key}\n".encode())
        assert load_api_keys(None, path) == [key]
    path.write_bytes(f"\ufeff{key}\r\n".encode())
    assert load_api_keys(None, path) == [key]
    assert load_api_keys(f"\ufeff{key}", None) == [key]


@pytest.mark.parametrize(
    "key",
    [
        "key-aaaa\u200baaaaaaaaaaaa",
        "kéy-aaaaaaaaaaaaaaaa",
        "key-aaaa\ufeffaaaaaaaaaaaa",
        "key-\x07aaaaaaaaaaaaaaa",
    ],
    ids=["zero-width space", "non-ASCII", "a mark inside", "a control"],
)
def test_a_key_no_header_could_carry_is_refused_naming_the_line(tmp_path, key):
    path = tmp_path / "keys"
    path.write_bytes(f"# keys\n{key}\n".encode())
    with pytest.raises(
        ValueError, match=r"keys:2: an API key holds a character that is not printable ASCII"
    ):
        load_api_keys(None, path)


def test_a_trace_saved_with_a_byte_order_mark_is_read(tmp_path):
    """The other file a person edits: its mark is not a 'not ASCII' first line."""
    marked, plain = tmp_path / "marked.up", tmp_path / "plain.up"
    marked.write_bytes(b"\xef\xbb\xbf1\n2\n3\n")
    plain.write_bytes(b"1\n2\n3\n")
    assert load_trace(marked).average_bps() == load_trace(plain).average_bps() > 0
    marked.write_bytes(b"1\n\xef\xbb\xbf2\n")  # anywhere else it is refused, naming the line
    with pytest.raises(TraceError, match=":2: not ASCII"):
        load_trace(marked)


# every character Python's str.splitlines breaks a line at, the widest of the common readers
# (JavaScript and editors break at \n, \r, U+2028 and U+2029; terminals act on C1 controls)
LINE_BREAKING = [chr(c) for c in range(0x110000) if len(f"a{chr(c)}b".splitlines()) > 1]


def test_text_logs_escape_every_character_a_reader_breaks_lines_at():
    assert {"\n", "\r", "\x85", "\u2028", "\u2029", "\x1c"} <= set(LINE_BREAKING)
    forged = "".join(
        f"r{i}{c}2026-01-01 00:00:00 INFO semlink: forged" for i, c in enumerate(LINE_BREAKING)
    )
    record = logging.LogRecord("x", logging.INFO, "f.py", 1, "request %s: ok", (forged,), None)
    line = TextFormatter().format(record)
    assert line.splitlines() == [line]
    assert not any(c in line for c in LINE_BREAKING)
    assert "\\u2028" in line and "\\x85" in line and "\\n" in line


def test_a_traceback_keeps_its_lines_but_no_other_break():
    try:
        raise ValueError("bad id 'r1\u20282026-01-01 00:00:00 INFO semlink: forged'")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, "f.py", 1, "failed", (), sys.exc_info())
    text = TextFormatter().format(record)
    assert "\u2028" not in text and "\\u2028" in text
    assert (
        text.splitlines()[0].endswith("failed")
        and text.splitlines()[1] == "Traceback (most recent call last):"
    )
