"""Async forms of blocking methods, as Modal has them: ``await f.remote.aio(x)``, ``async for ... .aio()``.

The blocking method runs in a worker thread (``asyncio.to_thread``), so the event loop stays free.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

_DONE = object()


class _Bound:
    def __init__(self, fn: Callable[..., Any], obj: Any, iterator: bool) -> None:
        self._fn, self._obj, self._iterator = fn, obj, iterator
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._fn(self._obj, *args, **kwargs)

    def aio(self, *args: Any, **kwargs: Any) -> Any:
        if self._iterator:
            return _iterate(lambda: self._fn(self._obj, *args, **kwargs))
        return asyncio.to_thread(self._fn, self._obj, *args, **kwargs)


async def _iterate(make: Callable[[], Iterator[Any]]) -> AsyncIterator[Any]:
    iterator = await asyncio.to_thread(make)
    try:
        while (item := await asyncio.to_thread(next, iterator, _DONE)) is not _DONE:
            yield item
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            await asyncio.to_thread(close)


class _AioDescriptor:
    def __init__(self, fn: Callable[..., Any], iterator: bool) -> None:
        self._fn, self._iterator = fn, iterator
        functools.update_wrapper(self, fn)

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        return _Bound(self._fn, obj, self._iterator)


def aio_method(fn: Callable[..., Any]) -> Any:
    """A method that returns a value; ``.aio(...)`` gives a coroutine."""
    return _AioDescriptor(fn, iterator=False)


def aio_iterator(fn: Callable[..., Any]) -> Any:
    """A method that returns an iterator; ``.aio(...)`` gives an async iterator."""
    return _AioDescriptor(fn, iterator=True)
