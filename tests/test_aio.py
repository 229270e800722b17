"""``.aio`` forms need no shared thread pool (issue 17): many waiting calls in one event loop all complete."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

import minimodal
from minimodal.exception import NotFoundError
from tests.functions import basic


class _NoSharedPool(concurrent.futures.ThreadPoolExecutor):
    """A loop's default executor that refuses work: whatever uses ``asyncio.to_thread`` fails loudly."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        raise AssertionError(f"{fn!r} went to the event loop's shared thread pool")


def _run_without_pool(main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    async def wrapped() -> Any:
        asyncio.get_running_loop().set_default_executor(_NoSharedPool())
        return await main()

    return asyncio.run(wrapped())


def test_two_hundred_consumers_blocked_in_get_aio_and_a_producer_in_one_loop_all_complete(user: str) -> None:
    async def main() -> list[int]:
        async with minimodal.Queue.ephemeral() as q:
            consumers = [asyncio.create_task(q.get.aio(timeout=60)) for _ in range(200)]
            await asyncio.sleep(0.5)  # let them all block on the server first
            await q.put_many.aio(list(range(200)))
            got = await asyncio.gather(*consumers)
            assert await q.len.aio() == 0
            return sorted(got)

    assert _run_without_pool(main) == list(range(200))


@pytest.mark.timeout(300)
def test_five_hundred_concurrent_remote_aio_calls_in_one_loop_all_complete(user: str) -> None:
    async def main() -> list[int]:
        return await asyncio.gather(*(basic.square.remote.aio(i) for i in range(500)))

    with basic.app.run():
        assert _run_without_pool(main) == [i * i for i in range(500)]


def test_dict_queue_and_call_aio_forms_answer_and_raise_as_the_blocking_ones(user: str) -> None:
    async def main() -> None:
        async with minimodal.Dict.ephemeral() as d:
            assert await d.put.aio("a", 1) is True
            assert await d.put.aio("a", 2, skip_if_exists=True) is False
            await d.update.aio({"b": 2})
            assert await d.get.aio("a") == 1 and await d.contains.aio("b") and await d.len.aio() == 2
            assert sorted([k async for k in d.keys.aio()]) == ["a", "b"]
            assert sorted([kv async for kv in d.items.aio()]) == [("a", 1), ("b", 2)]
            assert await d.pop.aio("a") == 1
            with pytest.raises(KeyError):
                await d.pop.aio("a")
        with pytest.raises(NotFoundError):
            await minimodal.Dict.from_name("no-such-dict").get.aio("x")
        fc = await basic.square.spawn.aio(7)
        assert await fc.get.aio(timeout=60) == 49
        with pytest.raises(basic.CustomError):
            await basic.raise_custom.remote.aio("boom")
        assert [x async for x in basic.square.map.aio(range(5))] == [0, 1, 4, 9, 16]  # a thread of its own

    with basic.app.run():
        _run_without_pool(main)
