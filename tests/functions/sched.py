"""Functions the scheduler tests run: they report when and where they ran, by their own clock."""

from __future__ import annotations

import os
import time

import minimodal


def nap(seconds: float) -> dict[str, object]:
    """Sleep; say when the user code started and ended, and on which worker it ran."""
    start = time.time()
    time.sleep(seconds)
    return {"start": start, "end": time.time(), "worker": os.environ.get("MINIMODAL_WORKER_ID"), "pid": os.getpid()}


app = minimodal.App("tests-sched")


@app.function(cpu=64)
def greedy() -> None:
    """Asks for more cores than any test worker offers."""
