"""Dynamic batching: requests from many devices share one ONNX Runtime call.

One batcher per server graph; it knows nothing of the pipeline but its batch function
(:meth:`~semlink.runtime.pipelines.base.Pipeline.run_batch`), so tokens, JSCC symbols and
early-exit activations are batched, bounded and shed alike.

Greedy by default: when the model is idle a request runs at once, together with whatever is
already waiting (up to ``max_batch_size``); requests that arrive while a batch runs form the
next one. So a lone request pays no batching delay, and under load batches grow by themselves.

A lone request runs *inline* (on the event loop, without the queue, the batching task's wake-up
and the hop to a worker thread, which on a small model cost as much as the model itself) when
the batcher is idle, nothing waits, the previous request arrived at least two runs' time ago (so
requests are not coming in faster than one model run: under load they queue and batch), and a
recent run took under ``inline_max_ms`` (the event loop is busy for that long; a slower model
always goes through the worker threads). ``inline_max_ms = 0`` turns inlining off.
``max_queue_delay_ms > 0`` additionally holds a batch open that long for more requests (Triton's
knob), trading latency for larger batches. The queue is bounded: past ``max_queue`` waiting requests,
:class:`QueueFull` is raised at once (load shedding) instead of growing memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from semlink.runtime.errors import QueueFull

log = logging.getLogger(__name__)


Sample = dict[str, np.ndarray]  # one request's unbatched feeds
BatchFn = Callable[[list[Sample]], np.ndarray]  # samples -> logits (B, classes)


@dataclass
class _Item:
    sample: Sample
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class Done:
    """One sample's answer and where its time went, in seconds: waiting in the queue, the hop
    to a worker thread, and the model's run of the batch it was in."""

    logits: np.ndarray
    queue_s: float
    hop_s: float
    run_s: float
    batch_size: int


@dataclass
class BatchStats:
    """How many batches ran, how many requests they held, and how often each size occurred."""

    batches: int = 0
    requests: int = 0
    size_histogram: dict[int, int] = field(default_factory=dict)


class DynamicBatcher:
    """Collects waiting samples into batches for ``run`` on ``executor``'s threads."""

    def __init__(
        self,
        run: BatchFn,
        executor: ThreadPoolExecutor,
        *,
        max_batch_size: int = 16,
        max_queue_delay_ms: float = 0.0,
        max_queue: int = 1024,
        on_batch: Callable[[int], None] | None = None,
        inline_max_ms: float = 0.0,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.run = run
        self.executor = executor
        self.max_batch_size = max_batch_size
        self.max_delay = max_queue_delay_ms / 1000.0
        self.queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=max_queue)
        self.stats = BatchStats()
        self.on_batch = on_batch
        self.inline_max_s = inline_max_ms / 1000.0
        self._recent_run_s = float("inf")  # last batch's run time: inline only once known quick
        self._busy = False  # a batch is running (on a worker, or inline)
        self._stopped = False
        self._last_arrival = -float("inf")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Starts the batching loop on the running event loop."""
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        """Stops the batching loop; waiting requests are cancelled with it."""
        self._stopped = True  # nothing runs inline either
        if self._task is not None:
            self._task.cancel()

    async def submit(self, sample: Sample) -> Done:
        """Queues one sample for the next batch.

        Args:
            sample: the sample's feeds, as the pipeline's ``admit`` made them.

        Returns:
            Its logits (classes,) and where its time went (:class:`Done`).

        Raises:
            QueueFull: ``max_queue`` samples are already waiting (at once, nothing queued).
        """
        now = time.perf_counter()
        gap, self._last_arrival = now - self._last_arrival, now
        if (
            not self._busy
            and not self._stopped
            and self.queue.empty()
            and self.max_delay == 0.0
            and self._recent_run_s <= self.inline_max_s
            and gap >= 2 * self._recent_run_s
        ):
            return self._inline(sample)
        item = _Item(sample, asyncio.get_running_loop().create_future())
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            raise QueueFull(
                f"server queue is full ({self.queue.maxsize} waiting); retry later"
            ) from None
        return await item.future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self.queue.get()
            batch = [first]
            deadline = first.enqueued + self.max_delay
            while len(batch) < self.max_batch_size:
                if not self.queue.empty():  # whatever is already waiting joins at once
                    batch.append(self.queue.get_nowait())
                    continue
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                except TimeoutError:
                    break
            batch = [it for it in batch if not it.future.cancelled()]
            if not batch:
                continue
            started = time.perf_counter()
            self._busy = True
            try:
                logits, began, ran = await loop.run_in_executor(
                    self.executor, self._timed, [it.sample for it in batch]
                )
            except Exception as exc:  # the model failed: every waiter learns it, none hangs
                log.exception("inference failed for a batch of %d", len(batch))
                for it in batch:
                    if not it.future.done():
                        it.future.set_exception(exc)
                continue
            finally:
                self._busy = False
            self._recent_run_s = ran
            self._count(len(batch))
            for i, it in enumerate(batch):
                if not it.future.done():
                    it.future.set_result(
                        Done(logits[i], started - it.enqueued, began - started, ran, len(batch))
                    )

    def _inline(self, sample: Sample) -> Done:
        """Runs a lone sample on the event loop (see the module's docstring)."""
        self._busy = True
        try:
            logits, _, ran = self._timed([sample])
        finally:
            self._busy = False
        self._recent_run_s = ran
        self._count(1)
        return Done(logits[0], 0.0, 0.0, ran, 1)

    def _count(self, size: int) -> None:
        self.stats.batches += 1
        self.stats.requests += size
        self.stats.size_histogram[size] = self.stats.size_histogram.get(size, 0) + 1
        if self.on_batch is not None:
            self.on_batch(size)

    def _timed(self, samples: list[Sample]) -> tuple[np.ndarray, float, float]:
        """Runs a batch on a worker thread: its logits, when the thread began, how long it ran."""
        began = time.perf_counter()
        logits = self.run(samples)
        return logits, began, time.perf_counter() - began
