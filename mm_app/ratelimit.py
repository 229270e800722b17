"""Per-token rate limit of call submissions, in Redis so that it holds across API processes.

The generic cell rate algorithm (GCRA): one key per user holds the theoretical arrival time of its
next request; a request is allowed when that time is at most ``burst`` intervals ahead of now. One
Lua script (``lua/rate_limit.lua``) reads and moves it atomically, with Redis's own clock, so API processes on several
machines share one limit and one time. A refused request is told how long to wait (``Retry-After``).
"""

from __future__ import annotations

import math

from redis import Redis

from minimodal import protocol
from minimodal.exception import RateLimitError

from . import lua


class RateLimiter:
    """``check(user_id)`` raises :class:`RateLimitError` past ``rate`` requests/s with bursts of ``burst``."""

    def __init__(self, redis: Redis, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, max(burst, 1)
        self._script = lua.Script(redis, "rate_limit")

    def check(self, user_id: int) -> None:
        if self.rate <= 0:
            return
        interval = 1_000_000 / self.rate
        wait_us = int(
            self._script(
                {"limit": protocol.rate_key(user_id)}, {"interval_us": interval, "burst_us": interval * self.burst}
            )
        )
        if wait_us > 0:
            retry_after = max(1, math.ceil(wait_us / 1_000_000))
            raise RateLimitError(
                f"too many call submissions: this token may submit {self.rate:g} per second "
                f"(bursts of {self.burst}); retry after {retry_after} s (MINIMODAL_CALL_RATE_LIMIT)",
                retry_after=retry_after,
            )
