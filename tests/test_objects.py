"""Dict and Queue against a real stack: from the client (HTTP), from functions (the runner channel), per user."""

from __future__ import annotations

import asyncio
import queue

import pytest
import requests

import minimodal
from minimodal.exception import InvalidError, NotFoundError
from tests.conftest import Stack
from tests.functions import objects


def test_dict_from_the_client_behaves_like_a_dict(user: str) -> None:
    d = minimodal.Dict.from_name("client-dict", create_if_missing=True)
    d["a"] = 1
    d[("t", 2)] = {"nested": [1, 2]}
    assert d["a"] == 1 and d[("t", 2)] == {"nested": [1, 2]}
    assert d.get("missing") is None and d.get("missing", 7) == 7
    with pytest.raises(KeyError):
        d["missing"]
    assert d.put("a", 2, skip_if_exists=True) is False and d["a"] == 1
    assert d.put("b", 2, skip_if_exists=True) is True
    assert "b" in d and d.contains("a") and not d.contains("zzz")
    d.update({"c": 3}, e=5)
    assert len(d) == 5 and d.len() == 5
    assert sorted(d.keys(), key=str) == sorted(["a", ("t", 2), "b", "c", "e"], key=str)
    assert dict(d.items())["c"] == 3 and sorted(v for v in d.values() if isinstance(v, int)) == [1, 2, 3, 5]
    assert d.pop("e") == 5 and d.pop("e", None) is None
    with pytest.raises(KeyError):
        d.pop("e")
    del d["c"]
    assert d.object_id.startswith("di-")
    assert minimodal.Dict.from_name("client-dict")["a"] == 1  # the same Dict by name, as another handle
    d.clear()
    assert len(d) == 0
    with pytest.raises(InvalidError, match="hashable"):
        d.get(["a list"])


def test_from_name_without_create_if_missing_is_not_found_and_delete_removes_it(user: str) -> None:
    with pytest.raises(NotFoundError, match="create_if_missing"):
        minimodal.Dict.from_name("nope").get("k")
    q = minimodal.Queue.from_name("to-delete", create_if_missing=True)
    q.put(1)
    minimodal.Queue.delete("to-delete")
    with pytest.raises(NotFoundError):
        q.len()
    minimodal.Queue.delete("to-delete", allow_missing=True)
    with pytest.raises(InvalidError, match="object name"):
        minimodal.Dict.from_name("bad name!").len()


def test_queue_from_the_client_is_fifo_with_partitions_and_stdlib_empty(user: str) -> None:
    with minimodal.Queue.ephemeral() as q:
        assert q.object_id.startswith("qu-")
        q.put(1)
        q.put_many([2, 3, 4])
        q.put("x", partition="p1")
        assert q.len() == 4 and q.len(partition="p1") == 1 and q.len(total=True) == 5
        assert list(q.iterate()) == [1, 2, 3, 4] and q.len() == 4  # iterate does not take
        assert q.get() == 1
        assert q.get_many(10) == [2, 3, 4]  # up to 10, as soon as there is one
        assert q.get(block=False) is None and q.get_many(5, block=False) == []
        with pytest.raises(queue.Empty):
            q.get(timeout=0.2)
        with pytest.raises(queue.Empty):
            q.get_many(3, timeout=0)
        assert q.get(partition="p1") == "x"
        q.put_many([5, 6], partition="p2")
        q.clear(partition="p2")
        assert q.len(partition="p2") == 0
        q.put(7)
        q.clear(all=True)
        assert q.len(total=True) == 0
        object_id = q.object_id
    with pytest.raises(NotFoundError):  # an ephemeral queue is gone after its block
        minimodal.Queue.from_id(object_id).len()


def test_the_aio_forms_work_in_async_code(user: str) -> None:
    async def main() -> tuple[object, ...]:
        async with minimodal.Queue.ephemeral() as q:
            await q.put.aio(1)
            await q.put_many.aio([2, 3])
            first = await q.get.aio()
            rest = await q.get_many.aio(5)
            length = await q.len.aio()
        async with minimodal.Dict.ephemeral() as d:
            await d.put.aio("k", "v")
            value = await d.get.aio("k")
            keys = [k async for k in d.keys.aio()]
        return first, rest, length, value, keys

    assert asyncio.run(main()) == (1, [2, 3], 0, "v", ["k"])


def test_a_producer_and_two_consumers_pass_1000_items_none_lost_or_duplicated(user: str) -> None:
    with objects.app.run(), minimodal.Queue.ephemeral() as q:
        consumers = [objects.consume.spawn(q) for _ in range(2)]
        assert objects.produce.remote(q, 1000, 2) == 1000
        got = [item for c in consumers for item in c.get(timeout=120)]
        assert sorted(got) == list(range(1000))  # none lost, none duplicated
        assert q.len() == 0


def test_fifty_concurrent_calls_count_correctly_with_put_skip_if_exists_as_a_lock(user: str) -> None:
    with objects.app.run(), minimodal.Dict.ephemeral() as d:
        tries = list(objects.increment.map([d] * 50))
        assert d["count"] == 50
        assert "lock" not in d
        assert len(tries) == 50


def test_functions_see_the_users_objects_by_name_and_id(user: str) -> None:
    d = minimodal.Dict.from_name("shared", create_if_missing=True)
    d["k"] = "from the client"
    with objects.app.run(), minimodal.Queue.ephemeral() as q:
        assert objects.dict_by_name.remote("shared", "k") == "from the client"
        assert objects.dict_by_id.remote(d.object_id) == "from the client"
        q.put("one")
        assert objects.queue_by_id.remote(q.object_id) == "one"
        assert objects.wait_empty.remote(q) == "empty"
        with pytest.raises(NotFoundError):
            objects.dict_by_name.remote("no-such-dict", "k")


def test_another_user_cannot_read_list_or_write_them(user: str, stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    d = minimodal.Dict.from_name("private", create_if_missing=True)
    d["k"] = "secret value"
    q = minimodal.Queue.from_name("private-q", create_if_missing=True)
    q.put("secret item")
    dict_id, queue_id = d.object_id, q.object_id

    monkeypatch.setenv("MINIMODAL_TOKEN", stack.new_user("objects-intruder"))
    for attempt in (
        lambda: minimodal.Dict.from_id(dict_id).get("k"),
        lambda: minimodal.Dict.from_id(dict_id).put("k", "overwritten"),
        lambda: minimodal.Queue.from_id(queue_id).get(block=False),
        lambda: minimodal.Queue.from_id(queue_id).put("x"),
        lambda: minimodal.Dict.from_name("private").get("k"),
    ):
        with pytest.raises(NotFoundError):
            attempt()
    reply = requests.post(
        stack.url + "/v1/objects",
        json={"kind": "dict", "op": "items", "id": dict_id},
        headers={"Authorization": f"Bearer {stack.env.get('MINIMODAL_TOKEN') or _token()}"},
        timeout=10,
    )
    assert reply.status_code == 404 and "secret" not in reply.text
    assert minimodal.Dict._names() == []  # the intruder's list is its own
    # From inside the intruder's function, through the runner channel: refused too.
    with objects.app.run():
        with pytest.raises(NotFoundError):
            objects.dict_by_id.remote(dict_id)
        with pytest.raises(NotFoundError):
            objects.queue_by_id.remote(queue_id)
    # A same-named object of the intruder is a different one.
    assert minimodal.Dict.from_name("private", create_if_missing=True).get("k") is None

    monkeypatch.setenv("MINIMODAL_TOKEN", user)
    assert d["k"] == "secret value" and q.get() == "secret item"


def _token() -> str:
    import os

    return os.environ["MINIMODAL_TOKEN"]


@pytest.mark.docker
def test_functions_in_containers_use_dict_and_queue_through_their_runner(docker_user: str) -> None:
    with objects.app.run(), minimodal.Queue.ephemeral() as q, minimodal.Dict.ephemeral() as d:
        consumer = objects.consume.spawn(q)
        assert objects.produce.remote(q, 300, 1) == 300
        assert sorted(consumer.get(timeout=120)) == list(range(300))
        assert sum(objects.increment.map([d] * 10)) >= 10
        assert d["count"] == 10
