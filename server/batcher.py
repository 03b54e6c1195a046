"""Dynamic batching: requests from many devices share one ONNX Runtime call.

One batcher per server graph; it knows nothing of the pipeline but its batch function
(:meth:`~semlink.runtime.pipelines.base.Pipeline.run_batch`), so tokens, JSCC symbols and
early-exit activations are batched, bounded and shed alike.

Greedy by default: when the model is idle a request runs at once, together with whatever is
already waiting (up to ``max_batch_size``); requests that arrive while a batch runs form the
next one. So a lone request pays no batching delay, and under load batches grow by themselves.
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
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Starts the batching loop on the running event loop."""
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        """Stops the batching loop; waiting requests are cancelled with it."""
        if self._task is not None:
            self._task.cancel()

    async def submit(self, sample: Sample) -> tuple[np.ndarray, float]:
        """Queues one sample for the next batch.

        Args:
            sample: the sample's feeds, as the pipeline's ``admit`` made them.

        Returns:
            Its logits (classes,) and its wait in the queue, in seconds.

        Raises:
            QueueFull: ``max_queue`` samples are already waiting (at once, nothing queued).
        """
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
            try:
                logits = await loop.run_in_executor(
                    self.executor, self.run, [it.sample for it in batch]
                )
            except Exception as exc:  # the model failed: every waiter learns it, none hangs
                log.exception("inference failed for a batch of %d", len(batch))
                for it in batch:
                    if not it.future.done():
                        it.future.set_exception(exc)
                continue
            self.stats.batches += 1
            self.stats.requests += len(batch)
            self.stats.size_histogram[len(batch)] = self.stats.size_histogram.get(len(batch), 0) + 1
            if self.on_batch is not None:
                self.on_batch(len(batch))
            for i, it in enumerate(batch):
                if not it.future.done():
                    it.future.set_result((logits[i], started - it.enqueued))
