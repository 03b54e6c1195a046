"""Hostile input against running processes, shared by the tests and ``semlink bench
reliability``: requests generated from a process's own OpenAPI schema by schemathesis (valid and
deliberately invalid ones), and random bytes on a gRPC port."""

from __future__ import annotations

import contextlib
import os
import socket
from typing import Any

HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def fuzz_openapi(
    base_url: str, max_examples: int = 25, seed: int = 0, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """Every operation of ``base_url``'s ``/openapi.json``, ``max_examples`` generated cases per
    operation and generation mode (positive and negative), sent with ``headers`` (e.g. an API
    key). Returns the case count and the cases answered with a 5xx other than 503 (load
    shedding, not a crash)."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hseed
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode
    from schemathesis.core.result import Err

    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", headers=headers or {})
    cases, failures = 0, []
    for result in schema.get_all_operations():
        if isinstance(result, Err):  # the server's own schema is broken: say so, do not skip
            raise ValueError(f"{base_url}/openapi.json: {result.err()}")
        op = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @hseed(seed)
            @settings(
                max_examples=max_examples,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=op.as_strategy(generation_mode=mode))
            def run(case: Any) -> None:
                nonlocal cases
                cases += 1
                response = case.call(timeout=30, headers=headers or {})
                if response.status_code >= 500 and response.status_code != 503:
                    failures.append(
                        f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:200]}"
                    )

            # an operation without parameters has no invalid input to generate
            with contextlib.suppress(Unsatisfiable):
                run()
    return {"cases": cases, "server_errors": len(failures), "failures": failures[:10]}


def fuzz_grpc_port(host: str, port: int, rounds: int = 200) -> dict[str, Any]:
    """Connects ``rounds`` times and sends random bytes (every other time after a valid HTTP/2
    preface, so the frame parser sees them). Returns how many rounds were sent."""
    for i in range(rounds):
        try:
            with socket.create_connection((host, port), timeout=2) as s:
                prefix = HTTP2_PREFACE if i % 2 else b""
                s.sendall(prefix + os.urandom(1 + i * 37 % 4096))
                s.settimeout(0.2)
                s.recv(1024)
        except OSError:
            pass  # closing on garbage is the right answer
    return {"rounds": rounds}
