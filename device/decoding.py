"""Uploads decoded off the event loop on a pool of their own, within each request's deadline.

Decoding a large upload takes a CPU for a hundred milliseconds or more. On the device's worker
thread it would queue behind the model and the model behind it; on one thread of its own, a burst
of heavy uploads would hold every request behind them long past its deadline. So uploads decode on
``workers`` threads (Pillow releases the GIL while it decodes and resizes), and one that cannot
get a decoder before its deadline is answered at once (:class:`~semlink.runtime.errors.Late`,
503 with ``Retry-After``) instead of after the queue.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from semlink.runtime.errors import Late

T = TypeVar("T")


class DecodePool:
    """``workers`` decoding threads and the admission to them: at most ``workers`` jobs run,
    the others wait in arrival order, each at most until its deadline."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")
        self._slots: asyncio.Semaphore | None = None  # made on the serving loop, at first use
        self.waiting = 0  # jobs waiting for a decoder now

    def close(self) -> None:
        """Stops the threads; jobs not started are dropped (their requests are gone)."""
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on a decoder once one is free, however long that takes."""
        await self._acquire(None)
        return await self._start(fn, args)

    async def run_by(
        self, started: float, deadline_ms: float, fn: Callable[..., T], *args: Any
    ) -> T:
        """``fn(*args)`` on a decoder, if one frees before ``deadline_ms`` after ``started``
        (a ``time.perf_counter()``); raises :class:`Late` the moment it is clear none will."""
        left_s = deadline_ms / 1000.0 - (time.perf_counter() - started)
        ahead = self.waiting
        try:
            await self._acquire(left_s)
        except TimeoutError:
            waited_ms = 1000.0 * (time.perf_counter() - started)
            raise Late(
                f"the upload waited {waited_ms:.0f} ms for one of {self.workers} decoders "
                f"({ahead} uploads ahead of it) and its deadline of {deadline_ms:g} ms passed; "
                "retry later, or give it a longer deadline_ms"
            ) from None
        return await self._start(fn, args)

    async def _acquire(self, timeout_s: float | None) -> None:
        """Takes a decoder: a free one at once, whatever the deadline left; else, with
        ``timeout_s``, raises ``TimeoutError`` when none frees in time (at once when
        ``timeout_s`` <= 0)."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.workers)
        if not self._slots.locked():
            await self._slots.acquire()
            return
        if timeout_s is not None and timeout_s <= 0:
            raise TimeoutError
        self.waiting += 1
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout_s)
        finally:
            self.waiting -= 1

    async def _start(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        """Runs the job on the decoder taken; the decoder is free again when the job ends, even
        if its request was cancelled meanwhile (the thread cannot be stopped)."""
        assert self._slots is not None
        slots = self._slots
        future = asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

        def done(f: asyncio.Future) -> None:
            """Frees the decoder; marks a failure of a job nobody waits for any more as seen."""
            slots.release()
            if not f.cancelled():
                f.exception()

        future.add_done_callback(done)
        return await asyncio.shield(future)
