"""Functions that call functions, imported by name in the runner (the module runs there too)."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

import minimodal
from minimodal import FunctionCall

app = minimodal.App("tests-nested")
IMPORTED_REMOTELY = not minimodal.is_local()  # the module's top level runs in the runner too

with minimodal.Image.debian_slim().imports():
    import json  # an imports() block runs in the container as well


@dataclass
class Point:
    x: int
    y: int


def helper(point: Point) -> int:
    """A module-level helper the functions use: it is there because the module is."""
    return point.x * 10 + point.y


@app.function()
def leaf(x: int) -> int:
    return x * 2


@app.function()
def count(n: int):  # type: ignore[no-untyped-def]
    yield from range(n)


@app.function()
def uses_module(point: Point) -> tuple[Point, bool, str]:
    return Point(helper(point), 0), IMPORTED_REMOTELY, json.dumps(__name__)


@app.function()
def calls_every_way(x: int) -> dict[str, object]:
    spawned = leaf.spawn(x)
    return {
        "remote": leaf.remote(x),
        "spawn": spawned.get(),
        "from_id": FunctionCall.from_id(spawned.object_id).get(),
        "map": list(leaf.map([1, 2, 3])),
        "starmap": list(leaf.starmap([(4,), (5,)])),
        "gather": FunctionCall.gather(leaf.spawn(6), leaf.spawn(7)),
        "remote_gen": list(count.remote_gen(3)),
        "aio": asyncio.run(leaf.remote.aio(8)),
        "spawn_map": leaf.spawn_map([9, 10]),
    }


@app.function()
def generator_calling(n: int):  # type: ignore[no-untyped-def]
    for i in range(n):
        yield leaf.remote(i)


@app.function()
def ids() -> dict[str, str | None]:
    return {
        "call": minimodal.current_function_call_id(),
        "input": minimodal.current_input_id(),
        "task": os.environ.get("MINIMODAL_TASK_ID"),
        "child_call": leaf.spawn(1).object_id,
    }


@app.function()
def by_name(app_name: str, tag: str, x: int) -> int:
    return minimodal.Function.from_name(app_name, tag).remote(x)


@app.function()
def parent(n: int) -> int:
    return sum(leaf.map(range(n)))


@app.cls()
class Caller:
    @minimodal.method()
    def go(self, x: int) -> int:
        return leaf.remote(x) + 1


@app.function(block_network=True)
def offline_caller(x: int) -> int:
    return leaf.remote(x) + 100


@app.function()
def cls_by_name(x: int) -> tuple[int, int]:
    model = minimodal.Cls.from_name("tests-classes", "Model")
    return model(size=2).predict.remote(x), model.with_options(timeout=20)().predict.remote(1)
