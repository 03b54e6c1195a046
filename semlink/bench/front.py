"""``semlink bench front``: the device's HTTP front against the server alone, under locust.

Two systems on the same core (core 0, by CPU affinity), driven by the same load tool, locust
(``semlink/bench/locustfile.py``, ``users`` clients each sending its next request as soon as
the answer arrives), running on the other core(s):

- **server alone**: locust posts the device's packed tokens (OIP binary tensors, as the device
  sends them) to the server's HTTP front, which runs the tail;
- **device front**: locust posts images to the device's HTTP front, which runs the head, sends
  the tokens to the server over gRPC and answers; device and server share core 0.

The figure is the device front's throughput as a share of the server alone's (target >= 80 %):
what the whole split path costs over serving the tail by itself. Plaintext gRPC on loopback.
Beside each run, the CPU time each process spent per request (from ``/proc``, over the
measured run): where a request's cost lies, device or server.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from semlink.bench import FULL_SPEED, model_and_test_split, run_and_report
from semlink.procs import Processes, Stack, split_cores


@dataclass
class FrontBenchConfig:
    users: int = 16
    """Concurrent locust clients."""
    seconds: float = 20.0
    """Length of each locust run (after a warm-up of a quarter of it)."""
    model: str = "scene-vit"
    """a token-selection pipeline of the zoo (digits-vit: the digits-canvas fixture's)"""
    transport: str = "stream"
    """The device's offload transport: stream (its default) or unary."""
    out: str = "runs/bench-front"


def _bodies(folder: Path, tensors: list[dict[str, np.ndarray]]) -> None:
    from semlink.protocol.http_codec import build_infer_request

    folder.mkdir(parents=True, exist_ok=True)
    for i, t in enumerate(tensors):
        body, headers = build_infer_request(t, {"budget": 0.25})
        (folder / f"{i:03d}.bin").write_bytes(body)
        (folder / f"{i:03d}.json").write_text(json.dumps(dict(headers)))


def locust(host: str, path: str, bodies: Path, cfg: FrontBenchConfig, cores: set[int]) -> dict:
    """One headless locust run; returns its aggregated requests/s, failures and percentiles."""
    prefix = Path(tempfile.mkdtemp(prefix="locust-")) / "run"
    env = {
        **os.environ,
        "SEMLINK_LOCUST_DIR": str(bodies),
        "SEMLINK_LOCUST_PATH": path,
    }
    cmd = [
        str(Path(sys.executable).parent / "locust"),
        "-f",
        str(Path(__file__).with_name("locustfile.py")),
        "--headless",
        "--users",
        str(cfg.users),
        "--spawn-rate",
        str(cfg.users),
        "--run-time",
        f"{max(1, round(cfg.seconds))}s",
        "--host",
        host,
        "--csv",
        str(prefix),
        "--only-summary",
        "--loglevel",
        "WARNING",
    ]
    proc = subprocess.run(
        cmd,
        env=env,
        capture_output=True,
        text=True,
        timeout=cfg.seconds + 120,
        preexec_fn=lambda: os.sched_setaffinity(0, cores),
    )
    stats = Path(f"{prefix}_stats.csv")
    if not stats.is_file():
        raise RuntimeError(f"locust wrote no statistics: {proc.stderr[-2000:]}")
    row = next(r for r in csv.DictReader(stats.open()) if r["Name"] == "Aggregated")
    return {
        "requests": int(row["Request Count"]),
        "failures": int(row["Failure Count"]),
        "requests_per_s": float(row["Requests/s"]),
        "p50_ms": float(row["50%"]),
        "p95_ms": float(row["95%"]),
        "p99_ms": float(row["99%"]),
    }


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) that process ``pid`` has used so far, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(procs: Processes, names: tuple[str, ...], run: Any) -> tuple[dict, dict[str, float]]:
    """``run()``'s locust result and the CPU ms each of ``names`` spent per request in it."""
    pids = {n: procs.children[n].pid for n in names}
    before = {n: cpu_seconds(p) for n, p in pids.items()}
    result = run()
    spent = {n: cpu_seconds(p) - before[n] for n, p in pids.items()}
    return result, {n: 1000 * s / max(result["requests"], 1) for n, s in spent.items()}


def bench(cfg: FrontBenchConfig) -> dict[str, Any]:
    """Server alone, then the device front, each warmed up then measured."""
    sut, tool = split_cores()
    mv, data = model_and_test_split(cfg.model)
    head = mv.session("head")
    out = Path(cfg.out)
    images = [data.images[i][None] for i in range(32)]
    tokens = [
        head.run(None, {"image": x, "alpha": np.array([0.25], np.float32)})[0].astype(np.float16)
        for x in images
    ]
    _bodies(out / "tokens", [{"tokens": t} for t in tokens])
    _bodies(out / "images", [{"image": x} for x in images])
    warm = replace(cfg, seconds=max(cfg.seconds / 4, 2.0))
    result: dict[str, Any] = {
        "config": asdict(cfg),
        "cores": {"system": sorted(sut or ()), "locust": sorted(tool)},
    }
    path = f"/v2/models/{cfg.model}/infer"
    procs = Processes(out / "logs")
    stack = Stack(procs, model=cfg.model)
    try:
        stack.start_server("--threads", "1", cpus=sut)
        locust(stack.server_url, path, out / "tokens", warm, tool)
        result["server_alone"], cpu = measured(
            procs, ("server",), lambda: locust(stack.server_url, path, out / "tokens", cfg, tool)
        )
        result["server_alone"]["cpu_ms_per_request"] = cpu
        stack.start_device(
            "--max-concurrent-per-client",
            "0",
            "--transport",
            cfg.transport,
            through_link=False,
            cpus=sut,
        )
        locust(stack.device_url, path, out / "images", warm, tool)
        result["device_front"], cpu = measured(
            procs,
            ("device", "server"),
            lambda: locust(stack.device_url, path, out / "images", cfg, tool),
        )
        result["device_front"]["cpu_ms_per_request"] = cpu
    finally:
        procs.stop()
    result["share"] = (
        result["device_front"]["requests_per_s"] / result["server_alone"]["requests_per_s"]
    )
    return result


def format_table(r: dict[str, Any]) -> str:
    """Both runs and the share as text."""
    cfg = r["config"]
    lines = [
        f"locust, {cfg['users']} clients, {cfg['seconds']:g} s each; system under test on cores "
        f"{r['cores']['system']}, locust on {r['cores']['locust']}; {cfg['model']}, plaintext",
        FULL_SPEED,
        "",
        f"{'system':<44} {'req/s':>7} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'failed':>7}"
        "   CPU ms a request",
    ]
    for key, label in (
        ("server_alone", "server alone (tokens to its HTTP front)"),
        ("device_front", "device front (images; head, gRPC, tail)"),
    ):
        v = r[key]
        cpu = ", ".join(f"{n} {ms:.2f}" for n, ms in v.get("cpu_ms_per_request", {}).items())
        lines.append(
            f"{label:<44} {v['requests_per_s']:>7.0f} {v['p50_ms']:>7.0f} {v['p95_ms']:>7.0f} "
            f"{v['p99_ms']:>7.0f} {v['failures']:>7}   {cpu}"
        )
    target = "met" if r["share"] >= 0.8 else "MISSED"
    lines.append(
        f"device front: {100 * r['share']:.0f} % of the server alone's throughput "
        f"(target >= 80 %: {target})"
    )
    return "\n".join(lines)


def main(cfg: FrontBenchConfig, json_path: str | None = None) -> int:
    """Runs the benchmark, prints its table, writes the JSON when asked."""
    return run_and_report(bench, format_table, cfg, json_path)
