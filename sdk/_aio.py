"""Async forms of blocking methods, as Modal has them: ``await f.remote.aio(x)``, ``async for ... .aio()``.

No ``.aio`` form waits for a slot in a shared, bounded thread pool (``asyncio.to_thread`` would: its
default executor has min(32, cpus + 4) threads, so 20 consumers blocked in ``await q.get.aio()`` could
starve the ``put`` that would wake them). There are three kinds:

- **Native**: the method has an async twin (``@m.native``) that sends its requests with the asyncio
  client (``sdk/_aclient.py``). Dict and Queue operations are written once, as generators of object
  requests (:func:`aio_steps`), that a blocking driver or an async one runs; ``Function.remote`` and
  ``.spawn``, ``FunctionCall.get`` and the class methods built on them have twins.
- **A thread of its own** for every other method (``map``, volumes, ...): each call runs in a new
  thread that ends with it, so no call waits for another one to finish.
- Async iterators without a native twin are pumped by one thread per iteration.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import queue
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from typing import Any, TypeVar

T = TypeVar("T")
_DONE = object()


def in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> Awaitable[T]:
    """Run ``fn`` in a new thread of its own (never a bounded pool); await its result in the loop."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()
    context = contextvars.copy_context()  # enable_output() and the like carry over, as with to_thread

    def run() -> None:
        try:
            result, error = context.run(fn, *args, **kwargs), None
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits for it
            loop.call_soon_threadsafe(_settle, future, result, error)

    threading.Thread(target=run, name="minimodal-aio", daemon=True).start()
    return future


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


async def _iterate(make: Callable[[], Iterator[Any]]) -> AsyncIterator[Any]:
    """An async iterator over ``make()``, advanced in one thread of its own, one item per ask."""
    loop = asyncio.get_running_loop()
    asks: queue.SimpleQueue[bool] = queue.SimpleQueue()
    answers: asyncio.Queue[tuple[Any, BaseException | None]] = asyncio.Queue()
    context = contextvars.copy_context()

    def post(item: Any, error: BaseException | None = None) -> None:
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(answers.put_nowait, (item, error))

    def pump() -> None:
        iterator = None
        try:
            iterator = context.run(make)
            while asks.get():
                try:
                    item = context.run(next, iterator, _DONE)
                except BaseException as exc:  # noqa: BLE001 - raised in the consumer
                    post(None, exc)
                    return
                post(item)
                if item is _DONE:
                    return
        except BaseException as exc:  # noqa: BLE001
            post(None, exc)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()

    threading.Thread(target=pump, name="minimodal-aio-iter", daemon=True).start()
    try:
        while True:
            asks.put(True)
            item, error = await answers.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
    finally:
        asks.put(False)  # the consumer stopped early (or the iterator ended): the thread closes it


class _Bound:
    def __init__(self, descriptor: _AioDescriptor, obj: Any) -> None:
        self._descriptor, self._obj = descriptor, obj
        functools.update_wrapper(self, descriptor._fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._descriptor._fn(self._obj, *args, **kwargs)

    def aio(self, *args: Any, **kwargs: Any) -> Any:
        d = self._descriptor
        if d._native is not None:
            return d._native(self._obj, *args, **kwargs)
        if d._iterator:
            return _iterate(lambda: d._fn(self._obj, *args, **kwargs))
        return in_thread(d._fn, self._obj, *args, **kwargs)


class _AioDescriptor:
    def __init__(self, fn: Callable[..., Any], iterator: bool, native: Callable[..., Any] | None = None) -> None:
        self._fn, self._iterator, self._native = fn, iterator, native
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]  # a descriptor: takes the name and doc

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        return _Bound(self, obj)

    def native(self, afn: Callable[..., Any]) -> Callable[..., Any]:
        """Register ``afn`` (a coroutine function, or an async generator function for an iterator) as ``.aio``."""
        self._native = afn
        return afn


def aio_method(fn: Callable[..., Any]) -> Any:
    """A method that returns a value; ``.aio(...)`` gives a coroutine."""
    return _AioDescriptor(fn, iterator=False)


def aio_iterator(fn: Callable[..., Any]) -> Any:
    """A method that returns an iterator; ``.aio(...)`` gives an async iterator."""
    return _AioDescriptor(fn, iterator=True)


Steps = Generator[dict[str, Any], dict[str, Any], T]  # yields requests, is sent their answers, returns a value


def aio_steps(fn: Callable[..., Steps[Any]]) -> Any:
    """A method written once as a generator of platform requests (see ``sdk/_objects.py``).

    Called, its requests are sent one after another, blocking (``obj._run``); ``.aio`` sends them
    with the async client (``obj._arun``).
    """

    @functools.wraps(fn)
    def blocking(self: Any, *args: Any, **kwargs: Any) -> Any:
        return self._run(fn(self, *args, **kwargs))

    async def native(self: Any, *args: Any, **kwargs: Any) -> Any:
        return await self._arun(fn(self, *args, **kwargs))

    return _AioDescriptor(blocking, iterator=False, native=native)
