"""One frame on the device: wait for the device, let the controller choose an option, run the
device's stretches (changing course at an exit when the controller says so), then answer from
the device or send what the option packs, and answer from the device if that fails.

Every frame gets exactly one answer. The device computes one frame at a time
(:class:`DeviceQueue`); a frame that cannot start before its deadline is answered late at once
(:class:`~semlink.runtime.errors.Late`), and one that finds ``max_waiting`` frames ahead is refused
at once (:class:`~semlink.runtime.errors.QueueFull`). When the server or the link fails, or the
deadline would pass, the device answers from its local best (the exit it reached; a token
pipeline's own tail) and marks the answer ``degraded`` with the reason. With several server
replicas each request goes to the one expected to answer soonest, and to another when its first
choice is down (:mod:`semlink.device.replicas`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import numpy as np

from semlink.device.answer import Answer
from semlink.device.breaker import CircuitBreaker
from semlink.device.channel_state import ChannelMonitor
from semlink.device.client import ServerClient, build_request
from semlink.device.controller import Controller, ExitState, FrameState, Outcome, make_controller
from semlink.device.dashboard import Dashboard
from semlink.device.metrics import DeviceMetrics
from semlink.device.replicas import ReplicaSet, parse_targets
from semlink.device.settings import DeviceSettings
from semlink.protocol import params as P
from semlink.protocol import reply as R
from semlink.protocol.codec import TensorError
from semlink.runtime import security
from semlink.runtime.calibration import CalibrationTable
from semlink.runtime.costs import Predictor, StageTimes
from semlink.runtime.errors import Late, QueueFull
from semlink.runtime.images import check_image
from semlink.runtime.pipelines import Offload, Option, Stretch, WireOptions, make_pipeline
from semlink.runtime.pipelines.base import softmax
from semlink.runtime.repository import resolve, scan

log = logging.getLogger(__name__)
T = TypeVar("T")

SAFETY_MS = 15.0  # keep this much of the deadline for the local fallback and the reply
RETRIES = 1  # extra tries of an offload that found no live server, beyond one per other replica
MAX_TRIES = 3  # at most this many replicas tried for one request
RETRY_BACKOFF_S = 0.025  # the pause before retry k is uniform in [0, 25 ms * 2^k]
MIN_TRY_S = 0.05  # retry only if at least this much of the deadline is left after the pause
WARM_UP_RUNS = 3  # runs of every stage at start-up, to seed the controller's stage times
INTERVAL_EWMA = 0.1  # weight of the newest gap between frames in the running estimate
# failures that say the server (or the link) is down or drowning, and count towards the breaker
BREAKER_CODES = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
)
# failures after which the request goes to another replica: the server did no work on it
RETRY_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)


class DeviceQueue:
    """The device's one compute slot, and the frames waiting for it (at most ``max_waiting``).

    Frames take the slot in arrival order. A frame whose deadline passes while it waits is
    answered late at once; one that finds the waiting room full is refused at once.
    """

    def __init__(self, max_waiting: int) -> None:
        self.lock = asyncio.Lock()
        self.max_waiting = max_waiting
        self.waiting = 0
        self.last_arrival: float | None = None
        self.interval_ms: float | None = None  # running estimate of the time between frames

    def arrived(self, now: float) -> None:
        """Follows the time between frames (what a stream's frame rate is)."""
        if self.last_arrival is not None:
            gap = 1000.0 * (now - self.last_arrival)
            self.interval_ms = (
                gap
                if self.interval_ms is None
                else (1 - INTERVAL_EWMA) * self.interval_ms + INTERVAL_EWMA * gap
            )
        self.last_arrival = now

    @contextlib.asynccontextmanager
    async def slot(self, left_s: float) -> AsyncIterator[int]:
        """Holds the device for one frame; yields how many frames wait behind it. Raises
        :class:`Late` when ``left_s`` passes first, :class:`QueueFull` when the room is full."""
        if self.lock.locked() and self.waiting >= self.max_waiting:
            raise QueueFull(
                f"{self.waiting} frames are waiting for the device already (max_waiting "
                f"{self.max_waiting}): this one is refused; send fewer frames per second"
            )
        if not self.lock.locked():  # a free device starts at once, whatever the deadline left
            await self.lock.acquire()
            try:
                yield 0
            finally:
                self.lock.release()
            return
        self.waiting += 1
        try:
            await asyncio.wait_for(self.lock.acquire(), max(left_s, 0.0))
        except TimeoutError:
            raise Late(
                f"the deadline passed while the frame waited for the device ({self.waiting - 1} "
                "frames ahead of it): answered late, not computed"
            ) from None
        finally:
            self.waiting -= 1
        try:
            yield self.waiting
        finally:
            self.lock.release()


@dataclass
class Walk:
    """A frame's way through the device: the stretches run, the option taken, what it cost."""

    option: Option
    stretch: Stretch | None = None
    trail: list[dict[str, Any]] = field(default_factory=list)
    cpu_ms: float = 0.0  # the device's CPU time on the frame
    queued_ms: float = 0.0
    timing: dict[str, float] = field(default_factory=dict)


@dataclass
class Sent:
    """What came of sending an offload."""

    logits: np.ndarray | None = None  # None: failed
    reason: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    request_bytes: int = 0
    reply_bytes: int = 0


class DeviceService:
    """One device: its model's pipeline, the controller, the channel monitor, the client of the
    server with its breaker, metrics and dashboard."""

    def __init__(self, settings: DeviceSettings) -> None:
        self.settings = settings
        self.model = resolve(
            scan(settings.model_repository), settings.model_name, settings.model_version
        )
        self.pipeline = make_pipeline(self.model)
        self.pipeline.open(self.pipeline.device_graphs(), threads=1)
        # CPU work (decoding, the model's stretches) runs here, one at a time, off the event loop
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="device")
        self.times = StageTimes()
        self.predictor = Predictor(self.pipeline.stages, self._bytes_of, self.times)
        self.table: CalibrationTable | None = None
        self.controller: Controller = make_controller(settings, self.pipeline, self.predictor)
        self.table = getattr(self.controller, "table", None)
        self.queue = DeviceQueue(settings.max_waiting)
        self.monitor = ChannelMonitor(settings.link_state_url, settings.state_poll_ms)
        self.replicas = ReplicaSet(
            parse_targets(settings.server),
            self._client_factory(),
            lambda: CircuitBreaker(settings.breaker_failures, settings.breaker_reset_s),
            policy=settings.balance,
            probe_s=settings.server_probe_s,
            resolve_s=settings.resolve_s,
        )
        self.counts = {
            "requests": 0,
            "offloaded": 0,
            "degraded": 0,
            "late": 0,
            "dropped": 0,
            "on_time": 0,
        }
        self._recent_stretch_s = float("inf")  # the first stretch runs on the worker thread
        self.metrics = DeviceMetrics(self.model.name)
        self.dashboard = Dashboard(int(round(self.model.manifest.doc.get("num_patches", 0) ** 0.5)))

    def _client_factory(self) -> Callable[[str, str | None], ServerClient]:
        settings = self.settings
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

        return make_client

    def _bytes_of(self, option: Option) -> float:
        """An option's expected payload bytes, from the calibration table (0 without one)."""
        if self.table is None:
            return 0.0
        try:
            return float(self.table.bytes[self.table.index(option)])
        except ValueError:
            return 0.0

    async def start(self) -> None:
        """Measures every device stage under this process's CPU quota (the controller's first
        stage times), resolves the server names, then starts the channel monitor and the probe."""
        await self.run(self.warm_up)
        with contextlib.suppress(Exception):  # a name that does not resolve yet: the loop retries
            await self.replicas.resolve()
        self.monitor.start()
        self.replicas.start()

    async def close(self) -> None:
        """Stops the background tasks and closes the server channels."""
        await self.monitor.stop()
        await self.replicas.close()
        self.executor.shutdown(wait=False, cancel_futures=True)

    def warm_up(self, runs: int = WARM_UP_RUNS) -> None:
        """Runs every stage of every option ``runs`` times on a blank frame, seeding the stage
        times (the last run's of each) that controllers predict latency from."""
        image = np.zeros((1, *self.model.image_shape), np.float32)
        seen: set[tuple[str, ...]] = set()
        for option in self.pipeline.options():
            stages = tuple(self.pipeline.stages(option))
            if stages in seen:
                continue
            seen.add(stages)
            for _ in range(runs):
                walk = Walk(option)
                stretch = None
                for k in range(self.pipeline.stretches_for(option)):
                    stretch = self._timed(
                        walk,
                        f"stretch{k}",
                        self.pipeline.run_stretch,
                        k,
                        image,
                        stretch,
                        option,
                        None,
                    )
                self._pack(walk, stretch, option, WireOptions(self.settings.token_format), image)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Runs CPU-bound ``fn(*args)`` on the device's worker thread, off the event loop, so
        health probes and other requests are answered meanwhile."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def _timed(self, walk: Walk, stage: str, fn: Callable[..., T], *args: Any) -> T:
        """Runs one stage, learning its wall time (for the controller) and adding its CPU time to
        the frame's."""
        c0, t0 = time.thread_time(), time.perf_counter()
        out = fn(*args)
        wall = 1000.0 * (time.perf_counter() - t0)
        walk.cpu_ms += 1000.0 * (time.thread_time() - c0)
        walk.timing[f"{stage}_ms"] = walk.timing.get(f"{stage}_ms", 0.0) + wall
        self.times.observe(stage, wall)
        return out

    async def _stage(self, walk: Walk, stage: str, fn: Callable[..., T], *args: Any) -> T:
        """One stage: inline on the event loop while stages take under ``inline_max_ms`` (a thread
        hop costs as much as a small head), else on the worker thread, so that a slow device (a
        CPU quota, a big model) never stalls the front."""
        if self._recent_stretch_s <= self.settings.inline_max_ms / 1000.0:
            t0 = time.perf_counter()
            out = self._timed(walk, stage, fn, *args)
        else:
            t0 = time.perf_counter()
            out = await self.run(self._timed, walk, stage, fn, *args)
        self._recent_stretch_s = time.perf_counter() - t0
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

    # -- one frame ---------------------------------------------------------------------------

    async def classify(
        self,
        image: np.ndarray,
        raw_params: dict[str, Any],
        started: float | None = None,
        cpu_ms: float = 0.0,
    ) -> Answer:
        """One frame: wait for the device, choose, walk, send or answer; see the module docstring.

        Args:
            image: the normalised image, float32 (1, C, H, W) of the model's input shape.
            raw_params: the request's semlink parameters (``deadline_ms``, ``option``, ``snr_db``,
                ``request_id``, ``label``, and the pipeline's own); unknown keys are ignored.
            started: ``time.perf_counter()`` when the frame arrived, if work (reading and
                decoding the upload) came before: it counts against the deadline and total_ms.
            cpu_ms: the device's CPU time on the frame before this call (decoding it).

        Returns:
            The answer: prediction, where it was made, and what it cost.

        Raises:
            TensorError: the image has the wrong shape or non-finite values.
            ParameterError: a parameter is out of range or does not apply to this model.
            Late: the deadline passed before the device could start on the frame.
            QueueFull: too many frames wait for the device already.
        """
        entered = time.perf_counter()
        t0 = entered if started is None else started  # the deadline counts from here
        params = self.pipeline.check_request(raw_params)
        image = check_image(image, self.model.image_shape)
        request_id = params.get(P.REQUEST_ID) or uuid.uuid4().hex
        deadline_ms = params.get(P.DEADLINE_MS, self.settings.deadline_ms)
        self.queue.arrived(t0)
        try:
            async with self.queue.slot(
                deadline_ms / 1000.0 - (time.perf_counter() - t0)
            ) as waiting:
                walk = await self._walk(image, params, t0, deadline_ms, waiting)
                walk.cpu_ms += cpu_ms
                if started is not None:  # reading and decoding the upload
                    walk.timing["decode_ms"] = 1000.0 * (entered - started)
                frame_left = deadline_ms - 1000.0 * (time.perf_counter() - t0)
                packing = time.perf_counter()
                offload = self._pack(walk, walk.stretch, walk.option, self._wire(params), image)
                walk.timing["pack_ms"] = 1000.0 * (time.perf_counter() - packing)
                walk.timing["device_head_ms"] = walk.timing["head_ms"] + walk.timing["pack_ms"]
        except (Late, QueueFull) as exc:
            self._missed(exc)
            raise
        sent = Sent()
        if walk.option.offloads:
            sent = await self._send(request_id, offload, deadline_ms, frame_left, walk.timing)
        distance, warning = self.input_distance(image)
        logits = await self._logits(walk, offload, sent)
        answer = self._answer(request_id, walk, offload, sent, logits, params, deadline_ms, t0)
        answer.input_distance, answer.warning = distance, warning
        self._finish(answer, image, params, sent)
        return answer

    async def _walk(
        self, image: np.ndarray, params: dict[str, Any], t0: float, deadline_ms: float, waiting: int
    ) -> Walk:
        """The controller's plan, and the stretches it takes, revised at every exit on the way."""
        entered = time.perf_counter()
        channel = self.monitor.current
        frame = FrameState(
            params,
            channel,
            deadline_ms,
            1000.0 * (entered - t0),
            waiting,
            self.queue.interval_ms,
        )
        walk = Walk(
            self.pipeline.check_option(self.controller.decide(frame)),
            queued_ms=1000.0 * (entered - t0),
        )
        snr = params.get(P.SNR_DB, channel.snr_db)
        prev_conf = None
        k = 0
        while k < self.pipeline.stretches_for(walk.option):
            walk.stretch = await self._stage(
                walk,
                f"stretch{k}",
                self.pipeline.run_stretch,
                k,
                image,
                walk.stretch,
                walk.option,
                snr,
            )
            conf = walk.stretch.confidence
            if conf is not None:
                state = ExitState(
                    k,
                    self.pipeline.num_stretches,
                    walk.stretch.split,
                    conf,
                    prev_conf,
                    1000.0 * (time.perf_counter() - t0),
                    deadline_ms,
                )
                planned = walk.option
                walk.option = self.pipeline.check_option(
                    self.controller.at_exit(state, frame, planned)
                )
                action = (
                    "continue"
                    if walk.option == planned and walk.option.split > state.split
                    else walk.option.action
                )
                walk.trail.append({"exit": k, "confidence": conf, "action": action})
                prev_conf = conf
            k += 1
        walk.timing["head_ms"] = 1000.0 * (time.perf_counter() - entered)
        return walk

    def _wire(self, params: dict[str, Any]) -> WireOptions:
        channel = self.monitor.current
        snr = params.get(P.SNR_DB, channel.snr_db)
        return WireOptions(
            self.settings.token_format, snr, params.get(P.CHANNEL, self.settings.channel)
        )

    def _pack(
        self,
        walk: Walk,
        stretch: Stretch | None,
        option: Option,
        wire: WireOptions,
        image: np.ndarray,
    ) -> Offload:
        """What the option sends (timed as its pack stage; numpy slicing, a small graph or a JPEG
        encoder, on the event loop)."""
        stage = self.pipeline.pack_stage(option)
        if stage is None or stage == "local":
            return self.pipeline.pack(stretch, option, wire, image)
        return self._timed(walk, stage, self.pipeline.pack, stretch, option, wire, image)

    async def _logits(self, walk: Walk, offload: Offload, sent: Sent) -> np.ndarray:
        """The server's logits, or the device's own answer (planned or after a failed offload)."""
        if sent.logits is not None and np.isfinite(sent.logits).all():
            return sent.logits
        if sent.logits is not None:
            sent.logits, sent.reason = None, "the server answered non-finite logits"
        if walk.stretch is None:  # an upload that failed: the device's first exit answers
            walk.stretch = await self._stage(
                walk,
                "stretch0",
                self.pipeline.run_stretch,
                0,
                offload_image(offload),
                None,
                walk.option,
                None,
            )
        t_local = time.perf_counter()
        if walk.option.action == "exit":  # the exit's own log p: nothing to compute
            logits = self.pipeline.answer_locally(walk.stretch, offload)
        else:
            logits = await self._stage(
                walk, "local", self.pipeline.answer_locally, walk.stretch, offload
            )
        walk.timing["device_tail_ms"] = 1000.0 * (time.perf_counter() - t_local)
        if not np.isfinite(logits).all():  # an answer is never NaN
            raise TensorError(
                "the model's output is not finite for this input; send the image normalised "
                "as the model expects (values of a few units, see the model's metadata)"
            )
        return logits

    def _answer(
        self,
        request_id: str,
        walk: Walk,
        offload: Offload,
        sent: Sent,
        logits: np.ndarray,
        params: dict[str, Any],
        deadline_ms: float,
        t0: float,
    ) -> Answer:
        total_ms = 1000.0 * (time.perf_counter() - t0)
        walk.timing["total_ms"] = total_ms
        probs = softmax(logits[0])
        offloaded = sent.logits is not None
        option = walk.option
        channel = self.monitor.current
        snr = params.get(P.SNR_DB, channel.snr_db)
        return Answer(
            request_id=request_id,
            label=int(probs.argmax()),
            probabilities=[float(p) for p in probs],
            exit="server" if offloaded else "device",
            degraded=option.offloads and not offloaded,
            degraded_reason=sent.reason if option.offloads and not offloaded else None,
            option=option.name,
            budget=option.budget,
            rate=option.rate,
            split=option.split,
            tokens_sent=offload.tokens if offloaded else 0,
            symbols_per_token=offload.symbols_per_token,
            channel_uses=offload.channel_uses if offloaded else None,
            snr_db=float(snr) if snr is not None else None,
            kept_indices=offload.kept_indices,
            payload_bytes=offload.payload_bytes if offloaded else 0,
            request_bytes=sent.request_bytes if offloaded else 0,
            reply_bytes=sent.reply_bytes if offloaded else 0,
            deadline_ms=deadline_ms,
            on_time=total_ms <= deadline_ms,
            device_cpu_ms=walk.cpu_ms,
            queued_ms=walk.queued_ms,
            channel=channel.as_dict(),
            controller={"name": self.controller.name, **self.controller.state()},
            timing_ms=walk.timing,
            server=sent.parameters.get("_route") or None,
            exits=walk.trail or None,
        )

    # -- sending -----------------------------------------------------------------------------

    async def _send(
        self,
        request_id: str,
        offload: Offload,
        deadline_ms: float,
        left_ms: float,
        timing: dict[str, float],
    ) -> Sent:
        """Sends the offload within what is left of the deadline (the input check runs while it
        travels)."""
        t0 = time.perf_counter()
        request = build_request(
            self.model.name,
            self.model.version,
            request_id,
            offload.tensors,
            {**offload.params, P.REQUEST_ID: request_id},
        )
        timing["serialise_ms"] = 1000.0 * (time.perf_counter() - t0)
        route: dict[str, Any] = {}
        sent = await self._offload(request, deadline_ms, left_ms, timing, route)
        sent.parameters["_route"] = route
        sent.request_bytes = request.ByteSize()
        if sent.logits is not None:
            self.predictor.observe_server(offload.option, R.server_ms(sent.parameters))
        return sent

    async def _offload(
        self,
        request: Any,
        deadline_ms: float,
        left_ms: float,
        timing: dict[str, float],
        route: dict[str, Any],
    ) -> Sent:
        """Sends one request within ``left_ms`` (less a safety margin), to the replica expected
        to answer soonest, and to the next one while replicas are down and time is left;
        ``route`` gets the replica, its expected delay and the tries."""
        remaining_s = (left_ms - SAFETY_MS) / 1000.0
        if remaining_s <= 0:
            return Sent(reason=f"deadline of {deadline_ms:g} ms leaves no time to offload")
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
                if await self._retry(exc, tried, remaining_s, started):
                    continue
                break
            except ValueError as exc:
                replica.breaker.success()
                return Sent(reason=f"bad server answer: {exc}")
            replica.breaker.success()
            timing.update(
                server_ms=reply.server_ms, network_ms=reply.network_ms, rpc_ms=reply.round_trip_ms
            )
            timing.update(R.spans(reply.parameters))  # where the server's time went, as it reports
            return Sent(reply.logits, None, reply.parameters, reply_bytes=reply.reply_bytes)
        if tried:
            log.warning("request %s: offload failed (%s); answering locally", request.id, reason)
        return Sent(reason=reason)

    async def _retry(
        self, exc: grpc.aio.AioRpcError, tried: list[str], remaining_s: float, started: float
    ) -> bool:
        """Whether to try again after ``exc`` (pausing first): UNAVAILABLE (the request never
        reached a live server) and RESOURCE_EXHAUSTED (refused before any work) may go to another
        replica while time is left; inference is idempotent. A timed-out request is not resent:
        the server may still be computing it."""
        pause_s = random.uniform(0, RETRY_BACKOFF_S * 2 ** (len(tried) - 1))
        left_s = remaining_s - (time.perf_counter() - started)
        another = len(set(tried)) < len(self.replicas.replicas)
        if (
            exc.code() in RETRY_CODES
            and (another or exc.code() == grpc.StatusCode.UNAVAILABLE)
            and left_s - pause_s > MIN_TRY_S
        ):
            await asyncio.sleep(pause_s)
            return True
        return False

    # -- what every answer leaves behind ----------------------------------------------------

    def _finish(
        self, answer: Answer, image: np.ndarray, params: dict[str, Any], sent: Sent
    ) -> None:
        """Counts, the controller's lesson, metrics, the dashboard's view, one log line."""
        self.counts["requests"] += 1
        self.counts["offloaded"] += int(answer.exit == "server")
        self.counts["degraded"] += int(answer.degraded)
        self.counts["on_time"] += int(answer.on_time)
        channel = self.monitor.current
        self.controller.observe(
            Outcome(
                Option.parse(answer.option),
                bytes_up=answer.request_bytes,
                channel_uses=answer.channel_uses or 0.0,
                latency_ms=answer.timing_ms["total_ms"],
                device_ms=answer.device_cpu_ms,
                server_queue_ms=sent.parameters.get(R.QUEUE_MS),
                extra={
                    "interval_ms": self.queue.interval_ms,
                    "bandwidth_bps": channel.bandwidth_bps,
                },
            )
        )
        self.metrics.record(answer)
        self.dashboard.record(answer, image[0], params.get(P.LABEL))
        log.info(
            "request %s: %s, %s, %d B, %.1f ms%s",
            answer.request_id,
            answer.outcome,
            answer.option,
            answer.request_bytes,
            answer.timing_ms["total_ms"],
            "" if answer.on_time else " (late)",
            extra={"request": answer.log_fields(self.model.name)},
        )

    def _missed(self, exc: Exception) -> None:
        """Counts a frame answered late or refused before the device started on it."""
        key = "late" if isinstance(exc, Late) else "dropped"
        self.counts[key] += 1
        self.metrics.missed(key)


def offload_image(offload: Offload) -> np.ndarray:
    """The frame an upload carried, for the device's own answer when the upload failed."""
    return offload.local
