"""Property-based fuzzing of what parses untrusted input: tensor and HTTP codecs, gRPC typed
contents, request parameters, image uploads, link traces and rates. Any input either parses or
raises the module's own error naming the problem; nothing else escapes (no OverflowError,
RecursionError, DecompressionBombError: each of those would be a 500).

The generators reach for the classes that broke before: integers far beyond any float or the
datatype, shapes whose product overflows 64 bits, nesting deeper than Python's recursion limit,
and image headers that announce billions of pixels."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from semlink.bench.hostile import png_header
from semlink.link.traces import TraceError, TraceSchedule, parse_mahimahi, parse_rate
from semlink.protocol import grpc_service_pb2 as pb
from semlink.protocol import params as P
from semlink.protocol.codec import DTYPES, TensorError, from_bytes
from semlink.protocol.http_codec import parse_infer_body
from semlink.protocol.params import ParameterError
from semlink.runtime.images import ImageLimits, decode_image
from semlink.runtime.repository import DEFAULT_REPOSITORY, resolve, scan
from semlink.server.grpc_service import decode_inputs

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
shapes = st.lists(st.integers(-3, 70), max_size=5)
huge = st.integers(-(10**400), 10**400)  # beyond any float, let alone int8
overflowing_shapes = st.lists(st.one_of(st.integers(-3, 70), st.integers(2**31, 2**80)), max_size=6)
numbers = st.one_of(st.integers(), huge, st.floats(), st.integers(-300, 300))


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
    st.none()
    | st.booleans()
    | st.integers()
    | huge
    | st.floats(allow_nan=False)
    | st.text(max_size=10),
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
                {
                    "name": st.text(max_size=6),
                    "shape": st.one_of(shapes, overflowing_shapes, json_values),
                },
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
    if draw(st.booleans()) and draw(st.booleans()):  # nesting past the recursion limit
        depth = draw(st.integers(1000, 100_000))
        head = b'{"inputs": ' + b"[" * depth + b"]" * depth + b"}"
    tail = draw(st.binary(max_size=256))
    length = draw(st.one_of(st.none(), st.just(str(len(head))), st.text(max_size=5)))
    return head + tail, length


@FUZZ
@given(case=st.one_of(infer_bodies(), st.tuples(st.binary(max_size=300), st.none())))
def test_http_infer_body_parses_or_names_the_problem(case):
    body, length = case
    try:
        request, tensors = parse_infer_body(body, length)
    except TensorError as exc:
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


@st.composite
def grpc_requests(draw):
    """ModelInferRequests with typed contents of any integers and shapes that may overflow."""
    request = pb.ModelInferRequest()
    for i in range(draw(st.integers(1, 3))):
        dtype = draw(st.one_of(st.sampled_from(sorted(DTYPES)), st.text(max_size=5)))
        spec = request.inputs.add(
            name=f"x{i}",
            datatype=dtype,
            shape=draw(overflowing_shapes.filter(lambda s: all(-(2**63) <= d < 2**63 for d in s))),
        )
        field = draw(st.sampled_from(["fp32", "int", "int64"]))
        if field == "fp32":
            spec.contents.fp32_contents.extend(draw(st.lists(st.floats(width=32), max_size=8)))
        elif field == "int":
            spec.contents.int_contents.extend(
                draw(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=8))
            )
        else:
            spec.contents.int64_contents.extend(
                draw(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=8))
            )
    return request


@FUZZ
@given(request=grpc_requests())
def test_grpc_typed_contents_decode_or_name_the_problem(request):
    try:
        out = decode_inputs(request)
    except TensorError as exc:
        assert str(exc)
    else:
        for spec in request.inputs:
            assert list(out[spec.name][1].shape) == list(spec.shape)


@FUZZ
@given(name=st.sampled_from(sorted(P.RANGES)), value=st.one_of(numbers, json_values))
def test_parameters_validate_or_name_the_range(name, value):
    try:
        v = P.check(name, value)
    except ParameterError as exc:
        assert name in str(exc) and len(str(exc)) < 200  # quotes the value, never all of it
    else:
        assert RANGES_HOLD(name, v)


def RANGES_HOLD(name: str, v: float) -> bool:
    r = P.RANGES[name]
    return (r.low < v if r.low_open else r.low <= v) and v <= r.high


MANIFEST = resolve(scan(DEFAULT_REPOSITORY), "digits-vit").manifest


@FUZZ
@given(
    data=st.one_of(
        st.binary(max_size=300),
        st.builds(
            png_header, st.integers(1, 2**31 - 1), st.integers(1, 2**31 - 1), st.binary(max_size=64)
        ),
        st.sampled_from([b"GIF89a" + bytes(20), b"BM" + bytes(60), b"\xff\xd8\xff" + bytes(30)]),
    ),
    max_pixels=st.sampled_from([64 * 64, 4096 * 4096, 2**40]),
)
def test_uploads_decode_or_name_the_problem(data, max_pixels):
    try:
        image = decode_image(data, MANIFEST, ImageLimits(pixels=max_pixels))
    except TensorError as exc:
        assert str(exc) and "object at" not in str(exc)  # no Python object's repr
    else:
        assert image.shape == (1, *MANIFEST.image_shape) and np.isfinite(image).all()
