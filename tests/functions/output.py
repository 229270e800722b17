"""Functions that print: many at once, a progress bar, a spawned call (issue 17, output that reads right)."""

from __future__ import annotations

import sys
import time

import minimodal

app = minimodal.App("tests-output")


@app.function(max_containers=1)
@minimodal.concurrent(max_inputs=100)
def hello(i: int) -> int:
    time.sleep(0.2)  # the inputs of one runner print at about the same moment, each in its own thread
    print("hello", i)  # two writes: the text, then "\n"
    return i


@app.function()
def bar(queue_name: str) -> str:
    """A tqdm-style bar: each redraw is "\\r" and the line, without a newline until the end."""
    go = minimodal.Queue.from_name(queue_name)
    sys.stdout.write("\rprogress 50%")
    sys.stdout.flush()
    go.get(timeout=60)  # the client has seen the half-drawn bar
    sys.stdout.write("\rprogress 100%\n")
    return "drawn"


@app.function()
def ticker(queue_name: str) -> str:
    print("spawned tick 0")
    minimodal.Queue.from_name(queue_name).get(timeout=60)  # the test has seen the tick while the app runs
    print("spawned tick 1")
    return "ticked"


@app.local_entrypoint()
def main(queue: str) -> None:
    fc = ticker.spawn(queue)
    assert fc.get() == "ticked"
    print("entrypoint done")
