"""The OIP HTTP/REST request body: JSON, or JSON header + raw tensors (binary-tensor extension).

Binary extension: the body is a JSON header of ``Inference-Header-Content-Length`` bytes followed
by each input's raw little-endian bytes in order; each such input says its size in
``parameters.binary_data_size``.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from semlink.protocol.codec import (
    DTYPES,
    TensorError,
    check_shape,
    datatype_of,
    from_bytes,
    from_values,
    to_bytes,
)

HEADER_LENGTH = "inference-header-content-length"


def parse_infer_body(
    body: bytes, header_length: str | None
) -> tuple[dict[str, Any], dict[str, tuple[str, np.ndarray]]]:
    """Returns the JSON request and ``{input name: (datatype, array)}``; raises :class:`TensorError`."""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise TensorError(
                f"Inference-Header-Content-Length must be an integer, got {header_length!r}"
            ) from None
        if not 0 < n <= len(body):
            raise TensorError(
                f"Inference-Header-Content-Length {n} is outside the body of {len(body)} bytes"
            )
        head, rest = body[:n], body[n:]
    else:
        head, rest = body, b""
    try:
        request = json.loads(head)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TensorError(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise TensorError("request body nests JSON too deeply to be an OIP request") from None
    if (
        not isinstance(request, dict)
        or not isinstance(request.get("inputs"), list)
        or not request["inputs"]
    ):
        raise TensorError('request must be a JSON object with a non-empty "inputs" list')
    if not isinstance(request.get("parameters", {}), dict):
        raise TensorError('"parameters" must be a JSON object, e.g. {"budget": 0.25}')
    tensors: dict[str, tuple[str, np.ndarray]] = {}
    offset = 0
    for spec in request["inputs"]:
        if not isinstance(spec, dict) or not all(k in spec for k in ("name", "shape", "datatype")):
            raise TensorError('each input needs "name", "shape" and "datatype"')
        name, dtype, shape = spec["name"], spec["datatype"], spec["shape"]
        if not isinstance(name, str) or not isinstance(dtype, str):
            raise TensorError(
                f'input "name" and "datatype" must be strings, got {name!r} and {dtype!r}'
            )
        if not isinstance(spec.get("parameters", {}), dict):
            raise TensorError(f'input {name!r}: "parameters" must be a JSON object')
        if not isinstance(shape, list):
            raise TensorError(
                f"input {name!r}: shape must be a list of non-negative integers, got {shape!r}"
            )
        shape = check_shape(shape, name)
        if dtype not in DTYPES:
            raise TensorError(
                f"input {name!r}: datatype {dtype!r} is not supported; use one of {sorted(DTYPES)}"
            )
        size = (spec.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if (
                isinstance(size, bool)
                or not isinstance(size, int)
                or size < 0
                or offset + size > len(rest)
            ):
                raise TensorError(
                    f"input {name!r}: binary_data_size {size!r} runs past the end of the body"
                )
            tensors[name] = (
                dtype,
                from_bytes(rest[offset : offset + size], dtype, shape, name=name),
            )
            offset += size
        else:
            if "data" not in spec:
                raise TensorError(
                    f'input {name!r} has neither "data" nor parameters.binary_data_size'
                )
            tensors[name] = (dtype, from_values(spec["data"], dtype, shape, name))
    if offset != len(rest):
        raise TensorError(
            f"{len(rest) - offset} trailing bytes after the binary inputs; check binary_data_size"
        )
    return request, tensors


def build_infer_response(
    model_name: str,
    model_version: str,
    request_id: str,
    outputs: dict[str, Any],
    parameters: dict[str, Any],
    binary: bool,
) -> tuple[bytes, dict[str, str]]:
    """Encodes an infer response as JSON, or JSON header + raw outputs when ``binary``."""
    specs, raws = [], []
    for name, arr in outputs.items():
        spec: dict[str, Any] = {
            "name": name,
            "datatype": datatype_of(arr),
            "shape": list(arr.shape),
        }
        if binary:
            raw = to_bytes(arr)
            spec["parameters"] = {"binary_data_size": len(raw)}
            raws.append(raw)
        else:
            spec["data"] = arr.reshape(-1).tolist()
        specs.append(spec)
    doc = {
        "model_name": model_name,
        "model_version": model_version,
        "id": request_id,
        "parameters": parameters,
        "outputs": specs,
    }
    head = json.dumps(doc).encode()
    if not binary:
        return head, {"content-type": "application/json"}
    return head + b"".join(raws), {
        "content-type": "application/octet-stream",
        HEADER_LENGTH: str(len(head)),
    }


def wants_binary(request: dict[str, Any]) -> bool:
    """Whether the request asks for binary output tensors (``binary_data_output``)."""
    params = request.get("parameters") or {}
    return bool(params.get("binary_data_output", False))


def build_infer_request(
    inputs: dict[str, np.ndarray],
    parameters: dict[str, Any] | None = None,
    request_id: str = "",
    binary_output: bool = False,
) -> tuple[bytes, dict[str, str]]:
    """An OIP infer body with every input as raw bytes (binary-tensor extension), and its headers."""
    specs, raws = [], []
    for name, arr in inputs.items():
        raw = to_bytes(arr)
        specs.append(
            {
                "name": name,
                "datatype": datatype_of(arr),
                "shape": list(arr.shape),
                "parameters": {"binary_data_size": len(raw)},
            }
        )
        raws.append(raw)
    params = dict(parameters or {})
    if binary_output:
        params["binary_data_output"] = True
    head = json.dumps({"id": request_id, "inputs": specs, "parameters": params}).encode()
    return head + b"".join(raws), {
        "content-type": "application/octet-stream",
        HEADER_LENGTH: str(len(head)),
    }
