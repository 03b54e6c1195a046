"""Tensor codecs: numpy <-> Open Inference Protocol tensors as raw little-endian bytes.

Payload tensors always travel in ``raw_input_contents`` / ``raw_output_contents`` (gRPC) or the
binary-tensor extension (HTTP), never as JSON lists. Every decode validates datatype, shape and
byte count against what the receiver expects and raises :class:`TensorError` naming the fix.

Token payloads (the device's kept tokens) are packed as ``fp16`` by default or ``int8`` with one
``fp32`` scale per token (symmetric, ``scale = max|x| / 127``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from semlink.protocol.params import shown

# OIP datatype names <-> numpy dtypes (little-endian on the wire).
DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("bool"),
    "UINT8": np.dtype("<u1"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
TOKEN_FORMATS = ("fp16", "int8", "fp32")
MAX_ELEMENTS = 1 << 24  # 16 M elements per tensor: well above any semlink payload


class TensorError(ValueError):
    """A tensor that does not match what the receiver expects; the message names the fix."""


def datatype_of(array: np.ndarray) -> str:
    """The OIP datatype name of an array's dtype; raises :class:`TensorError` if it has none."""
    for name, dt in DTYPES.items():
        if array.dtype == dt or array.dtype == dt.newbyteorder("="):
            return name
    raise TensorError(f"dtype {array.dtype} has no OIP datatype; use one of {sorted(DTYPES)}")


def to_bytes(array: np.ndarray) -> bytes:
    """Raw little-endian, C-order bytes of ``array``."""
    dt = DTYPES[datatype_of(array)]
    return np.ascontiguousarray(array, dtype=dt).tobytes()


def from_bytes(
    raw: bytes,
    datatype: str,
    shape: Sequence[int],
    *,
    name: str = "tensor",
    expect_datatype: str | Sequence[str] | None = None,
    expect_shape: Sequence[int | None] | None = None,
) -> np.ndarray:
    """Decodes raw bytes into an array, validating datatype, shape and byte count.

    ``expect_shape`` uses ``None`` for a free dimension. Raises :class:`TensorError`.
    """
    if datatype not in DTYPES:
        raise TensorError(
            f"input {name!r}: datatype {datatype!r} is not supported; use one of {sorted(DTYPES)}"
        )
    allowed = [expect_datatype] if isinstance(expect_datatype, str) else expect_datatype
    if allowed is not None and datatype not in allowed:
        raise TensorError(
            f"input {name!r}: datatype must be {' or '.join(allowed)}, got {datatype}"
        )
    shape = check_shape(shape, name)
    if expect_shape is not None:
        ok = len(shape) == len(expect_shape) and all(
            e is None or e == s for s, e in zip(shape, expect_shape, strict=False)
        )
        if not ok:
            pretty = [-1 if e is None else e for e in expect_shape]
            raise TensorError(f"input {name!r}: shape must be {pretty} (-1 = any), got {shape}")
    count = math.prod(shape)
    dt = DTYPES[datatype]
    if len(raw) != count * dt.itemsize:
        raise TensorError(
            f"input {name!r}: {datatype} shape {shape} needs {count * dt.itemsize} bytes, got {len(raw)}"
        )
    return np.frombuffer(raw, dtype=dt).reshape(shape)


def check_shape(shape: Sequence[Any], name: str = "tensor") -> list[int]:
    """A tensor shape as a list of ints, each >= 0, of at most :data:`MAX_ELEMENTS` elements in
    all (counted exactly, so no product can overflow); raises :class:`TensorError`."""
    if not all(isinstance(s, int | np.integer) and not isinstance(s, bool) for s in shape):
        raise TensorError(f"input {name!r}: shape must be a list of integers, got {list(shape)!r}")
    dims = [int(s) for s in shape]
    if any(s < 0 for s in dims):
        raise TensorError(f"input {name!r}: shape {dims} has a negative dimension")
    if len(dims) > 8:
        raise TensorError(f"input {name!r}: shape {dims} has more than 8 dimensions")
    # each dimension first: [2**40, 0] holds 0 elements, but no tensor has a side that long
    if (longest := max(dims, default=0)) > MAX_ELEMENTS:
        raise TensorError(
            f"input {name!r}: shape {shown(dims)} has a dimension of {longest}; a tensor may "
            f"hold at most {MAX_ELEMENTS} elements"
        )
    count = math.prod(dims)  # Python integers: exact, whatever the client sent
    if count > MAX_ELEMENTS:
        raise TensorError(
            f"input {name!r}: shape {shown(dims)} holds {count} elements; a tensor may hold at "
            f"most {MAX_ELEMENTS}"
        )
    return dims


def from_values(
    values: Sequence[Any], datatype: str, shape: Sequence[Any], name: str
) -> np.ndarray:
    """An array from typed values (OIP JSON ``data`` or gRPC ``*_contents``), validating the
    shape and that every value fits ``datatype``; raises :class:`TensorError`, never an
    overflow."""
    if datatype not in DTYPES:
        raise TensorError(
            f"input {name!r}: datatype {datatype!r} is not supported; use one of {sorted(DTYPES)}"
        )
    dims = check_shape(shape, name)
    dt = DTYPES[datatype]
    if dt.kind in "iu":  # integers: range-checked in exact arithmetic before the cast
        flat = np.asarray(values, dtype=object).reshape(-1)
        if not all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in flat):
            raise TensorError(f"input {name!r}: {datatype} data must be integers")
        info = np.iinfo(dt)
        if flat.size and not (info.min <= min(flat) and max(flat) <= info.max):
            raise TensorError(
                f"input {name!r}: {datatype} values must lie in [{info.min}, {info.max}]"
            )
    try:
        with np.errstate(over="ignore"):  # FP16 overflows to inf; callers refuse non-finite input
            arr = np.asarray(values, dtype=dt)
    except (OverflowError, ValueError, TypeError) as exc:
        raise TensorError(f"input {name!r}: data does not fit {datatype}: {exc}") from None
    if arr.size != math.prod(dims):
        raise TensorError(
            f"input {name!r}: {arr.size} values do not fit shape {dims} ({math.prod(dims)} values)"
        )
    return arr.reshape(dims)


@dataclass
class PackedTokens:
    """Kept tokens as they travel: the main tensor and, for int8, a per-token scale."""

    format: str
    tokens: np.ndarray  # (B, T, d) in fp16 / int8 / fp32
    scale: np.ndarray | None = None  # (B, T) fp32, int8 only

    @property
    def nbytes(self) -> int:
        """Bytes of the tokens and their scales."""
        return int(self.tokens.nbytes + (0 if self.scale is None else self.scale.nbytes))


def pack_tokens(tokens: np.ndarray, fmt: str = "fp16") -> PackedTokens:
    """Quantises float32 tokens (B, T, d) for the wire."""
    if fmt not in TOKEN_FORMATS:
        raise ValueError(f"token format must be one of {TOKEN_FORMATS}, got {fmt!r}")
    if fmt == "fp32":
        return PackedTokens(fmt, tokens.astype(np.float32))
    if fmt == "fp16":
        return PackedTokens(fmt, tokens.astype(np.float16))
    scale = np.abs(tokens).max(axis=-1) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.rint(tokens / scale[..., None]), -127, 127).astype(np.int8)
    return PackedTokens(fmt, q, scale)


def unpack_tokens(packed: PackedTokens) -> np.ndarray:
    """Back to float32 (B, T, d)."""
    if packed.format == "int8":
        if packed.scale is None:
            raise TensorError("int8 tokens need a 'token_scale' FP32 tensor of shape [B, T]")
        return packed.tokens.astype(np.float32) * packed.scale[..., None]
    return packed.tokens.astype(np.float32)


def token_format_of(datatype: str) -> str:
    """``fp16``, ``fp32`` or ``int8`` for a ``tokens`` datatype; raises :class:`TensorError`."""
    formats = {"FP16": "fp16", "FP32": "fp32", "INT8": "int8"}
    if datatype not in formats:
        raise TensorError(f"input 'tokens': datatype must be FP16, FP32 or INT8, got {datatype}")
    return formats[datatype]


# --- parameters ------------------------------------------------------------------------------


def param_value(p: object) -> bool | int | float | str | None:
    """The Python value of an ``InferParameter`` (whichever oneof field is set)."""
    which = p.WhichOneof("parameter_choice")  # type: ignore[attr-defined]
    return None if which is None else getattr(p, which)


def set_param(target: Mapping, key: str, value: bool | int | float | str) -> None:
    """Sets ``target[key]`` (a protobuf map of ``InferParameter``) from a Python value."""
    p = target[key]  # type: ignore[index]
    if isinstance(value, bool):
        p.bool_param = value
    elif isinstance(value, int):
        p.int64_param = value
    elif isinstance(value, float):
        p.double_param = value
    else:
        p.string_param = str(value)
