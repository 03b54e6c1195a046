"""A loop the device runs in the background from start-up to shutdown."""

from __future__ import annotations

import asyncio
import contextlib


class Background:
    """Runs :meth:`_poll` as a task from :meth:`start` until :meth:`stop` cancels it."""

    _task: asyncio.Task | None = None

    def start(self) -> None:
        """Starts polling in the background on the running event loop."""
        self._task = asyncio.ensure_future(self._poll())

    async def stop(self) -> None:
        """Cancels the poll and waits for it to end."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _poll(self) -> None:
        raise NotImplementedError
