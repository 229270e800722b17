"""Per-token rate limit of call submissions, in Redis so that it holds across API processes.

The generic cell rate algorithm (GCRA): one key per user holds the theoretical arrival time of its
next request; a request is allowed when that time is at most ``burst`` intervals ahead of now. One
Lua script reads and moves it atomically, with Redis's own clock, so API processes on several
machines share one limit and one time. A refused request is told how long to wait (``Retry-After``).
"""

from __future__ import annotations

import math

from redis import Redis

from minimodal import protocol
from minimodal.exception import RateLimitError

# KEYS[1]: the user's key. ARGV: interval (µs per request), burst allowance (µs). Returns µs to wait, 0: allowed.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval, allowance = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local wait = tat + interval - allowance - now
if wait > 0 then return wait end
redis.call('SET', KEYS[1], tat + interval, 'PX', math.ceil((tat + interval - now) / 1000) + 1000)
return 0
"""


class RateLimiter:
    """``check(user_id)`` raises :class:`RateLimitError` past ``rate`` requests/s with bursts of ``burst``."""

    def __init__(self, redis: Redis, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, max(burst, 1)
        self._script = redis.register_script(_GCRA)

    def check(self, user_id: int) -> None:
        if self.rate <= 0:
            return
        interval = 1_000_000 / self.rate
        wait_us = int(self._script(keys=[protocol.rate_key(user_id)], args=[interval, interval * self.burst]))
        if wait_us > 0:
            retry_after = max(1, math.ceil(wait_us / 1_000_000))
            raise RateLimitError(
                f"too many call submissions: this token may submit {self.rate:g} per second "
                f"(bursts of {self.burst}); retry after {retry_after} s (MINIMODAL_CALL_RATE_LIMIT)",
                retry_after=retry_after,
            )
