"""``semlink bench reliability``: load, faults, hostile input and access control, measured on real
processes (one server, one link emulator and one device per simulated device, mutual TLS and
API keys on, as deployed).

- **load**: ``devices`` devices x ``requests`` requests, ``concurrency`` in flight per device,
  all at once through their links. Every request carries a unique id; *answered* counts ids with
  an HTTP 200 naming that id, *lost* ids without one, *duplicated* ids the devices' own logs show
  handling more than once.
- **faults** (each on its own device and link): the server killed with SIGKILL mid-stream and
  restarted; the link frozen (a trace with no delivery opportunity for 10 s of the default
  ``fault_seconds``, 5/12 of it); the device
  restarted (SIGTERM, graceful drain) under load, the client retrying refused connections with
  backoff and jitter (inference is idempotent). ``recovery_s``: from the fault's end to the first
  answer offloaded to the server again; for the device restart, the longest time after SIGTERM
  in which no answer arrived at all.
- **fuzz**: schemathesis cases against both HTTP APIs, random bytes on the gRPC port; crashes
  are processes that died, server errors 5xx answers other than load shedding.
- **hostile**: one probe per class of defect a hostile client or a broken link tried
  (:mod:`semlink.bench.hostile`), each reporting what it measured.
- **security**: plaintext, certificate-less and wrong-CA gRPC clients refused; HTTP without or
  with a wrong key refused (401), health probes open; no secret in any log.

``--scenarios`` runs some of them only (e.g. ``--scenarios hostile security``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from semlink.bench import FULL_SPEED, model_and_test_split, run_and_report
from semlink.procs import Processes, Stack
from semlink.protocol.http_codec import build_infer_request

KEY = "bench-key-" + "5c0ffee1" * 3
SCENARIOS = ("load", "faults", "fuzz", "hostile", "security")
RETRYABLE = (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


@dataclass
class ReliabilityBenchConfig:
    model: str = "scene-vit"
    """The zoo pipeline every device serves; requests are its dataset's test images."""
    devices: int = 8
    requests: int = 1000
    """Per device, in the load test."""
    concurrency: int = 4
    """Requests in flight per device."""
    fault_seconds: float = 24.0
    """Length of each fault scenario's request stream."""
    fuzz_examples: int = 25
    scenarios: tuple[str, ...] = SCENARIOS
    """Which to run, of load, faults, fuzz, hostile, security."""
    out: str = "runs/bench-reliability"

    def __post_init__(self) -> None:
        if self.fault_seconds < 8:
            raise ValueError(
                f"--fault-seconds must be at least 8 (the link freeze needs seconds of traffic "
                f"before, during and after it); got {self.fault_seconds}"
            )
        unknown = sorted(set(self.scenarios) - set(SCENARIOS))
        if unknown or not self.scenarios:
            raise ValueError(
                f"scenarios must be some of {', '.join(SCENARIOS)}; got {list(self.scenarios)}"
            )


@dataclass
class Outcome:
    request_id: str
    status: int = 0
    degraded: bool = False
    exit: str = ""
    sent_s: float = 0.0
    answered_s: float = 0.0
    attempts: int = 0
    errors: list[str] = field(default_factory=list)
    replica: str = ""  # the server replica that answered, if one did


async def ask(
    client: httpx.AsyncClient, url: str, image: np.ndarray, rid: str, t0: float, retry_s: float
) -> Outcome:
    """One request, retried on refused or broken connections (the device restarting) with
    exponential backoff and full jitter for up to ``retry_s``."""
    out = Outcome(rid, sent_s=time.perf_counter() - t0)
    body, headers = build_infer_request({"image": image}, {"request_id": rid})
    headers["Authorization"] = f"Bearer {KEY}"
    delay, give_up = 0.05, time.perf_counter() + retry_s
    while True:
        out.attempts += 1
        try:
            resp = await client.post(url, content=body, headers=headers)
        except RETRYABLE as exc:
            out.errors.append(type(exc).__name__)
            if time.perf_counter() > give_up:
                return out
            await asyncio.sleep(random.uniform(0, delay))
            delay = min(delay * 2, 1.0)
            continue
        out.status = resp.status_code
        out.answered_s = time.perf_counter() - t0
        if resp.status_code == 200:
            p = resp.json()["parameters"]
            if p.get("request_id") != rid:
                out.status = -1  # an answer to somebody else's request
            out.degraded, out.exit = bool(p["degraded"]), p["exit"]
            if out.exit == "server":
                out.replica = str(p.get("server_replica", ""))
        return out


async def stream(
    url: str,
    images: np.ndarray,
    prefix: str,
    n: int,
    concurrency: int,
    t0: float,
    rate_per_s: float | None = None,
    retry_s: float = 0.0,
) -> list[Outcome]:
    """``n`` requests, at most ``concurrency`` in flight, optionally paced at ``rate_per_s``."""
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=60.0, limits=limits) as client:

        async def one(i: int) -> Outcome:
            if rate_per_s:
                await asyncio.sleep(max(0.0, i / rate_per_s - (time.perf_counter() - t0)))
            async with sem:
                return await ask(
                    client, url, images[i % len(images)][None], f"{prefix}-{i}", t0, retry_s
                )

        return await asyncio.gather(*(one(i) for i in range(n)))


def handled_ids(procs: Processes, names: list[str]) -> Counter:
    """How often each request id appears as handled in the devices' logs."""
    pattern = re.compile(r"request (\S+): (?:server|device|degraded),")
    counts: Counter = Counter()
    for name in names:
        for path in procs.log_dir.glob(f"{name}*.log"):
            counts.update(pattern.findall(path.read_text()))
    return counts


def summary(outs: list[Outcome], handled: Counter) -> dict[str, Any]:
    answered = [o for o in outs if o.status == 200]
    lat = [1000 * (o.answered_s - o.sent_s) for o in answered]
    return {
        "requests": len(outs),
        "answered": len(answered),
        "degraded": sum(o.degraded for o in answered),
        "lost": sum(o.status == 0 for o in outs),
        "duplicated": sum(1 for o in outs if handled.get(o.request_id, 0) > 1),
        "errors": sum(o.status not in (0, 200) for o in outs),
        "p50_ms": float(np.percentile(lat, 50)) if lat else float("nan"),
        "p99_ms": float(np.percentile(lat, 99)) if lat else float("nan"),
    }


def recovery(outs: list[Outcome], since_s: float, any_answer: bool = False) -> float:
    """Seconds from ``since_s`` to the first answer sent after it that the server gave (or, with
    ``any_answer``, any answer)."""
    ok = [
        o.answered_s
        for o in outs
        if o.status == 200 and o.sent_s > since_s and (any_answer or not o.degraded)
    ]
    return min(ok) - since_s if ok else float("inf")


def longest_silence(outs: list[Outcome], since_s: float) -> float:
    """The longest stretch after ``since_s`` in which no answer arrived: what a client of a
    restarting device waits at worst (its retries bridge the gap)."""
    times = sorted(o.answered_s for o in outs if o.status == 200 and o.answered_s >= since_s)
    return float(np.diff([since_s, *times]).max()) if times else float("inf")


# --- scenarios ------------------------------------------------------------------------------


def run_load(base: Stack, cfg: ReliabilityBenchConfig, images: np.ndarray) -> dict[str, Any]:
    stacks = [base.sibling(f"-load{i}") for i in range(cfg.devices)]
    for s in stacks:
        s.start_link("--rate", "50mbit", "--delay-ms", "5")
        s.start_device("--api-keys-file", str(base.procs.log_dir / "keys"))
    t0 = time.perf_counter()

    async def all_devices() -> list[list[Outcome]]:
        return await asyncio.gather(
            *(
                stream(s.infer_url(), images, f"load{i}", cfg.requests, cfg.concurrency, t0)
                for i, s in enumerate(stacks)
            )
        )

    outs = [o for per in asyncio.run(all_devices()) for o in per]
    seconds = time.perf_counter() - t0
    result = summary(outs, handled_ids(base.procs, [f"device-load{i}" for i in range(cfg.devices)]))
    result["devices"], result["seconds"] = cfg.devices, seconds
    result["throughput_rps"] = len(outs) / seconds
    for i in range(cfg.devices):
        base.procs.stop(f"device-load{i}")
        base.procs.stop(f"link-load{i}")
    return result


def fault_stream(
    s: Stack,
    cfg: ReliabilityBenchConfig,
    images: np.ndarray,
    prefix: str,
    inject,
    retry_s: float = 0.0,
) -> tuple[list[Outcome], float]:
    """Streams requests at 20/s for ``fault_seconds`` while ``inject(t0)`` (run in a thread)
    breaks something; returns the outcomes and the time the fault ended (seconds after t0)."""
    n = int(cfg.fault_seconds * 20)
    t0 = time.perf_counter()

    async def run() -> tuple[list[Outcome], float]:
        task = asyncio.create_task(
            stream(s.infer_url(), images, prefix, n, cfg.concurrency, t0, 20.0, retry_s)
        )
        ended = await asyncio.to_thread(inject, t0)
        return await task, ended

    return asyncio.run(run())


def fault_kill_server(
    base: Stack, cfg: ReliabilityBenchConfig, images: np.ndarray
) -> dict[str, Any]:
    s = base.sibling("-kill")
    s.start_link("--rate", "50mbit", "--delay-ms", "5")
    s.start_device("--api-keys-file", str(base.procs.log_dir / "keys"))

    def inject(t0: float) -> float:
        time.sleep(cfg.fault_seconds / 3)
        base.procs.kill("server")
        time.sleep(cfg.fault_seconds / 4)
        base.start_server("--api-keys-file", str(base.procs.log_dir / "keys"))
        return time.perf_counter() - t0

    outs, ended = fault_stream(s, cfg, images, "kill", inject)
    return finish_fault("kill -9 server", base, s, outs, recovery(outs, ended))


def fault_freeze_link(
    base: Stack, cfg: ReliabilityBenchConfig, images: np.ndarray
) -> dict[str, Any]:
    """A Mahimahi trace: a quarter of ``fault_seconds`` at 12 Mbit/s, then five twelfths with no
    delivery opportunity (whole seconds: 6 s and 10 s of the default 24), then 12 Mbit/s."""
    trace = base.procs.log_dir / "freeze.trace"
    frozen_from = round(cfg.fault_seconds / 4) * 1000
    thaw_ms = frozen_from + round(cfg.fault_seconds * 5 / 12) * 1000
    ms = list(range(1, frozen_from + 1)) + list(range(thaw_ms + 1, thaw_ms + 60_001))
    trace.write_text("\n".join(map(str, ms)) + "\n")
    s = base.sibling("-freeze")
    s.start_link("--uplink", str(trace), "--rate", "50mbit", "--delay-ms", "5")
    started = time.perf_counter()
    s.start_device("--api-keys-file", str(base.procs.log_dir / "keys"), "--deadline-ms", "1000")

    def inject(t0: float) -> float:
        thaw = started + thaw_ms / 1000  # the link's trace clock starts with the link
        time.sleep(max(0.0, thaw - time.perf_counter()))
        return time.perf_counter() - t0

    outs, ended = fault_stream(s, cfg, images, "freeze", inject)
    name = f"link frozen {(thaw_ms - frozen_from) // 1000} s"
    return finish_fault(name, base, s, outs, recovery(outs, ended))


def fault_restart_device(
    base: Stack, cfg: ReliabilityBenchConfig, images: np.ndarray
) -> dict[str, Any]:
    s = base.sibling("-restart")
    s.start_link("--rate", "50mbit", "--delay-ms", "5")
    device_args = ("--api-keys-file", str(base.procs.log_dir / "keys"))
    s.start_device(*device_args)
    log = base.procs.log_dir / "device-restart.log"

    def inject(t0: float) -> float:
        time.sleep(cfg.fault_seconds / 3)
        down = time.perf_counter() - t0
        base.procs.stop("device-restart")  # SIGTERM: drains what is in flight
        log.rename(log.with_name("device-restart-before.log"))
        s.start_device(*device_args)
        return down

    outs, down = fault_stream(s, cfg, images, "restart", inject, retry_s=30.0)
    return finish_fault("device restart", base, s, outs, longest_silence(outs, down))


def finish_fault(
    name: str, base: Stack, s: Stack, outs: list[Outcome], recovery_s: float
) -> dict[str, Any]:
    handled = handled_ids(base.procs, [f"device{s.suffix}"])
    result = summary(outs, handled)
    base.procs.stop(f"device{s.suffix}")
    base.procs.stop(f"link{s.suffix}")
    return {"fault": name, **result, "recovery_s": recovery_s}


def run_fuzz(base: Stack, cfg: ReliabilityBenchConfig) -> dict[str, Any]:
    """Schemathesis against a device and the server (with the API key), random bytes on the
    server's gRPC port; then checks that nothing died."""
    from semlink.bench.fuzz import fuzz_grpc_port, fuzz_openapi

    s = base.sibling("-fuzz")
    s.start_link("--rate", "50mbit", "--delay-ms", "1")
    s.start_device("--api-keys-file", str(base.procs.log_dir / "keys"))
    auth = {"Authorization": f"Bearer {KEY}"}
    results = [
        fuzz_openapi(url, cfg.fuzz_examples, headers=auth)
        for url in (s.device_url, base.server_url)
    ]
    grpc_rounds = fuzz_grpc_port("127.0.0.1", base.ports["grpc"], 300)["rounds"]
    crashes = sum(p.poll() is not None for p in base.procs.children.values())
    base.procs.stop("device-fuzz")
    base.procs.stop("link-fuzz")
    return {
        "cases": sum(r["cases"] for r in results) + grpc_rounds,
        "crashes": crashes,
        "server_errors": sum(r["server_errors"] for r in results),
        "failures": [f for r in results for f in r["failures"]],
    }


def run_hostile(base: Stack, shape: tuple[int, ...]) -> dict[str, Any]:
    """The hostile-client classes (:mod:`semlink.bench.hostile`) against a fresh device and the
    server, with mutual TLS and API keys as deployed; ``shape`` is one image's (C, H, W)."""
    import grpc

    from semlink.bench import hostile

    s = base.sibling("-hostile")
    s.start_link("--rate", "50mbit", "--delay-ms", "1")
    s.start_device("--api-keys-file", str(base.procs.log_dir / "keys"))
    auth = {"Authorization": f"Bearer {KEY}"}
    pki = base.pki
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki["ca"].read_bytes(),
        private_key=pki["client_key"].read_bytes(),
        certificate_chain=pki["client_cert"].read_bytes(),
    )
    try:
        result = {
            "metrics": hostile.metrics_growth(
                base.server_url, base.ports["grpc"], auth, credentials=credentials
            ),
            "loop": hostile.loop_stall(s.device_url, auth),
            "bad_inputs": hostile.bad_inputs(s.device_url, s.model, auth),
            "nan": hostile.nan_answers(s.device_url, s.model, shape, auth),
            "geometry": hostile.geometry_bombs(s.device_url, auth),
            "decode_queue": hostile.decode_queue(s.device_url, auth),
            "client_errors": hostile.client_errors(s.device_url, s.model, shape, auth),
            "line_breaks": hostile.line_breaks(s.device_url, s.model, shape, auth),
        }
        logs = [
            base.procs.log_dir / f"{n}.log" for n in ("device-hostile", "server", "link-hostile")
        ]
        result["line_breaks"].update(hostile.forged_lines(logs))
        return result | run_hostile_files(base, s)
    finally:
        base.procs.stop("device-hostile", "link-hostile")


def run_hostile_files(base: Stack, hostile_stack: Stack) -> dict[str, Any]:
    """What a device reads besides requests: a link state endpoint streaming 400 MB (a device
    polling it beside one polling an ordinary link), and an API key file saved with a
    byte-order mark. Three devices, started together."""
    from semlink.bench import hostile

    logs, keys = base.procs.log_dir, str(base.procs.log_dir / "keys")
    bomb = hostile.StateBomb()
    bom = hostile.write_bom_keys(logs / "keys-bom", KEY)
    spaced = hostile.write_bom_keys(logs / "keys-bom-spaced", KEY, "# keys of the bench")
    devices = {
        "-statebomb": ("--api-keys-file", keys, "--link-state-url", bomb.url),
        "-stateok": ("--api-keys-file", keys, "--link-state-url", hostile_stack.state_url),
        "-bom": ("--api-keys-file", str(bom)),
    }
    stacks = {suffix: base.sibling(suffix) for suffix in devices}
    try:
        for suffix, args in devices.items():
            stacks[suffix].start_device(*args, through_link=False, wait=False)
        for st in stacks.values():
            st.wait_device()
        pid = {suffix: base.procs.children[f"device{suffix}"].pid for suffix in devices}
        return {
            "state": hostile.oversized_state(
                stacks["-statebomb"].device_url, pid["-statebomb"], bomb, pid["-stateok"]
            ),
            "bom": hostile.bom_keys(stacks["-bom"].device_url, KEY, spaced),
        }
    finally:
        base.procs.stop(
            *(f"device{suffix}" for suffix in devices if f"device{suffix}" in base.procs.children)
        )
        bomb.close()


def run_security(base: Stack, tmp: Path) -> dict[str, Any]:
    """Each check is one thing an attacker tries; ``failed`` lists those that got through."""
    import grpc

    from semlink.protocol import grpc_service_pb2 as pb
    from semlink.protocol import grpc_service_pb2_grpc as pb_grpc
    from semlink.runtime.security import make_dev_pki

    address = f"127.0.0.1:{base.ports['grpc']}"

    def grpc_refused(credentials: grpc.ChannelCredentials | None) -> bool:
        channel = (
            grpc.secure_channel(address, credentials)
            if credentials is not None
            else grpc.insecure_channel(address)
        )
        try:
            with channel:
                pb_grpc.GRPCInferenceServiceStub(channel).ServerReady(
                    pb.ServerReadyRequest(), timeout=3
                )
        except grpc.RpcError:
            return True
        return False

    pki, other = base.pki, make_dev_pki(tmp / "attacker")
    no_cert = grpc.ssl_channel_credentials(root_certificates=pki["ca"].read_bytes())
    wrong_ca = grpc.ssl_channel_credentials(
        root_certificates=pki["ca"].read_bytes(),
        private_key=other["client_key"].read_bytes(),
        certificate_chain=other["client_cert"].read_bytes(),
    )
    url = f"{base.server_url}/v2"
    checks = {
        "plaintext gRPC refused": grpc_refused(None),
        "TLS without client certificate refused": grpc_refused(no_cert),
        "client certificate of another CA refused": grpc_refused(wrong_ca),
        "HTTP without API key -> 401": httpx.get(url, timeout=5).status_code == 401,
        "HTTP with a wrong API key -> 401": httpx.get(
            url, headers={"Authorization": "Bearer " + "0" * 32}, timeout=5
        ).status_code
        == 401,
        "health probe open without key": httpx.get(
            f"{base.server_url}/v2/health/ready", timeout=5
        ).status_code
        == 200,
    }
    secrets = [KEY] + [pki[k].read_text().splitlines()[1] for k in ("server_key", "client_key")]
    logs = "".join(p.read_text() for p in base.procs.log_dir.glob("*.log"))
    checks["no API key or private key in any log"] = not any(x in logs for x in secrets)
    return {
        "checks": len(checks),
        "failed": sum(not ok for ok in checks.values()),
        "results": checks,
    }


def bench(cfg: ReliabilityBenchConfig) -> dict[str, Any]:
    from semlink.models.progress import progress_bar

    logging.getLogger("httpx").setLevel(logging.WARNING)  # thousands of request lines otherwise
    out = Path(cfg.out)
    procs = Processes(out / "logs")
    (procs.log_dir / "keys").write_text(KEY + "\n")
    base = Stack(procs, model=cfg.model, tls=True)
    images = model_and_test_split(cfg.model)[1].images
    result: dict[str, Any] = {"config": asdict(cfg)}
    try:
        base.start_server("--api-keys-file", str(procs.log_dir / "keys"))
        steps = [
            ("load", lambda: run_load(base, cfg, images)),
            ("freeze", lambda: fault_freeze_link(base, cfg, images)),
            ("restart", lambda: fault_restart_device(base, cfg, images)),
            ("kill", lambda: fault_kill_server(base, cfg, images)),
            ("fuzz", lambda: run_fuzz(base, cfg)),
            ("hostile", lambda: run_hostile(base, images.shape[1:])),
            ("security", lambda: run_security(base, out)),
        ]
        faults = ("freeze", "restart", "kill")
        chosen = [
            (name, step)
            for name, step in steps
            if (name if name not in faults else "faults") in cfg.scenarios
        ]
        if "faults" in cfg.scenarios:
            result["faults"] = []
        for name, step in progress_bar(chosen, desc="bench reliability", unit="scenario"):
            r = step()
            if name in faults:
                result["faults"].append(r)
            else:
                result[name] = r
    finally:
        procs.stop()
    return result


def format_table(r: dict[str, Any]) -> str:
    """The figures of each scenario run, as the README shows them."""
    parts = [
        f(r)
        for key, f in (
            ("load", _load_lines),
            ("faults", _fault_lines),
            ("fuzz", _fuzz_lines),
            ("hostile", _hostile_lines),
            ("security", _security_lines),
        )
        if key in r
    ]
    return "\n\n".join(parts)


def _load_lines(r: dict[str, Any]) -> str:
    load, cfg = r["load"], r["config"]
    return "\n".join(
        [
            f"load ({cfg.get('model', 'digits-vit')}): {load['devices']} devices x "
            f"{cfg['requests']} requests, {cfg['concurrency']} in flight each, mutual TLS + API keys",
            f"  {FULL_SPEED}",
            f"  answered {load['answered']}/{load['requests']}, lost {load['lost']}, duplicated "
            f"{load['duplicated']}, errors {load['errors']}, degraded {load['degraded']}; "
            f"p50 {load['p50_ms']:.1f} ms, p99 {load['p99_ms']:.1f} ms, "
            f"{load['throughput_rps']:.0f} req/s",
        ]
    )


def _fault_lines(r: dict[str, Any]) -> str:
    lines = [
        f"{'fault':<18} {'requests':>8} {'answered':>8} {'degraded':>8} {'lost':>5} {'dup':>4} "
        f"{'recovery s':>10}"
    ]
    for f in r["faults"]:
        lines.append(
            f"{f['fault']:<18} {f['requests']:>8} {f['answered']:>8} {f['degraded']:>8} "
            f"{f['lost']:>5} {f['duplicated']:>4} {f['recovery_s']:>10.2f}"
        )
    return "\n".join(lines)


def _fuzz_lines(r: dict[str, Any]) -> str:
    fz = r["fuzz"]
    return (
        f"fuzz: {fz['cases']} cases, {fz['crashes']} crashes, {fz['server_errors']} server errors"
    )


def _security_lines(r: dict[str, Any]) -> str:
    sec = r["security"]
    lines = [f"security: {sec['checks'] - sec['failed']}/{sec['checks']} checks hold"]
    lines += [f"  {'ok  ' if ok else 'FAIL'} {name}" for name, ok in sec["results"].items()]
    return "\n".join(lines)


def _hostile_lines(r: dict[str, Any]) -> str:
    ho = r["hostile"]
    bad = ho["bad_inputs"]
    lines = [
        "hostile clients:",
        f"  /metrics grew {ho['metrics']['metrics_growth_bytes']} B after {ho['metrics']['calls']} "
        "failed calls with 4 kB random model names",
        f"  health probe median {ho['loop']['probe_p50_ms']:.0f} ms, worst "
        f"{ho['loop']['probe_max_ms']:.0f} ms ({ho['loop']['probes']} answered) while "
        f"{ho['loop']['uploads']} uploads decoded for {ho['loop']['uploads_s']:.1f} s",
        f"  {bad['server_errors']} server errors from {bad['cases']} inputs that once reached a 500: "
        + ", ".join(f"{k} {v}" for k, v in bad["statuses"].items()),
        f"  {ho['nan']['nan_answers']} NaN answers to {ho['nan']['requests']} extreme images",
    ]
    if "geometry" in ho:  # the second round's classes
        lines += _hostile_second_round(ho)
    return "\n".join(lines)


def _hostile_second_round(ho: dict[str, Any]) -> list[str]:
    geo, queue, state, bom = ho["geometry"], ho["decode_queue"], ho["state"], ho["bom"]
    breaks, errors = ho["line_breaks"], ho["client_errors"]
    return [
        f"  geometry bombs: {geo['refused']}/{geo['cases']} refused (400), the slowest answer in "
        f"{geo['max_ms']:.0f} ms: "
        + ", ".join(
            f"{k} ({v['bytes'] // 1024} kB) {v['status']} in {v['ms']:.0f} ms"
            for k, v in geo["results"].items()
        ),
        f"  decoding queued: an upload with deadline_ms={queue['deadline_ms']:g} behind "
        f"{queue['uploads']} heavy ones got {queue['status']} in {queue['answered_ms']:.0f} ms; "
        f"the heavy ones: {queue['heavy_ok']} answered, {queue['heavy_late']} refused late (503), "
        f"all in {queue['heavy_s']:.1f} s",
        f"  link state of {state['offered_bytes'] // 2**20} MB a poll: {state['polls']} polls, "
        f"each hung up on after the endpoint had written "
        f"{state['written_per_poll_bytes'] / 1024:.0f} kB (the device stops reading past 64 kB, the "
        f"rest fills the sockets' buffers); device peak {state['device_mb']['VmHWM']:.0f} MB "
        f"(beside an ordinary link {state['reference_mb']['VmHWM']:.0f} MB); health probe median "
        f"{state['probe_p50_ms']:.0f} ms, worst {state['probe_max_ms']:.0f} ms "
        f"({state['probes']} answered)",
        f"  API key file with a byte-order mark: the key "
        f"{bom['statuses']['key']}, its first-line comment as a key "
        f"{bom['statuses']['comment as bearer']} (bearer) / "
        f"{bom['statuses']['comment as Basic password']} (Basic); a commented first line with "
        f"spaces loads {bom['spaced_comment_file_keys']} key(s)",
        f"  line breaks in request ids: {breaks['requests']} requests "
        f"({', '.join(breaks['statuses'])}), {breaks['forged']} forged lines in "
        f"{breaks['lines']} lines of {', '.join(breaks['logs'])}",
        "  client errors: " + ", ".join(f"{k} {_client_error(v)}" for k, v in errors.items()),
    ]


def _client_error(v: dict[str, Any]) -> str:
    """``400``, or ``200`` with where it was answered, degraded or not, warned or not."""
    if v["status"] != 200:
        return str(v["status"])
    how = ["degraded" if v["degraded"] else "not degraded"] + (["warned"] if v["warned"] else [])
    return f"200 ({v['exit']}, {', '.join(how)})"


def main(cfg: ReliabilityBenchConfig, json_path: str | None = None) -> int:
    """Runs the benchmark, prints its table, writes the JSON when asked."""
    return run_and_report(bench, format_table, cfg, json_path)
