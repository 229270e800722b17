"""@concurrent and @batched functions that run in containers: standard library only."""

from __future__ import annotations

import os
import time
from typing import Any

import minimodal

app = minimodal.App("tests-inputs-docker", image=minimodal.Image.debian_slim())


@app.function(max_containers=1, scaledown_window=60)
@minimodal.concurrent(max_inputs=4)
def sleepy(i: int) -> dict[str, Any]:
    start = time.time()
    time.sleep(1)
    return {"i": i, "start": start, "end": time.time(), "host": os.uname().nodename}


@app.function(scaledown_window=60)
@minimodal.batched(max_batch_size=4, wait_ms=1000)
def double(xs: list[int]) -> list[tuple[int, list[int], bool]]:
    return [(2 * x, xs, os.path.exists("/.dockerenv")) for x in xs]
