"""Every range or limit a message states is the one its check applies (issue: hardening, second
round: "budget must be in [0, 1]" beside "(0, 1]", "0 elements exceed the limit", a 64 MiB trace
limit called 67 MB). Each test runs over the whole class: every parameter range, every link
state field, every way a shape can be too large."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from semlink.device.channel_state import STATE_RANGES, parse_state
from semlink.link.traces import MAX_TRACE_BYTES, TraceError, load_trace
from semlink.protocol import params as P
from semlink.protocol.codec import MAX_ELEMENTS, check_shape

RANGE_TEXT = re.compile(r"([\[(])(-?[\d.e+]+), (-?[\d.e+]+)\]")


def refused(check, value) -> str | None:
    """The message ``check(value)`` refuses ``value`` with, or None when it accepts it."""
    try:
        check(value)
    except ValueError as exc:
        return str(exc)
    return None


def readme_range(name: str) -> str:
    """The range protocol/README.md's parameter table states for ``name`` (ASCII minus)."""
    text = (Path(__file__).resolve().parents[2] / "protocol" / "README.md").read_text()
    row = re.search(rf"^\| `{name}` \| \w+ \| ([^|]+) \|", text, re.M)
    assert row, f"protocol/README.md has no row for {name!r}"
    return row[1].strip().replace("\u2212", "-")


@pytest.mark.parametrize("name", sorted(P.RANGES))
def test_every_parameter_range_is_stated_as_checked(name):
    """The README's range, the check at its ends, and every message refusing a value agree."""
    text = readme_range(name)
    stated = RANGE_TEXT.fullmatch(text)
    assert stated, text
    low_open, low, high = stated[1] == "(", float(stated[2]), float(stated[3])

    def check(v):
        return P.check(name, v)

    assert (refused(check, low) is None) == (not low_open)
    assert refused(check, high) is None
    # every way out of the range quotes the range the check applied, brackets included
    for bad in (
        math.nextafter(low, -math.inf),
        math.nextafter(high, math.inf),
        10**400,
        -(10**400),
        math.nan,
    ):
        message = refused(check, bad)
        assert message is not None and text in message, (bad, message)


@pytest.mark.parametrize("key", sorted(STATE_RANGES))
def test_every_link_state_range_is_stated_as_checked(key):
    low, high = STATE_RANGES[key]
    stated = f"[{low:g}, {high:g}]"
    doc = {"uplink": {}}

    def check(v):
        if key == "queued_bytes":
            return parse_state({"uplink": {key: v}})
        return parse_state({**doc, key: v})

    assert refused(check, low) is None and refused(check, high) is None
    for bad in (math.nextafter(low, -math.inf), math.nextafter(high, math.inf), 10**400):
        message = refused(check, bad)
        assert message is not None and stated in message, (bad, message)


@pytest.mark.parametrize(
    ("shape", "quoted"),
    [
        ([2**40, 0], 2**40),  # holds no element, but no dimension may be that long
        ([0, 2**62, 2**62], 2**62),
        ([MAX_ELEMENTS + 1], MAX_ELEMENTS + 1),
        ([4097, 4096], 4097 * 4096),  # each dimension fits, their product does not
        ([2**12, 2**12, 2], 2**25),
    ],
)
def test_a_shape_over_the_limit_quotes_what_is_over_it(shape, quoted):
    message = refused(check_shape, shape)
    assert message is not None and str(quoted) in message and f"at most {MAX_ELEMENTS}" in message
    assert quoted > MAX_ELEMENTS  # the figure quoted is the one past the limit, never 0


def test_shapes_at_the_limit_pass():
    assert check_shape([MAX_ELEMENTS]) == [MAX_ELEMENTS]
    assert check_shape([4096, 4096, 1]) == [4096, 4096, 1]
    assert check_shape([MAX_ELEMENTS, 0]) == [MAX_ELEMENTS, 0]


def test_the_trace_size_limit_is_stated_in_the_unit_it_is_set_in(tmp_path):
    path = tmp_path / "huge.up"
    with path.open("wb") as f:
        f.truncate(MAX_TRACE_BYTES + 1)  # sparse: nothing written
    with pytest.raises(TraceError) as err:
        load_trace(path)
    assert f"{MAX_TRACE_BYTES + 1} bytes is over the {MAX_TRACE_BYTES} bytes (64 MiB)" in str(
        err.value
    )


@pytest.mark.parametrize("length", [P.MAX_REQUEST_ID, P.MAX_REQUEST_ID + 1])
def test_the_request_id_limit_is_stated_as_checked(length):
    message = refused(P.check_request_id, "x" * length)
    assert (message is None) == (length <= P.MAX_REQUEST_ID)
    if message:
        assert f"at most {P.MAX_REQUEST_ID} characters, got {length}" in message
