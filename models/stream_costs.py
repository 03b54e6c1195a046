"""What a frame costs where, measured (for the stream simulator, the RL environment and the
benchmarks): every device stage of a pipeline under a CPU quota (a child process in a cgroup of
its own), and the server's time per kind of work at the machine's speed.

A quota is a budget per period, so only sustained work shows a device's speed: each stage runs
back to back ``repeats`` times on a test frame (after a warm-up); its *mean* is its sustained
cost (what the simulator charges), and its p50 and p95 per call show how the quota's slices
spread a single call. The front measured here is what the device's stream does per frame before
the model (parsing the message, normalising the pixels); the rest of a device's per-frame
overhead (its event loop, the answer, metrics) is measured on a real device process by
``semlink bench profile``.

MobileNetV1 (224x224, fp32, an ONNX graph built here with random weights: the time does not
depend on them) is the calibration reference: published figures for device classes give its
time on each (:mod:`semlink.runtime.cpu_quota`).
"""

from __future__ import annotations

import json
import multiprocessing
import struct
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from semlink.models.stream_sim import DeviceCosts

WARM_UP = 3
MOBILENET_FLOPS = 1.138e9  # MobileNetV1 at 224x224: 569 M multiply-accumulates


@dataclass
class StageStats:
    """One stage's time under the quota (ms): the sustained mean, and per call p50 and p95."""

    mean: float
    p50: float
    p95: float

    @classmethod
    def of(cls, ms: list[float]) -> StageStats:
        """The statistics of per-call times."""
        a = np.asarray(ms)
        return cls(float(a.mean()), float(np.percentile(a, 50)), float(np.percentile(a, 95)))


def model_and_test_split(model: str, frames: int | None = None) -> tuple[Any, Any]:
    """The zoo's ``model`` (its newest version) and the test split of the dataset it was trained
    on, which its manifest names; ``frames``: a digits-scene split composed only as far as its
    first that many frames (:func:`~semlink.models.datasets.load_dataset`)."""
    from semlink.models.datasets import load_dataset
    from semlink.runtime.repository import DEFAULT_REPOSITORY, resolve, scan

    mv = resolve(scan(DEFAULT_REPOSITORY), model)
    return mv, load_dataset(mv.manifest.normalisation.dataset, "test", frames=frames)


def _quota(share: float | None, period_us: int | None, name: str) -> None:
    if share is not None:
        from semlink.runtime.cpu_quota import limit_cpu

        limit_cpu(share, name, period_us)


def _calls(fn: Any, *args: Any, repeats: int) -> tuple[Any, list[float]]:
    """``fn(*args)`` back to back, after a warm-up: its output and each call's ms."""
    for _ in range(WARM_UP):
        out = fn(*args)
    ms = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*args)
        ms.append(1000.0 * (time.perf_counter() - t0))
    return out, ms


def stage_times(
    model: str, share: float | None, period_us: int | None, repeats: int
) -> dict[str, StageStats]:
    """In this process (under the quota when given): every device stage of ``model``'s pipeline
    and the stream's front per frame (see the module docstring)."""
    from semlink.protocol.stream import parse_frame
    from semlink.runtime.pipelines import WireOptions, make_pipeline

    mv, test = model_and_test_split(model, 1)
    image = test.images[:1]  # composed before the quota: the camera's work, not the device's
    _quota(share, period_us, "costs")
    pipe = make_pipeline(mv)
    pipe.open(pipe.device_graphs(), threads=1)
    wire = WireOptions("int8", 20.0, "awgn")
    times: dict[str, StageStats] = {}

    def stage(name: str, fn: Any, *args: Any) -> Any:
        if name in times:  # measured already (on the first option that runs it): its output only
            return fn(*args)
        out, ms = _calls(fn, *args, repeats=repeats)
        times[name] = StageStats.of(ms)
        return out

    for option in pipe.options():
        stretch = None
        for k in range(pipe.stretches_for(option)):
            stretch = stage(f"stretch{k}", pipe.run_stretch, k, image, stretch, option, 20.0)
        name = pipe.pack_stage(option)
        if name is None or name in times:
            continue
        off = stage(name, pipe.pack, stretch, option, wire, image)
        if name == "local":
            stage("local", pipe.answer_locally, stretch, off)
    c, h, w = mv.image_shape
    header = json.dumps({"id": 1, "format": "raw", "deadline_ms": 100}).encode()
    message = struct.pack("<I", len(header)) + header + bytes(h * w * c)
    norm = mv.manifest.normalisation

    def front() -> None:
        _, frame = parse_frame(message, mv.image_shape)
        norm.apply_uint8(np.asarray(frame)[0])

    stage("front", front)
    return times


def server_times(model: str, repeats: int) -> dict[str, float]:
    """At the machine's speed, one thread: the median ms of each kind of server work."""
    from semlink.protocol.codec import datatype_of
    from semlink.runtime.costs import Predictor
    from semlink.runtime.pipelines import WireOptions, make_pipeline

    mv, test = model_and_test_split(model, 16)
    pipe = make_pipeline(mv)
    pipe.open(pipe.device_graphs() + pipe.server_graphs(), threads=1)
    out: dict[str, list[float]] = {}
    for option in pipe.options():
        key = Predictor.server_key(option)
        if not option.offloads or len(out.get(key, [])) >= repeats:
            continue
        for r in range(WARM_UP + max(4, repeats // 4)):
            _, off = pipe.run_device(
                test.images[r % 16][None], option, WireOptions("int8", 20.0, "awgn"), 20.0
            )
            t0 = time.perf_counter()
            work = pipe.admit({n: (datatype_of(t), t) for n, t in off.tensors.items()}, off.params)
            pipe.run_batch(work.graph, work.samples)
            if r >= WARM_UP:
                out.setdefault(key, []).append(1000.0 * (time.perf_counter() - t0))
    return {k: float(np.median(v)) for k, v in out.items()}


def mobilenet_v1(seed: int = 0) -> bytes:
    """MobileNetV1 (width 1, 224x224, 1000 classes) as a serialised ONNX model, random weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def conv(x: str, cin: int, cout: int, k: int, s: int, group: int, name: str) -> str:
        w = (
            rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(2.0 / (k * k * cin // group))
        ).astype(np.float32)
        inits.extend(
            [
                numpy_helper.from_array(w, f"{name}_w"),
                numpy_helper.from_array(np.zeros(cout, np.float32), f"{name}_b"),
            ]
        )
        nodes.append(
            helper.make_node(
                "Conv",
                [x, f"{name}_w", f"{name}_b"],
                [name],
                kernel_shape=[k, k],
                strides=[s, s],
                pads=[k // 2] * 4,
                group=group,
            )
        )
        nodes.append(helper.make_node("Relu", [name], [f"{name}_r"]))
        return f"{name}_r"

    x, cin = conv("image", 3, 32, 3, 2, 1, "c0"), 32
    blocks = [
        (64, 1),
        (128, 2),
        (128, 1),
        (256, 2),
        (256, 1),
        (512, 2),
        *[(512, 1)] * 5,
        (1024, 2),
        (1024, 1),
    ]
    for i, (cout, s) in enumerate(blocks):
        x = conv(conv(x, cin, cin, 3, s, cin, f"dw{i}"), cin, cout, 1, 1, 1, f"pw{i}")
        cin = cout
    inits.append(
        numpy_helper.from_array(
            (rng.standard_normal((cin, 1000)) * 0.01).astype(np.float32), "fc_w"
        )
    )
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("MatMul", ["flat", "fc_w"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mobilenet_v1",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1000])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def mobilenet_ms(share: float | None, period_us: int | None, repeats: int) -> StageStats:
    """MobileNetV1's time in this process (under the quota when given), ONNX Runtime, one thread."""
    import onnxruntime as ort

    graph = mobilenet_v1()
    _quota(share, period_us, "calibrate")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    session = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    _, ms = _calls(session.run, None, {"image": x}, repeats=repeats)
    return StageStats.of(ms)


def in_child(fn: Any, *args: Any) -> Any:
    """``fn(*args)`` in a fresh process (a quota is the process's own) and its result."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(fn, args)


def measure(model: str, repeats: int = 20) -> DeviceCosts:
    """The device's stages and front in CPU at the machine's speed, and the server's times, each
    in a fresh process (without a device process's own overhead per frame: ``semlink bench
    profile`` adds it)."""
    stages = in_child(stage_times, model, None, None, repeats)
    server = in_child(server_times, model, repeats)
    front = stages.pop("front")
    return DeviceCosts({k: v.mean for k, v in stages.items()}, front.mean, server)


__all__ = [
    "MOBILENET_FLOPS",
    "StageStats",
    "in_child",
    "measure",
    "mobilenet_ms",
    "mobilenet_v1",
    "model_and_test_split",
    "server_times",
    "stage_times",
]
