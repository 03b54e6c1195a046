"""Link capacity schedules: Mahimahi traces, constant rates, and synthetic generators.

Mahimahi format: one integer millisecond timestamp per line, non-decreasing; each line is one
opportunity to deliver a 1500-byte packet, a repeated timestamp means several in that millisecond,
and the trace wraps around with a period equal to its last timestamp.

A :class:`Schedule` answers one question: how many delivery opportunities have occurred up to a
time. The link emulator asks it at every tick.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

PACKET_BYTES = 1500
MAX_TRACE_MS = 7 * 24 * 3600 * 1000  # longest trace period accepted
BITS_PER_PACKET = PACKET_BYTES * 8


class TraceError(ValueError):
    """A malformed trace file; the message names the line."""


class Schedule:
    """Cumulative delivery opportunities as a function of time (milliseconds)."""

    def opportunities_until(self, t_ms: float) -> int:
        """Delivery opportunities (1500-byte packets) from time 0 up to ``t_ms``."""
        raise NotImplementedError

    def average_bps(self) -> float:
        """The schedule's average rate in bit/s."""
        raise NotImplementedError

    def cumulative(self, n_ms: int) -> np.ndarray:
        """``opportunities_until(t)`` for every whole millisecond ``t`` in ``[0, n_ms)``, as one
        int64 array (what a replay of the link reads at every step)."""
        return np.array([self.opportunities_until(t) for t in range(n_ms)], np.int64)

    def capacity_bps(self, t_ms: float, window_ms: float = 1000.0) -> float:
        """Capacity over the window ending at ``t_ms`` (bits per second)."""
        start = max(0.0, t_ms - window_ms)
        n = self.opportunities_until(t_ms) - self.opportunities_until(start)
        return n * BITS_PER_PACKET / max(t_ms - start, 1.0) * 1000.0


class ConstantSchedule(Schedule):
    """A constant rate: delivery opportunities evenly spaced."""

    def __init__(self, rate_bps: float) -> None:
        if not rate_bps > 0 or math.isinf(rate_bps):
            raise ValueError(f"link rate must be a positive number of bit/s, got {rate_bps}")
        self.rate_bps = float(rate_bps)

    def opportunities_until(self, t_ms: float) -> int:
        """Delivery opportunities (1500-byte packets) from time 0 up to ``t_ms``."""
        return int(t_ms * self.rate_bps / BITS_PER_PACKET / 1000.0)

    def cumulative(self, n_ms: int) -> np.ndarray:
        """``opportunities_until`` at every whole millisecond below ``n_ms``, vectorised."""
        t = np.arange(n_ms, dtype=np.float64)
        return (t * self.rate_bps / BITS_PER_PACKET / 1000.0).astype(np.int64)

    def average_bps(self) -> float:
        """The constant rate in bit/s."""
        return self.rate_bps


class TraceSchedule(Schedule):
    """A Mahimahi trace, wrapping with period = last timestamp."""

    def __init__(self, timestamps_ms: np.ndarray, name: str = "trace") -> None:
        ts = np.asarray(timestamps_ms, dtype=np.int64)
        if ts.size == 0:
            raise TraceError(f"{name}: the trace is empty; it needs at least one timestamp line")
        self.name = name
        self.period = max(int(ts[-1]), 1)
        self._ts = ts
        # opportunities per period: those before the period's end (the last timestamp opens the
        # next period); when every timestamp equals the period, all of them at its end
        self.per_period = int(np.searchsorted(ts, self.period, side="left")) or int(ts.size)

    def opportunities_until(self, t_ms: float) -> int:
        """Delivery opportunities from time 0 up to ``t_ms``, the trace repeating."""
        whole = int(t_ms) // self.period
        rest = int(t_ms) - whole * self.period
        return whole * self.per_period + int(np.searchsorted(self._ts, rest, side="left"))

    def cumulative(self, n_ms: int) -> np.ndarray:
        """``opportunities_until`` at every whole millisecond below ``n_ms``, vectorised."""
        t = np.arange(n_ms, dtype=np.int64)
        whole, rest = np.divmod(t, self.period)
        return whole * self.per_period + np.searchsorted(self._ts, rest, side="left")

    def average_bps(self) -> float:
        """The trace's average rate over one period, in bit/s."""
        return self.per_period * BITS_PER_PACKET / self.period * 1000.0


MAX_TRACE_BYTES = 64 * 1024 * 1024  # a week of a 100 Mbit/s trace is ~4 GB; real ones are MBs
QUOTE_CHARS = 40  # an error quotes at most this much of a bad line


def quote(line: str) -> str:
    """A line as an error quotes it: repr, cut to :data:`QUOTE_CHARS`."""
    return (
        repr(line) if len(line) <= QUOTE_CHARS else f"{line[:QUOTE_CHARS]!r}... ({len(line)} chars)"
    )


def read_lines(path: str | Path, what: str = "trace") -> Iterator[tuple[int, str]]:
    """``(line number, stripped line)`` of a text file, streamed, refusing files over
    :data:`MAX_TRACE_BYTES` before reading and bytes that are not ASCII, naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    size = path.stat().st_size
    if size > MAX_TRACE_BYTES:
        raise TraceError(
            f"{path}: {size} bytes is over the {MAX_TRACE_BYTES} bytes "
            f"({MAX_TRACE_BYTES // 2**20} MiB) a {what} may be; a trace wraps around, so one "
            "period of it is enough"
        )
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if lineno == 1:  # the UTF-8 byte-order mark an editor may save the file with
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            try:
                line = raw.decode("ascii").strip()
            except UnicodeDecodeError:
                raise TraceError(
                    f"{path}:{lineno}: not ASCII text ({quote(raw.decode('latin-1').strip())}); "
                    f"a {what} is plain ASCII numbers, one per line"
                ) from None
            yield lineno, line


def parse_mahimahi(text: str, name: str = "trace") -> np.ndarray:
    """Parses trace text into timestamps; raises :class:`TraceError` with the line number."""
    return parse_mahimahi_lines(enumerate((ln.strip() for ln in text.splitlines()), 1), name)


def parse_mahimahi_lines(lines: Iterable[tuple[int, str]], name: str = "trace") -> np.ndarray:
    """Timestamps (ms) from ``(line number, line)`` pairs: plain ASCII digits only (no sign,
    underscore or other script's digits), non-decreasing, at most a week; raises
    :class:`TraceError` naming the line and quoting at most :data:`QUOTE_CHARS` of it."""
    out: list[int] = []
    prev = -1
    for lineno, line in lines:
        if not line:
            continue
        if not (line.isascii() and line.isdigit()):
            raise TraceError(
                f"{name}:{lineno}: {quote(line)} is not an integer millisecond timestamp"
            )
        if len(line) > 12 or (value := int(line)) > MAX_TRACE_MS:
            raise TraceError(
                f"{name}:{lineno}: timestamp {quote(line)} is past {MAX_TRACE_MS} ms (a week); "
                "a trace wraps around, so write one period of it"
            )
        if value < prev:
            raise TraceError(
                f"{name}:{lineno}: timestamp {value} is smaller than the previous {prev}; timestamps must not decrease"
            )
        out.append(value)
        prev = value
    if not out:
        raise TraceError(f"{name}: no timestamps found; a Mahimahi trace has one integer per line")
    return np.asarray(out, dtype=np.int64)


def load_trace(path: str | Path) -> TraceSchedule:
    """Reads a Mahimahi trace file, streamed and size-capped; raises ``FileNotFoundError`` or
    :class:`TraceError`."""
    return TraceSchedule(parse_mahimahi_lines(read_lines(path), str(path)), str(path))


def parse_rate(text: str) -> float:
    """'5mbit', '100kbit', '1.5Mbps', '2000000' -> bits per second."""
    t = (
        text.strip()
        .lower()
        .removesuffix("ps")
        .removesuffix("/s")
        .removesuffix("bit")
        .removesuffix("b")
    )
    mult = {"k": 1e3, "m": 1e6, "g": 1e9}
    try:
        return float(t[:-1]) * mult[t[-1]] if t and t[-1] in mult else float(t)
    except ValueError:
        raise ValueError(
            f"cannot read link rate {text!r}: write e.g. 500kbit, 5mbit or 2000000 (bit/s)"
        ) from None


# --- synthetic traces ----------------------------------------------------------------------


def rates_to_timestamps(rates_bps: np.ndarray, step_ms: int) -> np.ndarray:
    """Mahimahi timestamps for a piecewise-constant rate, one value per ``step_ms`` segment."""
    seg_ms = np.repeat(np.asarray(rates_bps, dtype=np.float64) / BITS_PER_PACKET / 1000.0, step_ms)
    cum = np.floor(np.cumsum(seg_ms) + 1e-9).astype(np.int64)
    counts = np.diff(np.concatenate([[0], cum]))
    ts = np.repeat(np.arange(1, len(counts) + 1), counts)
    if ts.size == 0 or ts[-1] != len(counts):  # end the trace at its full duration
        ts = np.concatenate([ts, [len(counts)]])
    return ts


def synthetic_rates(
    kind: str,
    duration_s: float,
    seed: int = 0,
    *,
    low_bps: float = 2e5,
    high_bps: float = 5e6,
    step_ms: int = 100,
) -> np.ndarray:
    """Per-``step_ms`` rates for ``constant`` (high), ``step`` (high/low halves),
    ``gilbert-elliott`` (two-state Markov, mean sojourn 2 s) or ``random-walk`` (log-rate walk)."""
    n = max(1, int(duration_s * 1000 / step_ms))
    rng = np.random.default_rng(seed)
    if kind == "constant":
        return np.full(n, high_bps)
    if kind == "step":
        return np.where(np.arange(n) < n // 2, high_bps, low_bps).astype(np.float64)
    if kind == "gilbert-elliott":
        p_switch = step_ms / 2000.0
        state = np.cumsum(rng.random(n) < p_switch) % 2
        return np.where(state == 0, high_bps, low_bps).astype(np.float64)
    if kind == "random-walk":
        lo, hi = math.log(low_bps), math.log(high_bps)
        x = np.empty(n)
        x[0] = (lo + hi) / 2
        for i in range(1, n):
            x[i] = np.clip(x[i - 1] + rng.normal(0, 0.15), lo, hi)
        return np.exp(x)
    raise ValueError(
        f"unknown trace kind {kind!r}: choose constant, step, gilbert-elliott or random-walk"
    )


def write_mahimahi(path: str | Path, timestamps: np.ndarray) -> None:
    """Writes timestamps (ms) as a Mahimahi trace, one per line."""
    Path(path).write_text("\n".join(str(int(t)) for t in timestamps) + "\n")
