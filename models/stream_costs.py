"""What a frame costs where, measured (for the stream simulator, the RL environment, the benchmarks): every device stage of a pipeline under a CPU quota (a child
process in a cgroup of its own), the device's front per frame, and the server's time per kind of
work at the machine's speed. The stream simulator and the regime map predict from these.

A quota is a budget per period, so only sustained work shows a device's speed: each stage runs
back to back ``repeats`` times on a test frame (after a warm-up) and costs the mean. The
front is what the device's stream does per frame before the model: parsing the message and
normalising the pixels (:func:`semlink.device.stream.parse_frame`).
"""

from __future__ import annotations

import json
import multiprocessing
import struct
import time
from typing import Any

import numpy as np

from semlink.models.stream_sim import DeviceCosts


def model_and_test_split(model: str) -> tuple[Any, Any]:
    """The zoo's ``model`` (its newest version) and the test split of the dataset it was trained
    on, which its manifest names."""
    from semlink.models.datasets import load_dataset
    from semlink.runtime.repository import DEFAULT_REPOSITORY, resolve, scan

    mv = resolve(scan(DEFAULT_REPOSITORY), model)
    return mv, load_dataset(mv.manifest.normalisation.dataset, "test")


WARM_UP = 3


def _stage_times(
    model: str, share: float | None, period_us: int | None, repeats: int
) -> dict[str, Any]:
    """In this process (under the quota when given): the sustained ms of every device stage of
    ``model``'s pipeline, and of the stream's front per frame."""
    from semlink.protocol.stream import parse_frame
    from semlink.runtime.pipelines import WireOptions, make_pipeline

    mv, test = model_and_test_split(model)
    images = test.images[:16]  # composed before the quota: the camera's work, not the device's
    if share is not None:
        from semlink.runtime.cpu_quota import limit_cpu

        limit_cpu(share, "costs", period_us)
    pipe = make_pipeline(mv)
    pipe.open(pipe.device_graphs(), threads=1)
    wire = WireOptions("int8", 20.0, "awgn")
    times: dict[str, float] = {}

    def sustained(stage: str, fn: Any, *args: Any) -> Any:
        """Runs ``fn`` back to back (after a warm-up) and keeps its mean time: under a quota
        only sustained work shows the device's speed (a single short run may finish inside
        its slice at full speed)."""
        for _ in range(WARM_UP):
            out = fn(*args)
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn(*args)
        times.setdefault(stage, 1000.0 * (time.perf_counter() - t0) / repeats)
        return out

    image = images[0][None]
    for option in pipe.options():
        stretch = None
        for k in range(pipe.stretches_for(option)):
            stretch = sustained(f"stretch{k}", pipe.run_stretch, k, image, stretch, option, 20.0)
        stage = pipe.pack_stage(option)
        if stage is None or stage in times:
            continue
        off = sustained(stage, pipe.pack, stretch, option, wire, image)
        if stage == "local":
            sustained("local", pipe.answer_locally, stretch, off)
    c, h, w = mv.image_shape
    header = json.dumps({"id": 1, "format": "raw", "deadline_ms": 100}).encode()
    message = struct.pack("<I", len(header)) + header + bytes(h * w * c)
    norm = mv.manifest.normalisation

    def front() -> None:
        _, frame = parse_frame(message, mv.image_shape)
        norm.apply_uint8(np.asarray(frame)[0])

    sustained("front", front)
    return times


def _server_times(model: str, repeats: int) -> dict[str, float]:
    """At the machine's speed, one thread: the median ms of each kind of server work."""
    from semlink.protocol.codec import datatype_of
    from semlink.runtime.costs import Predictor
    from semlink.runtime.pipelines import WireOptions, make_pipeline

    mv, test = model_and_test_split(model)
    pipe = make_pipeline(mv)
    pipe.open(pipe.device_graphs() + pipe.server_graphs(), threads=1)
    out: dict[str, list[float]] = {}
    for option in pipe.options():
        if not option.offloads:
            continue
        key = Predictor.server_key(option)
        for r in range(WARM_UP + repeats // 4):
            _, off = pipe.run_device(
                test.images[r % 16][None], option, WireOptions("int8", 20.0, "awgn"), 20.0
            )
            t0 = time.perf_counter()
            work = pipe.admit({n: (datatype_of(t), t) for n, t in off.tensors.items()}, off.params)
            pipe.run_batch(work.graph, work.samples)
            if r >= WARM_UP:
                out.setdefault(key, []).append(1000.0 * (time.perf_counter() - t0))
    return {k: float(np.median(v)) for k, v in out.items()}


def measure(
    model: str, share: float | None, period_us: int | None = None, repeats: int = 20
) -> DeviceCosts:
    """The device's stage times under ``share`` of a core (``period_us`` its quota period), its
    front per frame, and the server's times, each in a fresh process."""
    ctx = multiprocessing.get_context("spawn")  # fresh processes: a quota is the child's own
    with ctx.Pool(1) as pool:
        stages = pool.apply(_stage_times, (model, share, period_us, repeats))
    with ctx.Pool(1) as pool:
        server = pool.apply(_server_times, (model, repeats))
    front = stages.pop("front")
    return DeviceCosts(stages, front, server)


__all__ = ["measure"]
