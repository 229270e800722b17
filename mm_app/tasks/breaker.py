"""A worker's circuit breaker: stop taking work when the platform (not the user's code) keeps failing.

Counted: a runner or container that cannot start, and a task that fails inside the worker. Not
counted: anything the user's code does (exceptions, timeouts, exits, running out of memory).

``closed`` -> ``open`` after ``threshold`` counted failures within ``window`` seconds; ``open`` ->
``half_open`` after ``cooldown`` seconds, when the worker takes one probe task; the probe's success
closes the breaker, its failure opens it again. The worker advertises its slots through the breaker
(:meth:`slots`): none while open, one while half-open, so the dispatcher places work elsewhere.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from minimodal import config

logger = logging.getLogger("minimodal.worker.breaker")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitBreaker:
    def __init__(
        self,
        *,
        threshold: int,
        window: float,
        cooldown: float,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str], None] | None = None,
    ) -> None:
        self.threshold, self.window, self.cooldown = threshold, window, cooldown
        self._clock = clock
        self._on_change = on_change
        self._failures: deque[float] = deque()
        self._state = CLOSED
        self._opened_at = 0.0
        self._lock = threading.Lock()
        self.trips = 0  # how many times it opened

    @classmethod
    def from_config(cls, on_change: Callable[[str], None] | None = None) -> CircuitBreaker:
        return cls(
            threshold=config.get("breaker_failures"),
            window=config.get("breaker_window"),
            cooldown=config.get("breaker_cooldown"),
            on_change=on_change,
        )

    @property
    def state(self) -> str:
        with self._lock:
            return self._current()

    def _current(self) -> str:
        if self._state == OPEN and self._clock() - self._opened_at >= self.cooldown:
            self._set(HALF_OPEN)
        return self._state

    def _set(self, state: str) -> None:
        if state != self._state:
            logger.warning("circuit breaker %s -> %s", self._state, state)
            self._state = state
            if state == OPEN:
                self._opened_at = self._clock()
                self.trips += 1
            if self._on_change is not None:
                self._on_change(state)

    def slots(self, total: int) -> int:
        """The slots to advertise: all when closed, none when open, one probe when half-open."""
        state = self.state
        return total if state == CLOSED else (1 if state == HALF_OPEN else 0)

    def failure(self) -> None:
        """The platform failed a task."""
        with self._lock:
            now = self._clock()
            if self._current() == HALF_OPEN:
                self._set(OPEN)  # the probe failed
                return
            self._failures.append(now)
            while self._failures and now - self._failures[0] > self.window:
                self._failures.popleft()
            if self._state == CLOSED and len(self._failures) >= self.threshold:
                self._failures.clear()
                self._set(OPEN)

    def success(self) -> None:
        """A task ran (whatever the user's code did): a half-open breaker closes."""
        with self._lock:
            if self._current() == HALF_OPEN:
                self._failures.clear()
                self._set(CLOSED)
