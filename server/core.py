"""The server's inference core, shared by the gRPC and HTTP front ends.

One path for every pipeline kind: validate (the pipeline admits the request's tensors and
parameters), batch (one :class:`~semlink.server.batcher.DynamicBatcher` per server graph, bounded
by ``max_queue``), respond (logits plus what the request cost). What each kind expects on the wire
is in its pipeline module (``runtime/pipelines/``) and in protocol/README.md.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from semlink.protocol import params as P
from semlink.protocol.codec import TensorError
from semlink.protocol.params import ParameterError
from semlink.runtime.errors import NotReady
from semlink.runtime.pipelines import Pipeline, make_pipeline
from semlink.runtime.pipelines.base import Inputs
from semlink.runtime.repository import ModelVersion, resolve, scan
from semlink.server.batcher import DynamicBatcher
from semlink.server.metrics import ServerMetrics
from semlink.server.settings import ServerSettings

log = logging.getLogger(__name__)

# weight of the newest request in the service-time average the server reports to devices
SERVICE_EWMA = 0.2


@dataclass(frozen=True)
class Load:
    """What the server tells devices about its load, so each can pick the replica that will
    answer soonest: requests in the server now, and its recent service time per request.

    Exported in every inference reply's parameters (``server_queue_depth``,
    ``server_service_ms``: on a call and on a stream alike), in the ``semlink-queue-depth`` /
    ``semlink-service-ms`` gRPC trailing metadata of ``ServerReady`` and of failed calls (an OIP
    client ignores them), in the same HTTP headers of ``/v2/health/ready``, and as the
    Prometheus gauges ``semlink_server_queue_depth`` and ``semlink_server_service_seconds``
    (what an autoscaler reads).
    """

    queue_depth: int
    service_ms: float  # EWMA of queue-free time per request (the batch's compute), 0 before any

    def headers(self) -> list[tuple[str, str]]:
        """The load as (key, value) metadata pairs."""
        return [
            (P.QUEUE_DEPTH_KEY, str(self.queue_depth)),
            (P.SERVICE_MS_KEY, f"{self.service_ms:.3f}"),
        ]

    def parameters(self) -> dict[str, int | float]:
        """The load as reply parameters."""
        return {"server_queue_depth": self.queue_depth, "server_service_ms": self.service_ms}


class InferenceCore:
    """The models, their pipelines and batchers, and the one inference path of both fronts."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.models: dict[str, dict[str, ModelVersion]] = {}
        self.pipelines: dict[tuple[str, str], Pipeline] = {}
        self.batchers: dict[tuple[str, str, str], DynamicBatcher] = {}  # (name, version, graph)
        self.executor = ThreadPoolExecutor(max_workers=settings.threads, thread_name_prefix="ort")
        self.ready = False
        self.in_flight = 0
        self.service_ms = 0.0
        self.draining = False  # set on shutdown: streams end after the request in hand
        self.metrics = ServerMetrics()
        self.metrics.queue_depth.set_function(lambda: self.in_flight)
        self.metrics.service.set_function(lambda: self.service_ms / 1000.0)

    def load_report(self) -> Load:
        """The server's load now (see :class:`Load`)."""
        return Load(self.in_flight, self.service_ms)

    async def load(self) -> None:
        """Scans the repository; opens every version's server graphs, one batcher each."""
        models = scan(self.settings.model_repository)
        loop = asyncio.get_running_loop()
        for name, versions in models.items():
            for version, mv in versions.items():
                pipe = make_pipeline(mv)
                graphs = pipe.server_graphs()
                await loop.run_in_executor(self.executor, pipe.open, graphs, 1)
                for graph in graphs:
                    batcher = DynamicBatcher(
                        functools.partial(pipe.run_batch, graph),
                        self.executor,
                        max_batch_size=self.settings.max_batch_size,
                        max_queue_delay_ms=self.settings.max_queue_delay_ms,
                        max_queue=self.settings.max_queue,
                        inline_max_ms=self.settings.inline_max_ms,
                        on_batch=self.metrics.batch.labels(name).observe,
                    )
                    batcher.start()
                    self.batchers[(name, version, graph)] = batcher
                self.pipelines[(name, version)] = pipe
                log.info("loaded %s model %s version %s from %s", mv.kind, name, version, mv.path)
        self.models = models
        self.ready = True

    async def close(self) -> None:
        """Stops the batchers and the worker threads."""
        for b in self.batchers.values():
            await b.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)

    def model(self, name: str, version: str = "") -> ModelVersion:
        """The model version a request names; raises :class:`NotReady` while loading and
        :class:`~semlink.runtime.repository.ModelNotFound` for an unknown one."""
        if not self.ready:
            raise NotReady("server is loading its models; retry shortly")
        return resolve(self.models, name, version)

    def pipeline(self, mv: ModelVersion) -> Pipeline:
        """The loaded pipeline of a model version."""
        return self.pipelines[(mv.name, mv.version)]

    async def infer(
        self, name: str, version: str, inputs: Inputs, parameters: dict[str, Any]
    ) -> tuple[ModelVersion, dict[str, np.ndarray], dict[str, Any]]:
        """Validates and runs one request: the model's pipeline admits it, its batcher runs it.

        Args:
            name: model name; version: model version, ``""`` for the highest.
            inputs: ``{name: (OIP datatype, array)}`` as decoded from the request.
            parameters: the request's parameters (``budget``, ``rate``, ``snr_db``, ``split``, ...).

        Returns:
            The model version, ``{"logits": (B, classes) float32}``, and the response parameters
            (``server_queue_ms``, ``server_compute_ms`` and the pipeline's own).

        Raises:
            NotReady, ModelNotFound, TensorError, ParameterError, QueueFull: see the error table.
        """
        entered = time.perf_counter()
        mv = self.model(name, version)
        for key in (P.BUDGET, P.RATE, P.SNR_DB):
            if parameters.get(key) is not None:
                P.check(key, parameters[key])
        if parameters.get(P.CHANNEL) is not None:
            P.check_channel(parameters[P.CHANNEL])
        pipeline = self.pipeline(mv)
        if P.SPLIT in parameters and mv.manifest.exits is None:
            raise ParameterError(
                f"model {mv.name!r} has one split ({list(mv.manifest.splits)}); parameter 'split' "
                "applies to early-exit networks only: leave it out"
            )
        work = pipeline.admit(inputs, parameters)
        batcher = self.batchers[(mv.name, mv.version, work.graph)]
        if len(work.samples) > batcher.queue.maxsize:
            raise TensorError(
                f"a batch of {len(work.samples)} samples can never fit the server's queue of "
                f"{batcher.queue.maxsize}; send at most {batcher.queue.maxsize} per request"
            )
        started = time.perf_counter()
        self.in_flight += 1
        try:
            results = await asyncio.gather(*(batcher.submit(s) for s in work.samples))
        finally:
            self.in_flight -= 1
        logits = np.stack([r.logits for r in results]).astype(np.float32)
        if not np.isfinite(logits).all():  # an answer is never NaN: the input drove the model there
            raise TensorError(
                "the model's output is not finite for this input; send values in the range the "
                "device's head produces (see the model's metadata)"
            )
        queue_ms = 1000.0 * max(r.queue_s for r in results)
        total_ms = 1000.0 * (time.perf_counter() - started)
        compute_ms = max(total_ms - queue_ms, 0.0)
        spans = {  # where the time went (the slowest sample's, for a multi-sample request)
            "server_admit_ms": 1000.0 * (started - entered),
            "server_hop_ms": 1000.0 * max(r.hop_s for r in results),
            "server_ort_ms": 1000.0 * max(r.run_s for r in results),
            "server_batch": max(r.batch_size for r in results),
        }
        self.service_ms = (
            compute_ms
            if self.service_ms == 0.0
            else (1 - SERVICE_EWMA) * self.service_ms + SERVICE_EWMA * compute_ms
        )
        self.metrics.requests.labels(mv.name, "ok").inc()
        self.metrics.latency.labels(mv.name).observe(total_ms / 1000.0)
        if work.tokens:
            self.metrics.tokens.labels(mv.name).inc(len(work.samples) * work.tokens)
        request_id = str(parameters.get(P.REQUEST_ID, ""))[:128]  # a client's value: bounded
        log.info(
            "request %s: %s v%s, %s, %.2f ms",
            request_id,
            mv.name,
            mv.version,
            ", ".join(f"{k} {v}" for k, v in work.log.items()),
            total_ms,
            extra={
                "request": {
                    "request_id": request_id,
                    "model": mv.name,
                    "version": mv.version,
                    **work.log,
                    "queue_ms": queue_ms,
                    "total_ms": total_ms,
                }
            },
        )
        reply = {
            **self.load_report().parameters(),
            "server_queue_ms": queue_ms,
            "server_compute_ms": compute_ms,
            **spans,
            **work.reply,
        }
        return mv, {"logits": logits}, reply
