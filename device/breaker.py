"""A circuit breaker for the device's offloads: a dead server costs one timeout, not one per
request.

Closed: every offload goes out. After ``threshold`` consecutive failures (the server unreachable,
overloaded or too slow) it *opens*: offloads are skipped at once and answered locally, marked
degraded. After ``reset_s`` it lets one trial request through (*half-open*); success closes it,
failure opens it for another ``reset_s``. With ``reset_s`` = 2 s the device offloads again within
about 2 s of the server's return.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class CircuitBreaker:
    """Opens after ``threshold`` consecutive failed offloads; after ``reset_s`` seconds it lets one
    trial request through (half-open), which closes it on success or reopens it on failure.
    """

    def __init__(
        self, threshold: int = 3, reset_s: float = 2.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if threshold < 1 or reset_s <= 0:
            raise ValueError(f"threshold must be >= 1 and reset_s > 0, got {threshold}, {reset_s}")
        self.threshold, self.reset_s, self.clock = threshold, reset_s, clock
        self.failures = 0
        self.opened_at: float | None = None
        self.trial_in_flight = False

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half-open``."""
        if self.opened_at is None:
            return "closed"
        return "half-open" if self.clock() - self.opened_at >= self.reset_s else "open"

    def allow(self) -> bool:
        """Whether an offload may go out now (in half-open state: only one trial at a time)."""
        state = self.state
        if state == "closed":
            return True
        if state == "half-open" and not self.trial_in_flight:
            self.trial_in_flight = True
            return True
        return False

    def success(self) -> None:
        """An offload reached a live server: the breaker closes."""
        self.failures, self.opened_at, self.trial_in_flight = 0, None, False

    def failure(self) -> None:
        """An offload failed for want of a live server; enough of them in a row open the breaker."""
        self.failures += 1
        self.trial_in_flight = False
        if self.opened_at is not None or self.failures >= self.threshold:
            self.opened_at = self.clock()

    def retry_in_s(self) -> float:
        """Seconds until the next trial (0 when closed or half-open)."""
        if self.opened_at is None:
            return 0.0
        return max(0.0, self.reset_s - (self.clock() - self.opened_at))
