"""One system's requests on one link, measured: accuracy, bytes the link carried, latency
percentiles, deadline and offload shares; and the whole test split once per system."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from semlink.bench.compare.clients import Client, tls_verify, warm_up_images
from semlink.bench.compare.config import MIN_REQUESTS
from semlink.bench.compare.processes import Bench
from semlink.models.progress import progress_bar


def link_state(http: httpx.Client, state_url: str | None) -> dict[str, Any]:
    """What the link reports on ``/state`` (bytes delivered each way, its SNR); for a system
    without a link, no bytes and no SNR."""
    if state_url is None:
        return {"uplink": {"delivered_bytes": 0}, "downlink": {"delivered_bytes": 0}}
    return http.get(state_url).json()  # type: ignore[no-any-return]


def _delivered(before: dict[str, Any], after: dict[str, Any], direction: str) -> int:
    return int(after[direction]["delivered_bytes"] - before[direction]["delivered_bytes"])


@dataclass(frozen=True)
class Cell:
    """One system's sequential requests on one link: everything they need, picklable, so a
    camera process under the device profile can send them."""

    client: Client
    labels: np.ndarray
    n: int  # images 0..n-1, after WARM_UP requests with the last images of the split
    state_url: str | None
    deadline_ms: float
    cell_seconds: float
    pki: dict[str, str] | None
    desc: str


def measure(cell: Cell) -> dict[str, Any]:
    """``cell.n`` sequential requests (fewer when the cell runs past ``cell_seconds``):
    accuracy, on-time accuracy (right and within the deadline), link bytes, latency
    percentiles, deadline share, offload share and the SNR the link reported."""
    rows = []
    verify = tls_verify(cell.pki)
    # the link's replay and state on a client of their own, off the shaped path (one for the
    # cell: a client per call loads the CA bundle each time); the bytes are counted once the
    # cell's connections are closed
    with httpx.Client(timeout=5, **verify) as state:
        with httpx.Client(timeout=120, **verify) as http:
            for i in warm_up_images(len(cell.labels)):
                cell.client.ask(http, i)
            if cell.state_url:  # every system meets a trace from its start: the same stretch
                url = cell.state_url.removesuffix("/state") + "/replay"
                state.post(url).raise_for_status()
            before = link_state(state, cell.state_url)
            t0 = time.perf_counter()
            for i in progress_bar(range(cell.n), desc=cell.desc, unit="req", leave=False):
                label, params, ms = cell.client.ask(http, i)
                rows.append(
                    (
                        int(label == cell.labels[i]),
                        ms,
                        bool(params.get("degraded", False)),
                        params.get("exit") == "server",
                    )
                )
                if i + 1 >= MIN_REQUESTS and time.perf_counter() - t0 > cell.cell_seconds:
                    break
        time.sleep(0.1)  # let the link count the last replies
        after = link_state(state, cell.state_url)
    n = len(rows)
    correct, latency_ms, degraded, offloaded = (np.array(c) for c in zip(*rows, strict=True))
    on_time = (correct == 1) & (latency_ms <= cell.deadline_ms)  # a late answer is no answer
    return {
        "requests": n,
        "accuracy": float(correct.mean()),
        "correct": correct.astype(int).tolist(),
        "on_time": float(on_time.mean()),
        "on_time_correct": on_time.astype(int).tolist(),
        "bytes_up": _delivered(before, after, "uplink") / n,
        "bytes_down": _delivered(before, after, "downlink") / n,
        "p50_ms": float(np.percentile(latency_ms, 50)),
        "p95_ms": float(np.percentile(latency_ms, 95)),
        "p99_ms": float(np.percentile(latency_ms, 99)),
        "within_deadline": float((latency_ms <= cell.deadline_ms).mean()),
        "degraded": int(degraded.sum()),
        "offloaded": float(offloaded.mean()),
        "snr_db": after.get("snr_db"),  # what the link reported at the end (None: no link)
    }


_CAMERA_SHARE: float | None = None  # in a camera process: the quota it is under


def _as_camera(share: float) -> None:
    """Puts this (camera) process under ``share`` of a core, once."""
    global _CAMERA_SHARE
    if _CAMERA_SHARE is None:
        from semlink.runtime.cpu_quota import limit_cpu

        limit_cpu(share, "camera")
        _CAMERA_SHARE = share


def _measure_as_camera(cell: Cell, share: float) -> dict[str, Any]:
    """:func:`measure` in this (camera) process, under ``share`` of a core."""
    _as_camera(share)
    return measure(cell)


class CameraProcess:
    """The camera as a process of its own under the device profile's CPU quota, started once
    and sending every JPEG cell (a JPEG upload's HTTPS client runs on the camera, as semlink's
    device does); without a quota the cells are sent from this process."""

    def __init__(self, share: float | None) -> None:
        self.share = share
        self._pool: ProcessPoolExecutor | None = None

    def start(self) -> None:
        """Spawns the camera process and puts it under its quota, without waiting: its start-up
        overlaps the servers' (:meth:`measure` waits for it)."""
        if self.share is None or self._pool is not None:
            return
        self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        self._pool.submit(_as_camera, self.share)  # a failure to set it raises in measure

    def measure(self, cell: Cell) -> dict[str, Any]:
        """:func:`measure` sent by the camera process (in this one when there is no quota)."""
        if self.share is None:
            return measure(cell)
        self.start()
        assert self._pool is not None
        return self._pool.submit(_measure_as_camera, cell, self.share).result()

    def stop(self) -> None:
        """Ends the camera process (and waits for it)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def whole_split(bench: Bench, client: Client, labels: np.ndarray) -> dict[str, Any]:
    """Every image of the split (its first ``whole_split_frames`` when set), ``in_flight`` at
    a time: accuracy, per-image correctness and the throughput that took."""
    labels = labels[: bench.cfg.whole_split_frames]
    got, rps = asyncio.run(client.all_of(len(labels), bench.cfg.in_flight, bench.tls_kw()))
    correct = (np.array(got) == labels).astype(int)
    return {
        "requests": len(labels),
        "accuracy": float(correct.mean()),
        "correct": correct.tolist(),
        "throughput_rps": rps,
    }
