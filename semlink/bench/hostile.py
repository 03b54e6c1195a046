"""Hostile clients, for ``semlink bench reliability``: one probe per class of defect that an
attacker or a faulty client tried before (issue: hardening), each reporting what it measured.

- client values in metrics: failed gRPC calls with long random model names, /metrics size;
- CPU work on the event loop: uploads that take a second to decode, the health probe's worst
  latency meanwhile;
- bad input: requests that once reached a 500 (deep JSON, numbers beyond any float, shapes whose
  product overflows, a decompression bomb's header, INT8 values that overflow, a chunked body
  over the limit), counted by status;
- NaN answers: finite but extreme images, answers with non-finite probabilities;
- geometry bombs (issue: hardening, second round): uploads of a few kB announcing a strip of
  16,777,216 x 1 pixels, a side or an aspect ratio past the limits, or exactly the pixel limit;
- decoding queued against deadlines: an ordinary upload with a deadline behind uploads that
  take a CPU a while each to decode, when and how it is answered;
- an oversized link state: a state endpoint streaming hundreds of MB, the device's memory and
  its health probe meanwhile;
- API key files saved with a byte-order mark: a first-line comment must stay a comment;
- Unicode line breaks in request ids: lines forged in the text logs of device, server and link;
- client errors that once passed as server failures or were cut: an input overflowing fp16 on
  the device, a request id over 128 characters.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import secrets
import struct
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from semlink.protocol.http_codec import build_infer_request


def png_header(width: int, height: int, body: bytes = b"") -> bytes:
    """A PNG whose IHDR announces ``width`` x ``height`` (CRCs right), then ``body`` and an empty
    image: a few dozen bytes that claim any number of pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    tail = chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + body + tail


def wide_png(width: int = 8000, height: int = 2000) -> bytes:
    """Tens of kB that decode to 16 M pixels (sparse noise: about 0.15 s to decode here)."""
    pixels = np.random.default_rng(0).random((height, width)) > 0.999
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8) * 255).save(buf, "PNG")
    return buf.getvalue()


def metrics_growth(server_url: str, grpc_port: int, headers: dict[str, str], **tls: Any) -> dict:
    """Bytes /metrics grows by after 40 failed calls with 4 kB random model names."""
    import grpc

    from semlink.protocol import grpc_service_pb2 as pb
    from semlink.protocol import grpc_service_pb2_grpc as pb_grpc

    before = len(httpx.get(f"{server_url}/metrics", headers=headers, timeout=10).text)
    address = f"127.0.0.1:{grpc_port}"
    channel = (
        grpc.secure_channel(address, tls["credentials"])
        if tls.get("credentials")
        else grpc.insecure_channel(address)
    )
    with channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(40):
            request = pb.ModelInferRequest(model_name=secrets.token_hex(2000))
            request.inputs.add(name="tokens", datatype="FP16", shape=[1, 1, 4])
            request.raw_input_contents.append(bytes(8))
            with contextlib.suppress(grpc.RpcError):  # NOT_FOUND, as it should
                stub.ModelInfer(request, timeout=10)
    after = len(httpx.get(f"{server_url}/metrics", headers=headers, timeout=10).text)
    return {"calls": 40, "metrics_growth_bytes": after - before}


def loop_stall(device_url: str, headers: dict[str, str], uploads: int = 16) -> dict:
    """The health probe's latency (worst, median, how many answered) while ``uploads``
    slow-to-decode images arrive."""
    png = wide_png()
    threads = [
        threading.Thread(
            target=lambda: httpx.post(
                f"{device_url}/v1/classify",
                files={"image": ("w.png", png)},
                headers=headers,
                timeout=120,
            )
        )
        for _ in range(uploads)
    ]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    probes = []
    while any(t.is_alive() for t in threads):
        p0 = time.perf_counter()
        httpx.get(f"{device_url}/v2/health/live", timeout=30)
        probes.append(time.perf_counter() - p0)
        time.sleep(0.02)
    for t in threads:
        t.join()
    return {
        "uploads": uploads,
        "uploads_s": time.perf_counter() - t0,
        "probe_max_ms": 1000 * max(probes, default=0.0),
        "probe_p50_ms": 1000 * float(np.median(probes)) if probes else 0.0,
        "probes": len(probes),
    }


def bad_inputs(device_url: str, model: str, headers: dict[str, str]) -> dict:
    """Status codes of requests that once reached a 500; ``server_errors`` should be 0."""
    infer = f"{device_url}/v2/models/{model}/infer"

    def oip(datatype: str, shape: list, data: list, params: dict | None = None) -> bytes:
        spec = {"name": "image", "datatype": datatype, "shape": shape, "data": data}
        return json.dumps({"inputs": [spec], "parameters": params or {}}).encode()

    def chunked() -> Any:
        for _ in range(64):
            yield b"\0" * (128 * 1024)

    cases = {
        "deep JSON": lambda: httpx.post(
            infer, content=b"[" * 50_000 + b"]" * 50_000, headers=headers, timeout=60
        ),
        "integer beyond float": lambda: httpx.post(
            infer, content=oip("FP32", [1], [10**400]), headers=headers, timeout=60
        ),
        "parameter beyond float": lambda: httpx.post(
            infer, content=oip("FP32", [1], [0], {"budget": 10**400}), headers=headers, timeout=60
        ),
        "overflowing shape": lambda: httpx.post(
            infer, content=oip("FP32", [0, 2**62, 2**62], []), headers=headers, timeout=60
        ),
        "INT8 overflow": lambda: httpx.post(
            infer, content=oip("INT8", [1], [300]), headers=headers, timeout=60
        ),
        "decompression bomb header": lambda: httpx.post(
            f"{device_url}/v1/classify",
            files={"image": ("b.png", png_header(100_000, 100_000))},
            headers=headers,
            timeout=60,
        ),
        "chunked body over the limit": lambda: httpx.post(
            infer, content=chunked(), headers=headers, timeout=60
        ),
        "GIF upload": lambda: httpx.post(
            f"{device_url}/v1/classify",
            files={"image": ("a.gif", b"GIF89a" + bytes(40))},
            headers=headers,
            timeout=60,
        ),
    }
    statuses = {name: send().status_code for name, send in cases.items()}
    return {
        "cases": len(statuses),
        "server_errors": sum(s >= 500 for s in statuses.values()),
        "statuses": statuses,
    }


def nan_answers(device_url: str, model: str, shape: tuple[int, ...], headers: dict) -> dict:
    """Answers with non-finite probabilities to finite but extreme images (should be 0)."""
    bad = 0
    for value in (3e38, -3e38, 1e30):
        body, h = build_infer_request({"image": np.full((1, *shape), value, np.float32)})
        r = httpx.post(
            f"{device_url}/v2/models/{model}/infer",
            content=body,
            headers={**h, **headers},
            timeout=60,
        )
        if r.status_code == 200:
            probs = next(o for o in r.json()["outputs"] if o["name"] == "probabilities")
            bad += not np.isfinite(probs["data"]).all()
    return {"requests": 3, "nan_answers": bad}


# --- second round ---------------------------------------------------------------------------


def blank_png(width: int, height: int) -> bytes:
    """A real, decodable PNG of ``width`` x ``height`` black pixels: kB however many pixels."""
    buf = io.BytesIO()
    Image.new("L", (width, height)).save(buf, "PNG")
    return buf.getvalue()


# name -> (width, height): each reaches one limit of the device's defaults (pixels < 4096^2,
# sides < 8192, aspect < 16) and no other, except the strips, which reach them all
GEOMETRY_BOMBS = {
    "16777216x1 strip": (16_777_216, 1),
    "1x16777216 strip": (1, 16_777_216),
    "8192x1024 side": (8192, 1024),
    "4096x256 aspect 16": (4096, 256),
    "4096x4096 at the pixel limit": (4096, 4096),
}


def geometry_bombs(device_url: str, headers: dict[str, str]) -> dict[str, Any]:
    """Each of :data:`GEOMETRY_BOMBS` uploaded as a real PNG: its size, the status and how long
    the answer took (should be 400 in milliseconds: refused from the header)."""
    results = {}
    for name, (width, height) in GEOMETRY_BOMBS.items():
        png = blank_png(width, height)
        t0 = time.perf_counter()
        r = httpx.post(
            f"{device_url}/v1/classify",
            files={"image": ("bomb.png", png)},
            headers=headers,
            timeout=120,
        )
        ms = 1000 * (time.perf_counter() - t0)
        results[name] = {"bytes": len(png), "status": r.status_code, "ms": ms}
    return {
        "cases": len(results),
        "refused": sum(r["status"] == 400 for r in results.values()),
        "max_ms": max(r["ms"] for r in results.values()),
        "results": results,
    }


def decode_queue(
    device_url: str, headers: dict[str, str], uploads: int = 16, deadline_ms: float = 500.0
) -> dict[str, Any]:
    """An ordinary upload with ``deadline_ms`` sent while ``uploads`` heavy ones (16 M pixels,
    inside every limit: ~0.15 s of a CPU each to decode) are in flight: its status and when it
    was answered (by its deadline and a little, never after the queue), and how the heavy ones
    fared (200, or 503 once they could not start before their own deadline)."""
    heavy, light = wide_png(), blank_png(64, 64)
    statuses: list[int] = []

    def send_heavy() -> None:
        r = httpx.post(
            f"{device_url}/v1/classify",
            files={"image": ("w.png", heavy)},
            headers=headers,
            timeout=120,
        )
        statuses.append(r.status_code)

    threads = [threading.Thread(target=send_heavy) for _ in range(uploads)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(0.2)  # the heavy uploads are in and queued
    sent = time.perf_counter()
    r = httpx.post(
        f"{device_url}/v1/classify",
        files={"image": ("s.png", light)},
        data={"deadline_ms": str(deadline_ms)},
        headers=headers,
        timeout=120,
    )
    answered_ms = 1000 * (time.perf_counter() - sent)
    for t in threads:
        t.join()
    return {
        "uploads": uploads,
        "deadline_ms": deadline_ms,
        "status": r.status_code,
        "answered_ms": answered_ms,
        "heavy_s": time.perf_counter() - t0,
        "heavy_ok": statuses.count(200),
        "heavy_late": statuses.count(503),
    }


class StateBomb:
    """A link state endpoint gone bad: every ``GET`` is answered with ``size`` bytes of a JSON
    array that never closes, streamed without a declared length, made as it is sent (so the
    bench holds none of it). Counts the polls and the bytes the reader took."""

    def __init__(self, size: int = 400 * 2**20) -> None:
        self.size, self.polls, self.served = size, 0, 0
        bomb = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                bomb.polls += 1
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.end_headers()
                chunk, sent = b"[" + b"0," * 32767, 0
                with contextlib.suppress(OSError):  # the reader hung up: what it should do
                    while sent < bomb.size:
                        self.wfile.write(chunk)
                        sent += len(chunk)
                        bomb.served += len(chunk)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/state"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def memory_mb(pid: int) -> dict[str, float]:
    """A process's resident memory now and at its peak (``VmRSS``, ``VmHWM``), in MB (Linux)."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM")}


def oversized_state(
    device_url: str, pid: int, bomb: StateBomb, reference_pid: int, seconds: float = 5.0
) -> dict[str, Any]:
    """A device whose link state URL is ``bomb``: its peak memory after ``seconds`` of polls
    beside a device polling an ordinary link (``reference_pid``), its health probe's latency
    meanwhile, and how many bytes the endpoint wrote a poll (of ``bomb.size``) before the
    device hung up: the device stops reading past 64 kB; the rest is what the sockets buffered."""
    probes = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        p0 = time.perf_counter()
        httpx.get(f"{device_url}/v2/health/live", timeout=30)
        probes.append(time.perf_counter() - p0)
        time.sleep(0.05)
    polls = max(bomb.polls, 1)
    return {
        "offered_bytes": bomb.size,
        "polls": bomb.polls,
        "written_per_poll_bytes": bomb.served / polls,
        "device_mb": memory_mb(pid),
        "reference_mb": memory_mb(reference_pid),
        "probe_max_ms": 1000 * max(probes),
        "probe_p50_ms": 1000 * float(np.median(probes)),
        "probes": len(probes),
    }


BOM_COMMENT = "#keys-of-the-hostile-bench-do-not-use"
"""The first line of a key file saved with a byte-order mark: a comment without spaces that
became a valid key when the mark stuck to it."""


def write_bom_keys(path: Path, key: str, comment: str = BOM_COMMENT) -> Path:
    """A key file as an editor that adds a byte-order mark saves it: mark, comment, key."""
    path.write_bytes(f"\ufeff{comment}\n{key}\n".encode())
    return path


def bom_keys(device_url: str, key: str, spaced: Path) -> dict[str, Any]:
    """What a device started with :func:`write_bom_keys`'s file lets in (the key: 200; the
    comment as a bearer token or a Basic password: 401), and whether a file whose first-line
    comment holds spaces (``spaced``, once refused at start-up) loads."""
    from semlink.runtime.security import load_api_keys

    url = f"{device_url}/v2"
    # the line as 7473c99 read it, mark included: a Basic password carries it (UTF-8)
    basic = base64.b64encode(f"user:\ufeff{BOM_COMMENT}".encode()).decode()
    statuses = {
        "key": httpx.get(url, headers={"Authorization": f"Bearer {key}"}).status_code,
        "comment as bearer": httpx.get(
            url, headers={"Authorization": f"Bearer {BOM_COMMENT}"}
        ).status_code,
        "comment as Basic password": httpx.get(
            url, headers={"Authorization": f"Basic {basic}"}
        ).status_code,
    }
    try:
        spaced_keys = len(load_api_keys(None, spaced))
    except ValueError:
        spaced_keys = -1
    return {
        "statuses": statuses,
        "comment_admitted": sum(s == 200 for k, s in statuses.items() if k != "key"),
        "spaced_comment_file_keys": spaced_keys,
    }


# what a common reader takes for a line break (Python's str.splitlines: every one of them)
LINE_BREAKS = {
    "U+2028": "\u2028",
    "U+2029": "\u2029",
    "U+0085": "\x85",
    "U+001C": "\x1c",
    "U+001D": "\x1d",
    "U+001E": "\x1e",
    "VT": "\x0b",
    "FF": "\x0c",
    "CR": "\r",
    "LF": "\n",
}
FORGED = "1999-01-01 00:00:00,000 INFO semlink: forged"


def line_breaks(
    device_url: str, model: str, shape: tuple[int, ...], headers: dict[str, str]
) -> dict[str, Any]:
    """One request per :data:`LINE_BREAKS` character, its id holding the character followed by
    a forged log line; :func:`forged_lines` then counts what got through."""
    statuses = {}
    for name, char in LINE_BREAKS.items():
        body, h = build_infer_request(
            {"image": np.zeros((1, *shape), np.float32)}, request_id=f"lb-{name}{char}{FORGED}"
        )
        r = httpx.post(
            f"{device_url}/v2/models/{model}/infer",
            content=body,
            headers={**h, **headers},
            timeout=30,
        )
        statuses[name] = r.status_code
    return {"requests": len(statuses), "statuses": statuses}


def forged_lines(logs: list[Path]) -> dict[str, Any]:
    """Lines of ``logs`` (split as Python splits lines, at every break it knows) that begin
    with :data:`FORGED`, and the lines read."""
    lines = [line for path in logs for line in path.read_text(errors="replace").splitlines()]
    return {
        "logs": [p.name for p in logs],
        "lines": len(lines),
        "forged": sum(line.startswith(FORGED) for line in lines),
    }


def client_errors(
    device_url: str, model: str, shape: tuple[int, ...], headers: dict[str, str]
) -> dict[str, Any]:
    """Two client errors: an image of 1e30 (finite; on a model whose fp16 tokens for it
    overflow, once a 200 ``degraded`` blaming the server, now a 400 naming the input; a model
    whose tokens stay finite answers it, with the input check's warning) and an id of 129
    characters (once echoed cut, now a 400). Status, and for a 200 where it was answered,
    whether degraded, and whether it carried a warning."""
    url = f"{device_url}/v2/models/{model}/infer"
    out = {}
    for name, image, rid in (
        ("image of 1e30", np.full((1, *shape), 1e30, np.float32), ""),
        ("id of 129 characters", np.zeros((1, *shape), np.float32), "x" * 129),
    ):
        body, h = build_infer_request({"image": image}, request_id=rid)
        r = httpx.post(url, content=body, headers={**h, **headers}, timeout=60)
        doc = r.json()
        p = doc.get("parameters", {})
        out[name] = {
            "status": r.status_code,
            "error": doc.get("error", "")[:200],
            "exit": p.get("exit"),
            "degraded": p.get("degraded"),
            "warned": bool(p.get("warning")),
        }
    return out
