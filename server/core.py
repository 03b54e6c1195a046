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
from semlink.protocol import reply as R
from semlink.protocol.codec import TensorError
from semlink.protocol.reply import Load
from semlink.runtime.errors import NotReady
from semlink.runtime.pipelines import Pipeline, make_pipeline
from semlink.runtime.pipelines.base import Inputs, Work
from semlink.runtime.repository import ModelVersion, resolve, scan
from semlink.server.batcher import DynamicBatcher
from semlink.server.metrics import ServerMetrics
from semlink.server.settings import ServerSettings

log = logging.getLogger(__name__)

# weight of the newest request in the service-time average the server reports to devices
SERVICE_EWMA = 0.2


@dataclass
class Timing:
    """Where one request's time on the server went (see :mod:`semlink.protocol.reply`)."""

    admit_ms: float
    queue_ms: float
    total_ms: float  # from the batcher's submit to the last sample's answer
    hop_ms: float
    ort_ms: float
    batch: int

    @property
    def compute_ms(self) -> float:
        """After the queue: the batch's work and the hop back."""
        return max(self.total_ms - self.queue_ms, 0.0)

    def parameters(self) -> dict[str, float | int]:
        """The reply's time parameters."""
        return {
            R.QUEUE_MS: self.queue_ms,
            R.COMPUTE_MS: self.compute_ms,
            R.ADMIT_MS: self.admit_ms,
            R.HOP_MS: self.hop_ms,
            R.ORT_MS: self.ort_ms,
            R.BATCH: self.batch,
        }


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
        """The server's load now: what every reply, ``ServerReady`` and the health endpoint
        report to devices choosing a replica, and the Prometheus gauges an autoscaler reads
        (``semlink_server_queue_depth``, ``semlink_server_service_seconds``)."""
        return Load(self.in_flight, self.service_ms)

    async def load(self) -> None:
        """Scans the repository; opens every version's server graphs (of the models
        ``settings.models`` names, when it names any), one batcher each."""
        models = scan(self.settings.model_repository)
        wanted = set(self.settings.models)
        if wanted:
            missing = sorted(wanted - set(models))
            if missing:
                raise ValueError(
                    f"--models names {', '.join(missing)}, which {self.settings.model_repository} "
                    f"does not hold (it holds {', '.join(sorted(models))})"
                )
            models = {name: versions for name, versions in models.items() if name in wanted}
        loop = asyncio.get_running_loop()
        for name, versions in models.items():
            for version, mv in versions.items():
                pipe = make_pipeline(mv)
                await loop.run_in_executor(self.executor, pipe.open, pipe.server_graphs(), 1)
                for graph in pipe.batchers():
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
        """Validates and runs one request: the model's pipeline admits it (checking its
        parameters), its batcher runs it.

        Args:
            name: model name; version: model version, ``""`` for the highest.
            inputs: ``{name: (OIP datatype, array)}`` as decoded from the request.
            parameters: the request's parameters (``budget``, ``rate``, ``snr_db``, ``split``, ...).

        Returns:
            The model version, ``{"logits": (B, classes) float32}``, and the reply's parameters
            (:mod:`semlink.protocol.reply`: the load, where the time went, the pipeline's own).

        Raises:
            NotReady, ModelNotFound, TensorError, ParameterError, QueueFull: see the error table.
        """
        entered = time.perf_counter()
        mv = self.model(name, version)
        work = self.pipeline(mv).admit(inputs, parameters)
        batcher = self.batchers[(mv.name, mv.version, work.graph)]
        if len(work.samples) > batcher.queue.maxsize:
            raise TensorError(
                f"a batch of {len(work.samples)} samples can never fit the server's queue of "
                f"{batcher.queue.maxsize}; send at most {batcher.queue.maxsize} per request"
            )
        logits, timing = await self._run(batcher, work, entered)
        self._record(mv, work, timing, str(parameters.get(P.REQUEST_ID, ""))[:128])
        reply = {**self.load_report().parameters(), **timing.parameters(), **work.reply}
        return mv, {"logits": logits}, reply

    async def _run(
        self, batcher: DynamicBatcher, work: Work, entered: float
    ) -> tuple[np.ndarray, Timing]:
        """Every sample of ``work`` through its batcher: the logits and where the time went."""
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
        timing = Timing(  # the slowest sample's, for a multi-sample request
            admit_ms=1000.0 * (started - entered),
            queue_ms=1000.0 * max(r.queue_s for r in results),
            total_ms=1000.0 * (time.perf_counter() - started),
            hop_ms=1000.0 * max(r.hop_s for r in results),
            ort_ms=1000.0 * max(r.run_s for r in results),
            batch=max(r.batch_size for r in results),
        )
        return logits, timing

    def _record(self, mv: ModelVersion, work: Work, timing: Timing, request_id: str) -> None:
        """What every answered request leaves behind: the service-time average devices read,
        metrics, one log line."""
        compute = timing.compute_ms
        self.service_ms = (
            compute
            if self.service_ms == 0.0
            else (1 - SERVICE_EWMA) * self.service_ms + SERVICE_EWMA * compute
        )
        self.metrics.requests.labels(mv.name, "ok").inc()
        self.metrics.latency.labels(mv.name).observe(timing.total_ms / 1000.0)
        if work.tokens:
            self.metrics.tokens.labels(mv.name).inc(len(work.samples) * work.tokens)
        log.info(
            "request %s: %s v%s, %s, %.2f ms",
            request_id,
            mv.name,
            mv.version,
            ", ".join(f"{k} {v}" for k, v in work.log.items()),
            timing.total_ms,
            extra={
                "request": {
                    "request_id": request_id,
                    "model": mv.name,
                    "version": mv.version,
                    **work.log,
                    "queue_ms": timing.queue_ms,
                    "total_ms": timing.total_ms,
                }
            },
        )
