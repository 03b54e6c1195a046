"""Dynamic batching: requests from many devices share one ONNX Runtime call.

Greedy by default: when the model is idle a request runs at once, together with whatever is
already waiting (up to ``max_batch_size``); requests that arrive while a batch runs form the
next one. So a lone request pays no batching delay, and under load batches grow by themselves.
``max_queue_delay_ms > 0`` additionally holds a batch open that long for more requests (Triton's
knob), trading latency for larger batches. Requests that kept different numbers of tokens are padded to the longest
and masked (``token_mask`` = 0 on padding), which the tail graph excludes from attention, so each
answer equals the unbatched one. The queue is bounded: past ``max_queue`` waiting requests,
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
import onnxruntime as ort

from server.repository import run_tail

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    pass


@dataclass
class _Item:
    tokens: np.ndarray  # (T, d) float32
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class BatchStats:
    batches: int = 0
    requests: int = 0
    size_histogram: dict[int, int] = field(default_factory=dict)


class DynamicBatcher:
    def __init__(
        self,
        session: ort.InferenceSession,
        executor: ThreadPoolExecutor,
        *,
        max_batch_size: int = 16,
        max_queue_delay_ms: float = 0.0,
        max_queue: int = 1024,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.session = session
        self.executor = executor
        self.max_batch_size = max_batch_size
        self.max_delay = max_queue_delay_ms / 1000.0
        self.queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=max_queue)
        self.stats = BatchStats()
        self.on_batch = on_batch
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def submit(self, tokens: np.ndarray) -> tuple[np.ndarray, float]:
        """Logits (classes,) for one request's tokens (T, d), and its queue wait in seconds."""
        item = _Item(tokens, asyncio.get_running_loop().create_future())
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
            tokens, mask = pad([it.tokens for it in batch])
            started = time.perf_counter()
            try:
                logits = await loop.run_in_executor(
                    self.executor, run_tail, self.session, tokens, mask
                )
            except Exception as exc:  # the model failed: every waiter learns it, none hangs
                log.exception("tail inference failed for a batch of %d", len(batch))
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


def pad(items: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Stacks (T_i, d) token arrays into (B, T_max, d) with a (B, T_max) mask of real tokens."""
    t_max = max(x.shape[0] for x in items)
    d = items[0].shape[1]
    tokens = np.zeros((len(items), t_max, d), np.float32)
    mask = np.zeros((len(items), t_max), np.float32)
    for i, x in enumerate(items):
        tokens[i, : x.shape[0]] = x
        mask[i, : x.shape[0]] = 1.0
    return tokens, mask
