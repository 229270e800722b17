"""Dict and Queue operations on Redis, for one user: the one implementation behind both channels.

The SDK sends the same request from a client (``POST /v1/objects``, see :mod:`.api.objects`) and from
inside a function (a ``Q`` frame of the runner that the worker answers, see :mod:`.tasks.execute`),
so the two places behave alike. A request is a JSON object::

    {"kind": "dict" | "queue", "op": "...", "name": "..." | None, "id": "di-..." | None,
     "create": bool, ...arguments of the op}

Keys and values are cloudpickled by the SDK and travel base64-encoded; nothing here unpickles them.
An object belongs to the user who created it: another user's id or name is answered with
:class:`~minimodal.exception.NotFoundError`, as if it did not exist.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from redis import Redis

from minimodal import protocol
from minimodal.exception import InvalidError, NotFoundError

from .ownership import check_owner

KINDS = {"dict": "di", "queue": "qu", "volume": "vo"}  # kind -> object id prefix (Modal's)
MAX_BLOCK_SECONDS = 10.0  # one blocking get waits at most this long; the SDK asks again (a function timeout stays live)
MAX_PARTITION_KEY = 64  # bytes of a partition key (Modal's limit)
PARTITION_TTL = 24 * 3600  # a named partition is dropped this long after its last put (Modal's default)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

Request = dict[str, Any]


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidError(f"object name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting alphanumeric")
    return name


def _kind(request: Request) -> str:
    kind = request.get("kind")
    if kind not in KINDS:
        raise InvalidError(f"kind {kind!r}: give one of {sorted(KINDS)}")
    return kind


def resolve(redis: Redis, user_id: int, request: Request) -> str:
    """The object id the request names, checking it belongs to ``user_id``; creates it when asked."""
    kind = _kind(request)
    object_id = request.get("id")
    if object_id:
        owner, owner_kind = redis.hmget(protocol.object_key(str(object_id)), "user", "kind")
        check_owner(int(owner) if owner is not None and owner_kind == kind.encode() else None, user_id, kind, object_id)
        return str(object_id)
    name = check_name(request.get("name"))
    names = protocol.object_names_key(user_id, kind)
    found = redis.hget(names, name)
    if found is not None:
        return found.decode()
    if not request.get("create"):
        title = kind.capitalize()
        raise NotFoundError(
            f"{kind} {name!r} does not exist; create it with {title}.from_name(..., create_if_missing=True)"
        )
    fresh = _new_object(redis, user_id, kind, name)
    if not redis.hsetnx(names, name, fresh):  # another caller created it first: use theirs
        redis.delete(protocol.object_key(fresh))
    winner = redis.hget(names, name)
    if winner is None:  # deleted by name between the two steps
        raise NotFoundError(f"{kind} {name!r} was deleted while it was being created; try again")
    return winner.decode()


def _new_object(redis: Redis, user_id: int, kind: str, name: str) -> str:
    object_id = protocol.new_id(KINDS[kind])
    redis.hset(
        protocol.object_key(object_id),
        mapping={"user": user_id, "kind": kind, "name": name, "created": f"{time.time():.3f}"},
    )
    return object_id


def _delete_data(redis: Redis, kind: str, object_id: str) -> None:
    if kind == "volume":
        redis.delete(protocol.volume_files_key(object_id))  # the blobs stay: content may be shared (no GC yet)
    elif kind == "dict":
        redis.delete(protocol.dict_data_key(object_id))
    else:
        parts = redis.smembers(protocol.queue_partitions_key(object_id))
        keys = [protocol.queue_data_key(object_id, p.decode()) for p in parts]
        redis.delete(protocol.queue_partitions_key(object_id), protocol.queue_data_key(object_id, ""), *keys)
    redis.delete(protocol.object_key(object_id))


def handle(redis: Redis, user_id: int, request: Request) -> dict[str, Any]:
    """Run one request for ``user_id``; return the JSON answer (raises minimodal errors)."""
    if not isinstance(request, dict):
        raise InvalidError("an object request must be a JSON object")
    kind, op = _kind(request), request.get("op")
    if op == "list":
        names = redis.hgetall(protocol.object_names_key(user_id, kind))
        return {"objects": sorted(({"name": n.decode(), "id": i.decode()} for n, i in names.items()), key=str)}
    if op == "ephemeral":
        return {"id": _new_object(redis, user_id, kind, "")}
    object_id = resolve(redis, user_id, request)
    if op == "hydrate":
        return {"id": object_id}
    if op == "delete":
        name = redis.hget(protocol.object_key(object_id), "name")
        if name:
            redis.hdel(protocol.object_names_key(user_id, kind), name)
        _delete_data(redis, kind, object_id)
        return {"id": object_id}
    if kind == "volume":
        if op in ("commit", "reload"):  # outside a function every change is committed at once
            return {"id": object_id}
        raise InvalidError(f"unknown volume operation {op!r}; files go through /v1/volumes")
    table = _DICT_OPS if kind == "dict" else _QUEUE_OPS
    fn = table.get(str(op))
    if fn is None:
        raise InvalidError(f"unknown {kind} operation {op!r}")
    answer = fn(redis, object_id, request)
    answer["id"] = object_id
    return answer


def _bytes(request: Request, name: str) -> bytes:
    value = request.get(name)
    if not isinstance(value, str):
        raise InvalidError(f"missing field {name!r} (base64 of a pickled value)")
    try:
        return protocol.unb64(value)
    except ValueError as exc:
        raise InvalidError(f"field {name!r} is not base64") from exc


def _list(request: Request, name: str) -> list[Any]:
    value = request.get(name)
    if not isinstance(value, list):
        raise InvalidError(f"field {name!r} must be a list")
    return value


def _enc(values: list[bytes]) -> list[str]:
    return [protocol.b64(v) for v in values]


# ---- Dict ---------------------------------------------------------------------------------------


def _d_get(redis: Redis, oid: str, req: Request) -> dict[str, Any]:
    value = redis.hget(protocol.dict_data_key(oid), _bytes(req, "key"))
    return {"found": value is not None, "value": None if value is None else protocol.b64(value)}


def _d_put(redis: Redis, oid: str, req: Request) -> dict[str, Any]:
    key, value = _bytes(req, "key"), _bytes(req, "value")
    if req.get("skip_if_exists"):
        return {"created": bool(redis.hsetnx(protocol.dict_data_key(oid), key, value))}
    redis.hset(protocol.dict_data_key(oid), key, value)
    return {"created": True}


def _d_update(redis: Redis, oid: str, req: Request) -> dict[str, Any]:
    mapping = {}
    for pair in _list(req, "items"):
        if not isinstance(pair, list) or len(pair) != 2:
            raise InvalidError("items must be [key, value] pairs of base64 strings")
        mapping[protocol.unb64(pair[0])] = protocol.unb64(pair[1])
    if mapping:
        redis.hset(protocol.dict_data_key(oid), mapping=mapping)  # type: ignore[arg-type]  # types-redis: Mapping keys are invariant
    return {}


def _d_pop(redis: Redis, oid: str, req: Request) -> dict[str, Any]:
    key = _bytes(req, "key")
    with redis.pipeline(transaction=True) as pipe:  # MULTI: read and delete as one step
        pipe.hget(protocol.dict_data_key(oid), key)
        pipe.hdel(protocol.dict_data_key(oid), key)
        value, _ = pipe.execute()
    return {"found": value is not None, "value": None if value is None else protocol.b64(value)}


def _d_contains(redis: Redis, oid: str, req: Request) -> dict[str, Any]:
    return {"found": bool(redis.hexists(protocol.dict_data_key(oid), _bytes(req, "key")))}


def _d_len(redis: Redis, oid: str, req: Request) -> dict[str, Any]:
    return {"len": redis.hlen(protocol.dict_data_key(oid))}


def _d_items(redis: Redis, oid: str, req: Request) -> dict[str, Any]:
    items = redis.hgetall(protocol.dict_data_key(oid))
    return {"items": [[protocol.b64(k), protocol.b64(v)] for k, v in items.items()]}


def _d_clear(redis: Redis, oid: str, req: Request) -> dict[str, Any]:
    redis.delete(protocol.dict_data_key(oid))
    return {}


_DICT_OPS: dict[str, Callable[[Redis, str, Request], dict[str, Any]]] = {
    "get": _d_get,
    "put": _d_put,
    "update": _d_update,
    "pop": _d_pop,
    "contains": _d_contains,
    "len": _d_len,
    "items": _d_items,
    "clear": _d_clear,
}


# ---- Queue --------------------------------------------------------------------------------------


def _partition(req: Request) -> str:
    partition = req.get("partition")
    if partition is None:
        return ""
    if not isinstance(partition, str) or not partition or len(partition.encode()) > MAX_PARTITION_KEY:
        raise InvalidError(f"partition={partition!r}: give a non-empty key of at most {MAX_PARTITION_KEY} bytes")
    return partition


def _q_put(redis: Redis, oid: str, req: Request) -> dict[str, Any]:
    partition = _partition(req)
    values = [protocol.unb64(v) for v in _list(req, "values")]
    if not values:
        return {}
    key = protocol.queue_data_key(oid, partition)
    ttl = req.get("partition_ttl") or PARTITION_TTL
    if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl < 1:
        raise InvalidError(f"partition_ttl={ttl!r}: give whole seconds, at least 1")
    with redis.pipeline(transaction=True) as pipe:
        pipe.rpush(key, *values)
        if partition:
            pipe.sadd(protocol.queue_partitions_key(oid), partition)
            pipe.expire(key, ttl)
        pipe.execute()
    return {}


def _q_get(redis: Redis, oid: str, req: Request) -> dict[str, Any]:
    """Up to ``n`` values; with ``timeout`` > 0, wait (at most MAX_BLOCK_SECONDS) for the first one."""
    key = protocol.queue_data_key(oid, _partition(req))
    n = req.get("n", 1)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise InvalidError(f"n={n!r}: give a whole number of at least 1")
    timeout = req.get("timeout") or 0
    if not isinstance(timeout, int | float) or timeout < 0:
        raise InvalidError(f"timeout={timeout!r}: give seconds, at least 0")
    values = redis.lpop(key, n) or []
    if not values and timeout > 0:
        popped = redis.blpop([key], timeout=max(0.01, min(float(timeout), MAX_BLOCK_SECONDS)))  # 0 = forever
        if popped is not None:
            values = [popped[1]] + ((redis.lpop(key, n - 1) or []) if n > 1 else [])
    return {"values": _enc(values)}


def _q_len(redis: Redis, oid: str, req: Request) -> dict[str, Any]:
    if req.get("total"):
        parts = [p.decode() for p in redis.smembers(protocol.queue_partitions_key(oid))]
        return {"len": sum(redis.llen(protocol.queue_data_key(oid, p)) for p in ["", *parts])}
    return {"len": redis.llen(protocol.queue_data_key(oid, _partition(req)))}


def _q_clear(redis: Redis, oid: str, req: Request) -> dict[str, Any]:
    if req.get("all"):
        parts = [p.decode() for p in redis.smembers(protocol.queue_partitions_key(oid))]
        redis.delete(protocol.queue_partitions_key(oid), *(protocol.queue_data_key(oid, p) for p in ["", *parts]))
    else:
        redis.delete(protocol.queue_data_key(oid, _partition(req)))
    return {}


def _q_peek(redis: Redis, oid: str, req: Request) -> dict[str, Any]:
    """Values ``start`` .. ``start + n - 1`` without taking them (for ``iterate``)."""
    start, n = req.get("start", 0), req.get("n", 100)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (start, n)):
        raise InvalidError("start and n must be whole numbers of at least 0")
    if n == 0:
        return {"values": []}
    return {"values": _enc(redis.lrange(protocol.queue_data_key(oid, _partition(req)), start, start + n - 1))}


_QUEUE_OPS: dict[str, Callable[[Redis, str, Request], dict[str, Any]]] = {
    "put": _q_put,
    "get": _q_get,
    "len": _q_len,
    "clear": _q_clear,
    "peek": _q_peek,
}
