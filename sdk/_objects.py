"""What Dict and Queue (and the other platform objects) have in common: a name or id, and one channel.

A request is a JSON object (see ``mm_app/objects.py``). Outside a function it goes to the API
(``POST /v1/objects``) with the user's token; inside a function it goes through the runner's stdio
to the worker that runs the call (the container cannot reach the API), which answers for the call's
user. The same object therefore works in both places, and pickles into a function as its name or id.
"""

from __future__ import annotations

import sys
from typing import Any, Self, TypeVar

import cloudpickle

from ._aio import Steps
from .exception import InvalidError, NotFoundError, SerializationError, from_response
from .protocol import b64, unb64

CHANNEL_MODULE = "_minimodal_channel"  # registered in sys.modules by the runner (minimodal._runner)
T = TypeVar("T")
HTTP_TIMEOUT = 60.0  # seconds; above the server's longest blocking wait (10 s) with room for load


def send(request: dict[str, Any], client: Any = None) -> dict[str, Any]:
    """Send one object request through the runner channel when inside a function, else over HTTP."""
    channel = sys.modules.get(CHANNEL_MODULE)
    if channel is not None:
        answer: dict[str, Any] = channel.request(request)
        error = answer.get("error")
        if error:
            raise from_response(500, error.get("type"), error.get("message", "the platform request failed"))
        return answer
    if client is None:
        from ._client import Client

        client = Client.from_config()
    return client.request("POST", "/v1/objects", json=request, timeout=HTTP_TIMEOUT)


async def asend(request: dict[str, Any], client: Any = None) -> dict[str, Any]:
    """:func:`send` for ``.aio`` forms: the asyncio client outside a function; the one seam to swap.

    Inside a function the runner's channel is blocking: its request runs in a thread of its own.
    """
    if sys.modules.get(CHANNEL_MODULE) is not None:
        from ._aio import in_thread

        return await in_thread(send, request, client)
    from ._aclient import arequest

    if client is None:
        from ._client import Client

        client = Client.from_config()
    answer: dict[str, Any] = await arequest(client, "POST", "/v1/objects", json=request, timeout=HTTP_TIMEOUT)
    return answer


def dumps(value: Any, what: str = "value") -> str:
    """A key or value as the server stores it: base64 of its cloudpickle (never unpickled there)."""
    try:
        return b64(cloudpickle.dumps(value))
    except Exception as exc:
        raise SerializationError(f"cannot pickle the {what} {value!r:.100}: {exc}") from exc


def loads(data: str, where: str) -> Any:
    try:
        return cloudpickle.loads(unb64(data))
    except Exception as exc:
        raise SerializationError(f"cannot unpickle a {where}: {exc}; is the same package installed here?") from exc


class _Object:
    """A named (or ephemeral) object of one kind, hydrated lazily: no I/O until first used."""

    _kind = ""

    @classmethod
    def from_name(cls, name: str, *, environment_name: str | None = None, create_if_missing: bool = False) -> Self:
        """A lazy handle on the user's object called ``name``; nothing is sent until it is used."""
        return cls(name, create=create_if_missing)

    @classmethod
    def from_id(cls, object_id: str) -> Self:
        return cls(object_id=object_id)

    @classmethod
    def ephemeral(cls) -> EphemeralContext:
        """``with X.ephemeral() as obj:`` an unnamed object, deleted when the block ends."""
        return EphemeralContext(cls)

    @classmethod
    def delete(cls, name: str, *, allow_missing: bool = False) -> None:
        """Delete the user's object called ``name`` and its contents."""
        try:
            send({"kind": cls._kind, "op": "delete", "name": name})
        except NotFoundError:
            if not allow_missing:
                raise

    def __init__(self, name: str | None = None, *, object_id: str | None = None, create: bool = False) -> None:
        if name is None and object_id is None:
            raise InvalidError(f"a {self._kind} needs a name or an id")
        self._name, self._id, self._create = name, object_id, create

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._name or self._id!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {"_name": self._name, "_id": self._id, "_create": self._create}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    @property
    def name(self) -> str | None:
        return self._name

    @property
    def object_id(self) -> str:
        """The object's id (``di-...``, ``qu-...``); looks the name up on first use."""
        if self._id is None:
            self.hydrate()
        assert self._id is not None
        return self._id

    def hydrate(self) -> _Object:
        """Look the object up now (creating it if asked), instead of at its first operation."""
        self._request("hydrate")
        return self

    def _op(self, op: str, **fields: Any) -> dict[str, Any]:
        """The request for ``op`` on this object (by id once known, else by name)."""
        request: dict[str, Any] = {"kind": self._kind, "op": op, **fields}
        if self._id is not None:
            request["id"] = self._id
        else:
            request["name"], request["create"] = self._name, self._create
        return request

    def _absorb(self, answer: dict[str, Any]) -> dict[str, Any]:
        self._id = answer.get("id", self._id)
        return answer

    def _request(self, op: str, **fields: Any) -> dict[str, Any]:
        return self._absorb(send(self._op(op, **fields)))

    def _run(self, steps: Steps[T]) -> T:
        """Send the requests ``steps`` yields, one by one, blocking; its return value (see ``aio_steps``)."""
        try:
            request = next(steps)
            while True:
                request = steps.send(self._absorb(send(request)))
        except StopIteration as stop:
            return stop.value

    async def _arun(self, steps: Steps[T]) -> T:
        """:meth:`_run` with the async client: nothing blocks the event loop."""
        try:
            request = next(steps)
            while True:
                request = steps.send(self._absorb(await asend(request)))
        except StopIteration as stop:
            return stop.value

    @classmethod
    def _names(cls) -> list[dict[str, str]]:
        return send({"kind": cls._kind, "op": "list"})["objects"]


class EphemeralContext:
    """``with X.ephemeral() as obj:`` (or ``async with``): an unnamed object deleted on exit."""

    def __init__(self, cls: type[_Object]) -> None:
        self._cls = cls
        self._obj: _Object | None = None

    def __enter__(self) -> Any:
        answer = send({"kind": self._cls._kind, "op": "ephemeral"})
        self._obj = self._cls(object_id=answer["id"])
        return self._obj

    def __exit__(self, *exc: object) -> None:
        if self._obj is not None:
            try:
                self._obj._request("delete")
            except NotFoundError:
                pass

    async def __aenter__(self) -> Any:
        answer = await asend({"kind": self._cls._kind, "op": "ephemeral"})
        self._obj = self._cls(object_id=answer["id"])
        return self._obj

    async def __aexit__(self, *exc: object) -> None:
        if self._obj is not None:
            try:
                await asend(self._obj._op("delete"))
            except NotFoundError:
                pass
