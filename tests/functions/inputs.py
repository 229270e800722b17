"""Functions that take several inputs at once: @minimodal.concurrent and @minimodal.batched.

Each records what the tests check from inside: when an input started and ended, in which process and
thread, and which batch it was part of.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

import minimodal

app = minimodal.App("tests-inputs")


def _span(i: int, start: float) -> dict[str, Any]:
    return {"i": i, "start": start, "end": time.time(), "pid": os.getpid(), "thread": threading.get_ident()}


@app.function(max_containers=1, scaledown_window=60)
@minimodal.concurrent(max_inputs=4)
def sleepy(i: int) -> dict[str, Any]:
    start = time.time()
    print(f"input {i} starts")
    time.sleep(1)
    return _span(i, start)


@app.function(max_containers=1, scaledown_window=60)
@minimodal.concurrent(max_inputs=4)
async def asleep(i: int) -> dict[str, Any]:
    start = time.time()
    await asyncio.sleep(1)
    return _span(i, start)


@app.function()
@minimodal.batched(max_batch_size=4, wait_ms=500)
def double(xs: list[int]) -> list[tuple[int, list[int]]]:
    return [(x * 2, xs) for x in xs]


@app.function()
@minimodal.batched(max_batch_size=8, wait_ms=2000)
def grouped(xs: list[int]) -> list[list[int]]:
    return [xs for _ in xs]


@app.function()
@minimodal.batched(max_batch_size=2, wait_ms=5000)
def refuses_negatives(xs: list[int]) -> list[int]:
    if any(x < 0 for x in xs):
        raise ValueError(f"bad batch {sorted(xs)}")
    return xs


@app.function()
@minimodal.batched(max_batch_size=4, wait_ms=100)
def too_short(xs: list[int]) -> list[int]:
    return xs[:-1]


ENTERED = 0


@app.cls(max_containers=1, scaledown_window=60)
@minimodal.concurrent(max_inputs=3)
class Shared:
    @minimodal.enter()
    def load(self) -> None:
        global ENTERED
        time.sleep(0.5)  # inputs that come meanwhile wait for it: the hook runs once
        ENTERED += 1

    @minimodal.method()
    def work(self, i: int) -> dict[str, Any]:
        start = time.time()
        time.sleep(1)
        return {**_span(i, start), "entered": ENTERED}


@app.cls()
class Embedder:
    prefix: str = minimodal.parameter(default="v")

    @minimodal.method()
    @minimodal.batched(max_batch_size=4, wait_ms=500)
    def embed(self, xs: list[int]) -> list[tuple[str, list[int]]]:
        return [(f"{self.prefix}{x}", xs) for x in xs]


@app.cls()
class Tally:
    """Its only remote method is @batched, without @method(): remote all the same, as in Modal."""

    @minimodal.enter()
    def start(self) -> None:
        self.base = 1000

    @minimodal.batched(max_batch_size=4, wait_ms=300)
    def add(self, xs: list[int]) -> list[tuple[int, int]]:
        return [(self.base + x, len(xs)) for x in xs]


@app.function(timeout=2, scaledown_window=60)
@minimodal.concurrent(max_inputs=2)
def maybe_stuck(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@app.function()
@minimodal.batched(max_batch_size=1, wait_ms=0)
def one_at_a_time(xs: list[int]) -> list[list[int]]:
    return [xs]
