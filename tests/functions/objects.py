"""Functions that use Dict and Queue from inside a runner (requests go through the worker)."""

from __future__ import annotations

import time
from typing import Any

import minimodal

app = minimodal.App("tests-objects")


@app.function(timeout=120)
def produce(q: minimodal.Queue, n: int, consumers: int) -> int:
    for start in range(0, n, 100):
        q.put_many(list(range(start, min(start + 100, n))))
    q.put_many([None] * consumers)  # one end marker per consumer
    return n


@app.function(timeout=120)
def consume(q: minimodal.Queue) -> list[int]:
    got: list[int] = []
    while True:
        batch = q.get_many(37, timeout=60)
        if None in batch:
            end = batch.index(None)
            got.extend(batch[:end])
            q.put_many([None] * batch[end + 1 :].count(None))  # the other consumers' end markers go back
            return got
        got.extend(batch)


@app.function(timeout=120)
def increment(d: minimodal.Dict) -> int:
    """Add one to d["count"] under a lock taken with put(skip_if_exists=True); return the tries it took."""
    me = minimodal.current_input_id()
    tries = 1
    while not d.put("lock", me, skip_if_exists=True):
        tries += 1
        time.sleep(0.005)
    try:
        value = d.get("count", 0)
        time.sleep(0.01)  # widen the window a lost update would need
        d["count"] = value + 1
    finally:
        assert d.pop("lock") == me
    return tries


@app.function(timeout=60)
def dict_by_name(name: str, key: Any) -> Any:
    return minimodal.Dict.from_name(name).get(key)


@app.function(timeout=60)
def dict_by_id(object_id: str) -> Any:
    return minimodal.Dict.from_id(object_id).get("k")


@app.function(timeout=60)
def queue_by_id(object_id: str) -> Any:
    return minimodal.Queue.from_id(object_id).get(block=False)


@app.function(timeout=60)
def wait_empty(q: minimodal.Queue) -> str:
    import queue

    try:
        q.get(timeout=0.3)
    except queue.Empty:
        return "empty"
    return "got"
