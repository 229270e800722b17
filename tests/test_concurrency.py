"""@minimodal.concurrent and @minimodal.batched on the real process stack (Redis, Celery, runner processes)."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
import requests

import minimodal
from minimodal import protocol
from minimodal.exception import FunctionTimeoutError, InvalidError
from tests.conftest import Stack
from tests.functions import inputs

ROOT = Path(__file__).resolve().parent.parent


def _most_at_once(spans: list[dict[str, Any]]) -> int:
    """The most intervals that contain one instant (the start of one of them), from the functions' clocks."""
    return max(sum(1 for o in spans if o["start"] <= s["start"] < o["end"]) for s in spans)


def test_four_concurrent_inputs_share_one_runner_process(user: str) -> None:
    with inputs.app.run(), ThreadPoolExecutor(8) as threads:
        spans = list(threads.map(inputs.sleepy.remote, range(8)))
    assert sorted(s["i"] for s in spans) == list(range(8))
    assert len({s["pid"] for s in spans}) == 1, "the inputs ran in more than one runner"
    assert len({s["thread"] for s in spans}) > 1, "a sync function's inputs run in threads"
    assert _most_at_once(spans) == 4, "max_inputs=4 with max_containers=1: four inputs at once, never more"


def test_what_a_concurrent_input_prints_goes_to_its_own_call(stack: Stack, user: str) -> None:
    with inputs.app.run():
        calls = [inputs.sleepy.spawn(i) for i in range(4)]
        spans = [fc.get() for fc in calls]
    assert _most_at_once(spans) >= 2 and len({s["pid"] for s in spans}) == 1
    env = {**stack.env, "MINIMODAL_TOKEN": user}
    for i, fc in enumerate(calls):
        logs = subprocess.run(
            [sys.executable, "-m", "minimodal", "logs", fc.object_id],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert logs.stdout == f"input {i} starts\n"


def test_an_async_function_runs_its_inputs_as_tasks_of_one_event_loop(user: str) -> None:
    with inputs.app.run():
        spans = list(inputs.asleep.map(range(8)))
    assert [s["i"] for s in spans] == list(range(8))
    assert len({s["pid"] for s in spans}) == 1
    assert len({s["thread"] for s in spans}) == 1, "coroutines run on the runner's one event loop thread"
    assert 2 <= _most_at_once(spans) <= 4


def test_a_concurrent_class_runs_its_enter_hook_once(user: str) -> None:
    with inputs.app.run(), ThreadPoolExecutor(6) as threads:
        spans = list(threads.map(inputs.Shared().work.remote, range(6)))
    assert {s["entered"] for s in spans} == {1}
    assert len({s["pid"] for s in spans}) == 1
    assert 2 <= _most_at_once(spans) <= 3


def test_a_batched_map_sees_batches_of_at_most_four_whose_union_is_the_inputs(user: str) -> None:
    with inputs.app.run():
        results = list(inputs.double.map(range(10)))
    assert [r[0] for r in results] == [2 * i for i in range(10)], "each input gets its own element, in order"
    batches = {tuple(r[1]) for r in results}
    assert all(1 <= len(b) <= 4 for b in batches)
    assert sorted(x for b in batches for x in b) == list(range(10)), "every input in exactly one batch"


def test_concurrent_remote_calls_are_grouped_into_one_batch(user: str) -> None:
    with inputs.app.run(), ThreadPoolExecutor(6) as threads:
        batches = list(threads.map(inputs.grouped.remote, range(6)))
    assert all(i in batch for i, batch in enumerate(batches))
    assert max(len(b) for b in batches) > 1, "calls within wait_ms of each other share a batch"


def test_a_batched_class_method(user: str) -> None:
    with inputs.app.run():
        results = list(inputs.Embedder(prefix="e").embed.map(range(6)))
    assert [r[0] for r in results] == [f"e{i}" for i in range(6)]
    assert all(len(r[1]) <= 4 for r in results)


def test_a_class_whose_only_remote_method_is_batched_takes_remote_and_map(user: str) -> None:
    with inputs.app.run():
        assert inputs.Tally().add.remote(1) == (1001, 1)
        results = list(inputs.Tally().add.map(range(6)))
    assert [r[0] for r in results] == [1000 + i for i in range(6)]
    assert all(1 <= size <= 4 for _, size in results)


def test_an_exception_fails_every_input_of_its_batch(user: str) -> None:
    def call(x: int) -> Any:
        try:
            return inputs.refuses_negatives.remote(x)
        except ValueError as exc:
            return exc

    with inputs.app.run(), ThreadPoolExecutor(2) as threads:
        results = list(threads.map(call, [1, -1]))
    assert all(isinstance(r, ValueError) for r in results), results
    assert {str(r) for r in results} == {"bad batch [-1, 1]"}


def test_a_wrong_length_return_is_a_clear_error(user: str) -> None:
    with inputs.app.run():
        with pytest.raises(InvalidError, match="returned a list of 0 for a batch of 1 inputs"):
            inputs.too_short.remote(1)
        assert inputs.one_at_a_time.remote(5) == [5], "a batch of one is still a list"


def test_a_concurrent_input_past_its_timeout_fails_and_the_function_keeps_working(user: str) -> None:
    with inputs.app.run():
        with pytest.raises(FunctionTimeoutError, match="timeout of 2 s"):
            inputs.maybe_stuck.remote(30)
        assert inputs.maybe_stuck.remote(0.1) == 0.1  # a fresh runner


def test_decorator_errors() -> None:
    with pytest.raises(InvalidError, match="generator"):

        @minimodal.batched(max_batch_size=2, wait_ms=10)
        def gen(xs: list[int]):  # type: ignore[no-untyped-def]
            yield xs

    with pytest.raises(InvalidError, match="default arguments"):

        @minimodal.batched(max_batch_size=2, wait_ms=10)
        def defaults(xs: list[int], scale: int = 2) -> list[int]:
            return xs

    with pytest.raises(InvalidError, match="max_batch_size"):
        minimodal.batched(max_batch_size=0, wait_ms=10)
    with pytest.raises(InvalidError, match="max_inputs"):
        minimodal.concurrent(max_inputs=0)
    app = minimodal.App("tests-inputs-bad")
    with pytest.raises(InvalidError, match="cannot be combined"):

        @app.function(serialized=True)
        @minimodal.concurrent(max_inputs=2)
        @minimodal.batched(max_batch_size=2, wait_ms=10)
        def both(xs: list[int]) -> list[int]:
            return xs

    with pytest.raises(InvalidError, match="on the class"):

        @app.cls(serialized=True)
        class OnMethod:
            @minimodal.method()
            @minimodal.concurrent(max_inputs=2)
            def run(self) -> None: ...

    with pytest.raises(InvalidError, match="no other method"):

        @app.cls(serialized=True)
        class TwoMethods:
            @minimodal.method()
            @minimodal.batched(max_batch_size=2, wait_ms=10)
            def run(self, xs: list[int]) -> list[int]:
                return xs

            @minimodal.method()
            def other(self) -> None: ...


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"concurrent_inputs": 5000}, "concurrent_inputs must be at most 1000"),
        ({"batch_max_size": 0}, "batch_max_size must be positive"),
        ({"batch_max_size": 2, "batch_wait_ms": -1}, "batch_wait_ms must be 0 or more"),
    ],
)
def test_the_api_refuses_bad_input_options(stack: Stack, user: str, options: dict[str, int], fragment: str) -> None:
    reply = requests.post(
        f"{stack.url}/v1/apps",
        json={"functions": [{"tag": "f", "code": protocol.b64(cloudpickle.dumps(len)), "options": options}]},
        headers={"Authorization": f"Bearer {user}"},
        timeout=10,
    )
    assert reply.status_code == 400
    assert fragment in reply.json()["error"]["message"]
