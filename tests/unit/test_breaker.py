"""The device's circuit breaker, on a hand-driven clock."""

from __future__ import annotations

import pytest

from semlink.device.breaker import CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_opens_after_consecutive_failures_and_recovers_through_one_trial():
    clock = Clock()
    b = CircuitBreaker(threshold=3, reset_s=2.0, clock=clock)
    for _ in range(2):
        assert b.allow()
        b.failure()
    assert b.state == "closed" and b.allow()
    b.failure()
    assert b.state == "open" and not b.allow()
    assert b.retry_in_s() == pytest.approx(2.0)
    clock.t = 2.0
    assert b.state == "half-open"
    assert b.allow() and not b.allow()  # one trial at a time
    b.success()
    assert b.state == "closed" and b.allow()


def test_a_failed_trial_opens_it_again():
    clock = Clock()
    b = CircuitBreaker(threshold=1, reset_s=1.0, clock=clock)
    b.failure()
    clock.t = 1.5
    assert b.allow()
    b.failure()
    assert b.state == "open" and b.retry_in_s() == pytest.approx(1.0)


def test_success_resets_the_count():
    b = CircuitBreaker(threshold=2)
    b.failure()
    b.success()
    b.failure()
    assert b.state == "closed"


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="threshold"):
        CircuitBreaker(threshold=0)
