"""One inference on the device: decide, run the head, send the kept tokens, or answer locally.
For an early-exit network: walk the device's exits, and at each exit, continue or offload the
activations as the controller says.

Every request gets exactly one answer. When the server or the link fails, or the deadline would
pass, the device answers from its local best (the tail it also holds; for an early-exit network,
the exit it reached) and marks the answer ``degraded`` with the reason. With several server
replicas each request goes to the one expected to answer soonest, and to another when its first
choice is down (:mod:`semlink.device.replicas`); a circuit breaker per replica keeps a dead
server from costing a timeout per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import grpc
import numpy as np

from semlink.device.breaker import CircuitBreaker
from semlink.device.channel_state import ChannelMonitor
from semlink.device.client import ServerClient, build_request
from semlink.device.controller import Controller, Decision, ExitState, make_controller
from semlink.device.dashboard import Dashboard
from semlink.device.metrics import DeviceMetrics
from semlink.device.replicas import ReplicaSet, parse_targets
from semlink.device.settings import DeviceSettings
from semlink.protocol import params as P
from semlink.protocol.codec import TensorError
from semlink.protocol.params import ParameterError
from semlink.runtime import security
from semlink.runtime.images import check_image
from semlink.runtime.pipelines import WireOptions, make_pipeline
from semlink.runtime.pipelines.base import softmax
from semlink.runtime.repository import resolve, scan

log = logging.getLogger(__name__)
T = TypeVar("T")

SAFETY_MS = 15.0  # keep this much of the deadline for the local fallback and the reply
RETRIES = 1  # extra tries of an offload that found no live server, beyond one per other replica
MAX_TRIES = 3  # at most this many replicas tried for one request
RETRY_BACKOFF_S = 0.025  # the pause before retry k is uniform in [0, 25 ms * 2^k]
MIN_TRY_S = 0.05  # retry only if at least this much of the deadline is left after the pause
# failures that say the server (or the link) is down or drowning, and count towards the breaker
BREAKER_CODES = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
)
# the spans a semlink server reports in its reply's parameters (server/grpc_service.py)
SERVER_SPANS = (
    "server_decode_ms",
    "server_admit_ms",
    "server_queue_ms",
    "server_hop_ms",
    "server_ort_ms",
    "server_handler_ms",
)
# failures after which the request goes to another replica: the server did no work on it
RETRY_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)


@dataclass
class Answer:
    """What the client gets: the prediction and what it cost."""

    request_id: str
    label: int
    probabilities: list[float]
    exit: str  # "server" | "device"
    degraded: bool
    degraded_reason: str | None
    budget: float
    rate: float | None  # JSCC rate r; None for plain-token pipelines (no rate applies)
    split: int
    tokens_sent: int
    symbols_per_token: int | None  # JSCC: complex symbols per token (m)
    channel_uses: float | None  # JSCC: complex symbols per source value
    snr_db: float | None  # the SNR the receiver simulated (JSCC), or the link's
    kept_indices: list[int]
    payload_bytes: int
    request_bytes: int
    channel: dict[str, Any]
    controller: dict[str, Any]
    timing_ms: dict[str, float] = field(default_factory=dict)
    # the replica that answered (or was tried last), its expected delay when chosen, and tries
    server: dict[str, Any] | None = None
    # early-exit networks: each device exit reached, its confidence and the controller's action
    exits: list[dict[str, Any]] | None = None
    # how far the input is from the training data (manifest's input_check), and a warning when
    # it is too far for the label to be trusted
    input_distance: float | None = None
    warning: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The answer as a JSON-ready dict."""
        return asdict(self)


class DeviceService:
    """One device: its model's pipeline, the controller, the channel monitor, the client of
    the server with its breaker, metrics and dashboard.
    """

    def __init__(self, settings: DeviceSettings) -> None:
        self.settings = settings
        self.model = resolve(
            scan(settings.model_repository), settings.model_name, settings.model_version
        )
        self.pipeline = make_pipeline(self.model)
        self.pipeline.open(self.pipeline.device_graphs(), threads=1)
        # CPU work (decoding, the model's stretches) runs here, one at a time, off the event loop
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="device")
        self.controller: Controller = make_controller(settings, self.model)
        self.monitor = ChannelMonitor(settings.link_state_url, settings.state_poll_ms)
        credentials = None
        if settings.tls_ca is not None:
            credentials = security.channel_credentials(
                settings.tls_ca, settings.tls_cert, settings.tls_key
            )

        def make_client(address: str, resolved_from: str | None) -> ServerClient:
            """A channel to one replica, verifying the name it was resolved from (TLS)."""
            return ServerClient(
                address,
                credentials=credentials,
                server_name=settings.tls_server_name or resolved_from,
                proxy=settings.proxy,
                stream=settings.transport == "stream",
            )

        self.replicas = ReplicaSet(
            parse_targets(settings.server),
            make_client,
            lambda: CircuitBreaker(settings.breaker_failures, settings.breaker_reset_s),
            policy=settings.balance,
            probe_s=settings.server_probe_s,
            resolve_s=settings.resolve_s,
        )
        self.counts = {"requests": 0, "offloaded": 0, "degraded": 0}
        self._recent_stretch_s = float("inf")  # the first stretch runs on the worker thread
        self.metrics = DeviceMetrics(self.model.name)
        self.dashboard = Dashboard(int(round(self.model.manifest.num_patches**0.5)))

    async def start(self) -> None:
        """Resolves the server names, then starts the channel monitor and the replicas' probe."""
        with contextlib.suppress(Exception):  # a name that does not resolve yet: the loop retries
            await self.replicas.resolve()
        self.monitor.start()
        self.replicas.start()

    async def close(self) -> None:
        """Stops the background tasks and closes the server channels."""
        await self.monitor.stop()
        await self.replicas.close()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Runs CPU-bound ``fn(*args)`` on the device's worker thread, off the event loop, so
        health probes and other requests are answered meanwhile."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def _stretch(
        self, k: int, image: np.ndarray, budget: float, prev: Any, snr_db: float | None
    ) -> Any:
        """Runs the model's stretch ``k`` (coding for ``snr_db`` where the coder adapts): inline
        on the event loop while stretches take under ``inline_max_ms`` (a thread hop costs as much
        as a small head), else on the worker thread, so that a slow device (a CPU quota, a big
        head) never stalls the HTTP front."""
        t0 = time.perf_counter()
        if self._recent_stretch_s <= self.settings.inline_max_ms / 1000.0:
            out = self.pipeline.run_stretch(k, image, budget, prev, snr_db)
        else:
            out = await self.run(self.pipeline.run_stretch, k, image, budget, prev, snr_db)
        self._recent_stretch_s = time.perf_counter() - t0
        return out

    def request_params(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Validates the semlink parameters a client may set; keys semlink does not use are
        ignored (OIP clients send their own), but a semlink key that cannot apply is refused."""
        out: dict[str, Any] = {}
        for key in (P.BUDGET, P.RATE, P.DEADLINE_MS, P.SNR_DB):
            if raw.get(key) is not None:
                out[key] = P.check(key, raw[key])
        if raw.get(P.CHANNEL) is not None:
            if self.model.manifest.jscc is None:
                raise ParameterError(
                    f"parameter 'channel' applies to JSCC pipelines; {self.model.name!r} is a "
                    f"{self.model.kind} pipeline: leave it out"
                )
            out[P.CHANNEL] = P.check_channel(raw[P.CHANNEL])
        if raw.get(P.SPLIT) is not None:
            raise ParameterError(
                "parameter 'split' is the device's to choose (its controller picks the exit); "
                "leave it out"
            )
        if raw.get(P.LABEL) is not None:
            out[P.LABEL] = P.check_label(raw[P.LABEL], self.model.num_classes)
        if raw.get(P.REQUEST_ID) is not None:
            out[P.REQUEST_ID] = str(raw[P.REQUEST_ID])[:128]
        return out

    def input_distance(self, image: np.ndarray) -> tuple[float | None, str | None]:
        """The image's distance from the training inputs and, past the manifest's threshold, a
        warning for the answer; ``(None, None)`` for a model without an input check."""
        check = self.model.manifest.input_check
        if check is None:
            return None, None
        distance = check.distance(image[0])
        if distance <= check.threshold:
            return distance, None
        return distance, (
            f"the input is unlike the data this model was trained on (distance {distance:.1f}, "
            f"threshold {check.threshold:.1f}; {self.model.manifest.normalisation.dataset}): "
            "the label may be wrong"
        )

    async def classify(
        self, image: np.ndarray, raw_params: dict[str, Any], started: float | None = None
    ) -> Answer:
        """One inference: the controller decides, the device runs its stretches (one for a token
        pipeline, up to one per exit for an early-exit network), then answers locally or
        offloads; a failed offload is answered locally, marked ``degraded`` with the reason.

        Args:
            image: the normalised image, float32 (1, C, H, W) of the model's input shape.
            raw_params: the request's semlink parameters (``budget``, ``rate``, ``snr_db``,
                ``deadline_ms``, ``request_id``, ``label``); unknown keys are ignored.
            started: ``time.perf_counter()`` when the request arrived, if work (reading and
                decoding the upload) came before: it counts against the deadline and total_ms.

        Returns:
            The answer: prediction, where it was made, and what it cost (bytes, tokens,
            channel uses, timings in ms, the controller's state).

        Raises:
            TensorError: the image has the wrong shape or non-finite values.
            ParameterError: a parameter is out of range.
        """
        entered = time.perf_counter()
        t0 = entered if started is None else started  # the deadline counts from here
        params = self.request_params(raw_params)
        image = check_image(image, self.model.image_shape)
        request_id = params.get(P.REQUEST_ID) or uuid.uuid4().hex
        deadline_ms = params.get(P.DEADLINE_MS, self.settings.deadline_ms)
        channel = self.monitor.current
        decision: Decision = self.controller.decide(params, channel)
        snr = params.get(P.SNR_DB, channel.snr_db)  # the SNR an offload crosses
        # Stretches run inline while they are quick, else on the device's worker thread
        # (:meth:`_stretch`): the event loop stays free for health probes and other requests.
        stretch, prev_conf, trail = None, None, []
        action = "offload" if decision.offload else "exit"
        for k in range(self.pipeline.num_stretches):
            stretch = await self._stretch(k, image, decision.budget, stretch, snr)
            if stretch.confidence is None:  # no exit here: the per-request decision stands
                break
            state = ExitState(
                k,
                self.pipeline.num_stretches,
                stretch.confidence,
                prev_conf,
                (time.perf_counter() - t0) * 1000.0,
                deadline_ms,
            )
            action = self.controller.at_exit(state, channel)
            trail.append({"exit": k, "confidence": stretch.confidence, "action": action})
            if action != "continue":
                break
            prev_conf = stretch.confidence
        assert stretch is not None
        head_done = time.perf_counter()
        wire = WireOptions(
            self.settings.token_format, snr, params.get(P.CHANNEL, self.settings.channel)
        )
        # packing is numpy slicing and casting, no model: on the event loop, a thread hop saved
        offload = self.pipeline.offload(stretch, decision.budget, decision.rate, wire)
        packed = time.perf_counter()
        timing = {
            "device_head_ms": (packed - entered) * 1000.0,  # stretches and packing
            "head_ms": (head_done - entered) * 1000.0,
            "pack_ms": (packed - head_done) * 1000.0,
        }
        if started is not None:  # reading and decoding the upload
            timing["decode_ms"] = (entered - started) * 1000.0
        request = build_request(
            self.model.name,
            self.model.version,
            request_id,
            offload.tensors,
            {**offload.params, P.REQUEST_ID: request_id},
        )
        timing["serialise_ms"] = (time.perf_counter() - packed) * 1000.0
        logits: np.ndarray | None = None
        reason: str | None = None
        reply: dict[str, Any] = {}
        route: dict[str, Any] = {}
        if action == "offload":
            sending = asyncio.ensure_future(
                self._offload(
                    request, deadline_ms, (time.perf_counter() - t0) * 1000.0, timing, route
                )
            )
            await asyncio.sleep(0)  # the request leaves; the input check runs while it travels
            distance, warning = self.input_distance(image)
            logits, reason, reply = await sending
        else:
            distance, warning = self.input_distance(image)
        if logits is not None and not np.isfinite(logits).all():
            logits, reason = None, "the server answered non-finite logits"
        offloaded = logits is not None
        degraded = action == "offload" and not offloaded
        if logits is None:
            t_local = time.perf_counter()
            logits = await self.run(self.pipeline.answer_locally, stretch, offload)
            timing["device_tail_ms"] = (time.perf_counter() - t_local) * 1000.0
            if not np.isfinite(logits).all():  # an answer is never NaN
                raise TensorError(
                    "the model's output is not finite for this input; send the image normalised "
                    "as the model expects (values of a few units, see the model's metadata)"
                )
        timing["total_ms"] = (time.perf_counter() - t0) * 1000.0
        probs = softmax(logits[0])
        payload_bytes = sum(len(r) for r in request.raw_input_contents) if offloaded else 0
        self.counts["requests"] += 1
        self.counts["offloaded"] += int(offloaded)
        self.counts["degraded"] += int(degraded)
        self.controller.observe(
            decision,
            {
                "payload_bytes": payload_bytes,
                "channel_uses": (offload.channel_uses or 0.0) if offloaded else 0.0,
                "latency_ms": timing["total_ms"],
                "server_queue_ms": reply.get("server_queue_ms"),
            },
        )
        answer = Answer(
            request_id=request_id,
            label=int(probs.argmax()),
            probabilities=[float(p) for p in probs],
            exit="server" if offloaded else "device",
            degraded=degraded,
            degraded_reason=reason if degraded else None,
            budget=offload.budget,
            rate=offload.rate,
            split=offload.split,
            tokens_sent=offload.tokens if offloaded else 0,
            symbols_per_token=offload.symbols_per_token,
            channel_uses=offload.channel_uses if offloaded else None,
            snr_db=float(snr) if snr is not None else None,
            kept_indices=offload.kept_indices,
            payload_bytes=payload_bytes,
            request_bytes=request.ByteSize() if offloaded else 0,
            channel=channel.as_dict(),
            controller={"name": self.controller.name, **self.controller.state()},
            timing_ms=timing,
            server=route or None,
            exits=trail or None,
            input_distance=distance,
            warning=warning,
        )
        self._finish(answer, image, params, timing)
        return answer

    async def _offload(
        self,
        request: Any,
        deadline_ms: float,
        elapsed_ms: float,
        timing: dict[str, float],
        route: dict[str, Any],
    ) -> tuple[np.ndarray | None, str | None, dict[str, Any]]:
        """Sends one request within what is left of the deadline, to the replica expected to
        answer soonest, and to the next one while replicas are down and time is left. Returns
        the server's logits (``None`` on failure), the failure's reason, and the reply's
        parameters; ``route`` gets the replica, its expected delay and the tries."""
        remaining_s = (deadline_ms - elapsed_ms - SAFETY_MS) / 1000.0
        if remaining_s <= 0:
            return None, f"deadline of {deadline_ms:g} ms leaves no time to offload", {}
        started = time.perf_counter()
        tried: list[str] = []
        max_tries = min(MAX_TRIES, len(self.replicas.replicas) + RETRIES)
        reason = "no server replica is known yet"
        while len(tried) < max(max_tries, 1):
            chosen = self.replicas.choose(exclude=tried)
            if chosen is None:
                if not tried and self.replicas.replicas:
                    reason = (
                        f"circuit open on every server replica after failed offloads; "
                        f"next try in {self.replicas.retry_in_s():.1f} s"
                    )
                break
            replica, expected = chosen
            first_here = replica.address not in tried  # a breaker counts requests, not tries
            tried.append(replica.address)
            route.update(replica=replica.address, expected_ms=round(expected, 3), tries=len(tried))
            left_s = remaining_s - (time.perf_counter() - started)
            try:
                reply = await replica.infer(request, left_s)
            except grpc.aio.AioRpcError as exc:
                reason = f"server {exc.code().name}: {exc.details()}"
                if exc.code() not in BREAKER_CODES:  # the server answered: it is alive
                    replica.breaker.success()
                elif first_here:
                    replica.breaker.failure()
                # UNAVAILABLE: the request never reached a live server (or its connection
                # broke); RESOURCE_EXHAUSTED: refused before any work. Inference is idempotent,
                # so another try (another replica first) after a jittered pause is safe; a
                # timed-out request is not resent: the server may still be computing it
                pause_s = random.uniform(0, RETRY_BACKOFF_S * 2 ** (len(tried) - 1))
                left_s = remaining_s - (time.perf_counter() - started)
                another = len(set(tried)) < len(self.replicas.replicas)
                if (
                    exc.code() in RETRY_CODES
                    and (another or exc.code() == grpc.StatusCode.UNAVAILABLE)
                    and left_s - pause_s > MIN_TRY_S
                ):
                    await asyncio.sleep(pause_s)
                    continue
                break
            except ValueError as exc:
                replica.breaker.success()
                return None, f"bad server answer: {exc}", {}
            replica.breaker.success()
            server_ms = float(reply.parameters.get("server_queue_ms", 0.0)) + float(
                reply.parameters.get("server_compute_ms", 0.0)
            )
            timing.update(
                server_ms=server_ms,
                network_ms=max(reply.round_trip_ms - server_ms, 0.0),
                rpc_ms=reply.round_trip_ms,
            )
            for key in SERVER_SPANS:  # where the server's time went, as it reports it
                if isinstance(reply.parameters.get(key), (int, float)):
                    timing[key] = float(reply.parameters[key])
            return reply.logits, None, reply.parameters
        if tried:
            log.warning("request %s: offload failed (%s); answering locally", request.id, reason)
        return None, reason, {}

    def _finish(
        self, answer: Answer, image: np.ndarray, params: dict[str, Any], timing: dict[str, float]
    ) -> None:
        """What every answer leaves behind: metrics, the dashboard's view, one log line."""
        self.metrics.record(answer)
        self.dashboard.record(answer, image[0], params.get(P.LABEL))
        _request_log(answer, self.model.name, timing)


def _request_log(answer: Answer, model: str, timing: dict[str, float]) -> None:
    log.info(
        "request %s: %s, %d tokens, %d B, %.1f ms",
        answer.request_id,
        "degraded" if answer.degraded else answer.exit,
        answer.tokens_sent,
        answer.request_bytes,
        timing["total_ms"],
        extra={
            "request": {
                "request_id": answer.request_id,
                "model": model,
                "exit": answer.exit,
                "degraded": answer.degraded,
                "budget": answer.budget,
                "rate": answer.rate,
                "split": answer.split,
                "tokens_sent": answer.tokens_sent,
                "request_bytes": answer.request_bytes,
                "channel_uses": answer.channel_uses,
                "snr_db": answer.snr_db,
                **timing,
            }
        },
    )
