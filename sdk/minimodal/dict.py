"""``Dict``: a distributed key-value store in Redis, per user, usable from clients and from functions.

Example::

    counts = minimodal.Dict.from_name("counts", create_if_missing=True)
    counts["a"] = 1
    if counts.put("lock", "me", skip_if_exists=True):  # False when someone holds it
        ...

Keys and values are cloudpickled; two keys are the same key when their pickles are equal (true for
str, bytes, int, and tuples of them). Every blocking method has an async form: ``await d.get.aio(k)``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

from ._aio import Steps, aio_iterator, aio_method, aio_steps
from ._objects import _Object, dumps, loads
from .exception import InvalidError

_MISSING: Any = object()


def _key(key: Any) -> str:
    try:
        hash(key)
    except TypeError as exc:
        raise InvalidError(f"Dict keys must be hashable, got {type(key).__name__}") from exc
    return dumps(key, "key")


def _load(data: str) -> Any:
    return loads(data, "Dict entry")


class Dict(_Object):
    """A named or ephemeral dictionary that lives on the MiniModal server."""

    _kind = "dict"

    # ---- item access ----

    def __getitem__(self, key: Any) -> Any:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __setitem__(self, key: Any, value: Any) -> None:
        self.put(key, value)

    def __delitem__(self, key: Any) -> None:
        self.pop(key)

    def __contains__(self, key: Any) -> bool:
        return self.contains(key)

    def __len__(self) -> int:
        return self.len()

    @aio_steps
    def get(self, key: Any, default: Any = None) -> Steps[Any]:
        answer = yield self._op("get", key=_key(key))
        return _load(answer["value"]) if answer["found"] else default

    @aio_steps
    def put(self, key: Any, value: Any, *, skip_if_exists: bool = False) -> Steps[bool]:
        """Set ``key``; with ``skip_if_exists``, only if absent (atomic): returns False when it existed."""
        answer = yield self._op("put", key=_key(key), value=dumps(value, "value"), skip_if_exists=skip_if_exists)
        return bool(answer["created"])

    @aio_steps
    def pop(self, key: Any, default: Any = _MISSING) -> Steps[Any]:
        """Remove ``key`` and return its value (atomic); KeyError when absent and no default is given."""
        answer = yield self._op("pop", key=_key(key))
        if answer["found"]:
            return _load(answer["value"])
        if default is _MISSING:
            raise KeyError(key)
        return default

    @aio_steps
    def contains(self, key: Any) -> Steps[bool]:
        return bool((yield self._op("contains", key=_key(key)))["found"])

    @aio_steps
    def len(self) -> Steps[int]:
        return int((yield self._op("len"))["len"])

    @aio_steps
    def update(self, other: Mapping[Any, Any] | None = None, /, **kwargs: Any) -> Steps[None]:
        items = {**(dict(other) if other is not None else {}), **kwargs}
        yield self._op("update", items=[[_key(k), dumps(v, "value")] for k, v in items.items()])

    @aio_steps
    def clear(self) -> Steps[None]:
        yield self._op("clear")

    def _items(self) -> Steps[list[tuple[Any, Any]]]:
        answer = yield self._op("items")
        return [(_load(k), _load(v)) for k, v in answer["items"]]

    @aio_iterator
    def keys(self) -> Iterator[Any]:
        return iter([k for k, _ in self._run(self._items())])

    @keys.native
    async def _akeys(self) -> AsyncIterator[Any]:
        for k, _ in await self._arun(self._items()):
            yield k

    @aio_iterator
    def values(self) -> Iterator[Any]:
        return iter([v for _, v in self._run(self._items())])

    @values.native
    async def _avalues(self) -> AsyncIterator[Any]:
        for _, v in await self._arun(self._items()):
            yield v

    @aio_iterator
    def items(self) -> Iterator[tuple[Any, Any]]:
        return iter(self._run(self._items()))

    @items.native
    async def _aitems(self) -> AsyncIterator[tuple[Any, Any]]:
        for item in await self._arun(self._items()):
            yield item

    @aio_method
    def info(self) -> dict[str, Any]:
        return {"name": self._name, "object_id": self.object_id}
