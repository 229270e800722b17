"""``Queue``: a distributed FIFO in Redis, per user, with optional partitions.

Example::

    with minimodal.Queue.ephemeral() as q:
        q.put_many([1, 2, 3])
        q.get()                 # 1
        q.get_many(10)          # [2, 3]: up to 10, as soon as one is there
        q.get(timeout=0.5)      # raises queue.Empty after half a second

Values are cloudpickled. A blocking ``get`` waits in rounds of at most 10 s on the server, so a
function's ``timeout`` still stops a function that waits forever. Every method has an ``.aio`` form,
which sends its requests with the asyncio client (``await q.get.aio()`` holds no thread).
"""

from __future__ import annotations

import queue as _stdlib_queue
import time
from collections.abc import Iterator
from typing import Any

from ._aio import Steps, aio_iterator, aio_steps
from ._objects import _Object, dumps, loads

PARTITION_TTL = 24 * 3600  # seconds a named partition is kept after its last put (Modal's default)
_PAGE = 100  # values iterate() reads per request


def _load(data: str) -> Any:
    return loads(data, "Queue value")


class Queue(_Object):
    """A named or ephemeral FIFO queue that lives on the MiniModal server."""

    _kind = "queue"

    @aio_steps
    def put(
        self,
        v: Any,
        block: bool = True,
        timeout: float | None = None,
        *,
        partition: str | None = None,
        partition_ttl: int = PARTITION_TTL,
    ) -> Steps[None]:
        """Append ``v`` (the queue has no size limit here, so it never blocks)."""
        yield self._op("put", values=[dumps(v)], partition=partition, partition_ttl=partition_ttl)

    @aio_steps
    def put_many(
        self,
        vs: list[Any],
        block: bool = True,
        timeout: float | None = None,
        *,
        partition: str | None = None,
        partition_ttl: int = PARTITION_TTL,
    ) -> Steps[None]:
        """Append every value of ``vs``, in order, in one step."""
        yield self._op("put", values=[dumps(v) for v in vs], partition=partition, partition_ttl=partition_ttl)

    def _take(self, n: int, block: bool, timeout: float | None, partition: str | None) -> Steps[list[Any]]:
        if not block:
            answer = yield self._op("get", n=n, timeout=0, partition=partition)
            return [_load(v) for v in answer["values"]]
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = 10.0 if deadline is None else max(0.0, deadline - time.monotonic())
            values = (yield self._op("get", n=n, timeout=wait, partition=partition))["values"]
            if values:
                return [_load(v) for v in values]
            if deadline is not None and time.monotonic() >= deadline:
                raise _stdlib_queue.Empty

    @aio_steps
    def get(self, block: bool = True, timeout: float | None = None, *, partition: str | None = None) -> Steps[Any]:
        """Take the oldest value; wait for one when ``block`` (raising ``queue.Empty`` after ``timeout``).

        Not blocking, an empty queue gives None.
        """
        values = yield from self._take(1, block, timeout, partition)
        return values[0] if values else None

    @aio_steps
    def get_many(
        self, n_values: int, block: bool = True, timeout: float | None = None, *, partition: str | None = None
    ) -> Steps[list[Any]]:
        """Take up to ``n_values`` values as soon as one is there (``[]`` when not blocking and empty)."""
        return (yield from self._take(n_values, block, timeout, partition))

    @aio_steps
    def len(self, *, partition: str | None = None, total: bool = False) -> Steps[int]:
        return int((yield self._op("len", partition=partition, total=total))["len"])

    @aio_steps
    def clear(self, *, partition: str | None = None, all: bool = False) -> Steps[None]:
        yield self._op("clear", partition=partition, all=all)

    @aio_iterator
    def iterate(self, *, partition: str | None = None, item_poll_timeout: float = 0.0) -> Iterator[Any]:
        """The values in order, without taking them; waits ``item_poll_timeout`` s for more at the end."""
        start = 0
        while True:
            values = self._request("peek", start=start, n=_PAGE, partition=partition)["values"]
            if not values:
                deadline = time.monotonic() + item_poll_timeout
                while not values and time.monotonic() < deadline:
                    time.sleep(min(0.1, item_poll_timeout))
                    values = self._request("peek", start=start, n=_PAGE, partition=partition)["values"]
                if not values:
                    return
            start += len(values)
            yield from (_load(v) for v in values)
