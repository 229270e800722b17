"""Trying again what may fail for a while (an API restarting, a socket not open yet): one loop, sync or async.

:class:`Backoff` is the schedule: waits that grow from ``first`` by ``factor`` up to ``most``, until
``tries`` or ``seconds`` run out. :class:`Retrying` is the loop, in the manner of tenacity: a block runs
under ``with attempt:``; an exception that ``wait_after`` forgives (it returns the seconds to wait) is
swallowed and the block runs again after that wait, any other leaves the loop. The loop sleeps with
``time.sleep`` when iterated, with ``asyncio.sleep`` when iterated with ``async for``.

Standard library only: the SDK imports it in a function's container too (a request of the function's
code goes through the same client).

Example::

    backoff = Backoff(0.1, most=2.0, seconds=60)
    for attempt in Retrying(lambda exc: backoff.next_wait() if isinstance(exc, ServiceError) else None):
        with attempt:
            return client.request("GET", "/health")
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from types import TracebackType


class Backoff:
    """The waits between the tries of one operation (``next_wait`` after each failed try)."""

    def __init__(
        self, first: float, *, factor: float = 2.0, most: float = 2.0, seconds: float | None = None, tries: int = 0
    ) -> None:
        self._wait, self.factor, self.most = first, factor, most
        self.deadline = None if seconds is None else time.monotonic() + seconds
        self.tries_left = tries - 1 if tries else None  # the first try needs no wait

    def next_wait(self) -> float | None:
        """Seconds to wait before the next try; None when no try is left (out of tries or of time)."""
        if self.tries_left is not None:
            if self.tries_left <= 0:
                return None
            self.tries_left -= 1
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return None
        wait, self._wait = self._wait, min(self._wait * self.factor, self.most)
        return wait


WaitAfter = Callable[[Exception], "float | None"]  # seconds to wait after this failure, None: give up


class Retrying:
    """The loop: ``for attempt in Retrying(wait_after): with attempt: ...`` (``async for`` in a coroutine)."""

    def __init__(self, wait_after: WaitAfter) -> None:
        self.wait_after = wait_after
        self.wait: float | None = None  # set when the last try failed and is forgiven
        self.done = False

    def __enter__(self) -> Retrying:
        self.wait = None
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> bool:
        if exc is None:
            self.done = True
            return False
        if isinstance(exc, Exception):
            self.wait = self.wait_after(exc)
        return self.wait is not None  # True swallows the exception: the block runs again

    def __iter__(self) -> Iterator[Retrying]:
        while not self.done:
            yield self
            if self.wait is not None:
                time.sleep(self.wait)

    async def __aiter__(self) -> AsyncIterator[Retrying]:
        while not self.done:
            yield self
            if self.wait is not None:
                await asyncio.sleep(self.wait)
