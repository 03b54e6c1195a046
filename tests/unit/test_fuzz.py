"""Property-based fuzzing of what parses untrusted input: tensor and HTTP codecs, link traces and
rates. Any input either parses or raises the module's own error naming the problem (a
``ValueError``); nothing else escapes."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from semlink.link.traces import TraceError, TraceSchedule, parse_mahimahi, parse_rate
from semlink.protocol.codec import DTYPES, TensorError, from_bytes
from semlink.protocol.http_codec import parse_infer_body

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
shapes = st.lists(st.integers(-3, 70), max_size=5)


@FUZZ
@given(
    raw=st.binary(max_size=512),
    datatype=st.one_of(st.sampled_from(sorted(DTYPES)), st.text(max_size=8)),
    shape=shapes,
)
def test_from_bytes_decodes_or_names_the_problem(raw, datatype, shape):
    try:
        arr = from_bytes(raw, datatype, shape)
    except TensorError as exc:
        assert str(exc)
    else:
        assert list(arr.shape) == shape and arr.nbytes == len(raw)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@st.composite
def infer_bodies(draw):
    """Mostly well-formed OIP requests with hostile fields, raw bytes appended, and a
    header-length that may lie."""
    inputs = draw(
        st.lists(
            st.fixed_dictionaries(
                {"name": st.text(max_size=6), "shape": st.one_of(shapes, json_values)},
                optional={
                    "datatype": st.one_of(st.sampled_from(sorted(DTYPES)), json_values),
                    "data": json_values,
                    "parameters": json_values,
                },
            ),
            max_size=3,
        )
    )
    head = json.dumps({"inputs": inputs, "parameters": draw(json_values)}).encode()
    tail = draw(st.binary(max_size=256))
    length = draw(st.one_of(st.none(), st.just(str(len(head))), st.text(max_size=5)))
    return head + tail, length


@FUZZ
@given(case=st.one_of(infer_bodies(), st.tuples(st.binary(max_size=300), st.none())))
def test_http_infer_body_parses_or_names_the_problem(case):
    body, length = case
    try:
        request, tensors = parse_infer_body(body, length)
    except (TensorError, ValueError) as exc:
        assert str(exc)
    else:
        assert isinstance(request, dict)
        assert all(isinstance(a, np.ndarray) for _, a in tensors.values())


@FUZZ
@given(
    text=st.one_of(
        st.text(max_size=200),
        st.lists(st.integers(-5, 10**6), max_size=50).map(lambda xs: "\n".join(map(str, xs))),
    )
)
def test_mahimahi_trace_parses_or_names_the_line(text):
    try:
        ts = parse_mahimahi(text)
    except TraceError as exc:
        assert "trace" in str(exc)
    else:
        assert (np.diff(ts) >= 0).all() and ts.min() >= 0
        schedule = TraceSchedule(ts)
        assert schedule.opportunities_until(schedule.period * 2.5) >= 0


@FUZZ
@given(text=st.text(max_size=20))
def test_rate_parses_or_names_the_form(text):
    try:
        rate = parse_rate(text)
    except ValueError as exc:
        assert "link rate" in str(exc)
    else:
        assert isinstance(rate, float)
