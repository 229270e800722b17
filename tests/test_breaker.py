"""The circuit breaker's states, on a clock the test moves."""

from __future__ import annotations

from mm_app.tasks.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, changes: list[str] | None = None) -> CircuitBreaker:
    return CircuitBreaker(
        threshold=5, window=300, cooldown=60, clock=clock, on_change=changes.append if changes is not None else None
    )


def test_five_platform_failures_within_the_window_open_it_and_it_advertises_no_slots() -> None:
    clock, changes = Clock(), []
    b = breaker(clock, changes)
    for _ in range(4):
        b.failure()
        clock.now += 10
    assert b.state == CLOSED and b.slots(4) == 4
    b.failure()
    assert b.state == OPEN and b.slots(4) == 0
    assert changes == [OPEN] and b.trips == 1


def test_failures_spread_wider_than_the_window_do_not_open_it() -> None:
    clock = Clock()
    b = breaker(clock)
    for _ in range(10):
        b.failure()
        clock.now += 100
    assert b.state == CLOSED


def test_after_the_cooldown_one_probe_is_let_through_and_its_result_decides() -> None:
    clock = Clock()
    b = breaker(clock)
    for _ in range(5):
        b.failure()
    clock.now += 59
    assert b.state == OPEN
    clock.now += 1
    assert b.state == HALF_OPEN and b.slots(4) == 1
    b.failure()  # the probe failed
    assert b.state == OPEN and b.trips == 2
    clock.now += 60
    assert b.state == HALF_OPEN
    b.success()  # the probe ran
    assert b.state == CLOSED and b.slots(4) == 4
