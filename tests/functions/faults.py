"""Functions that fail on purpose, for the fault-tolerance tests."""

from __future__ import annotations

import os
import time

import minimodal

app = minimodal.App("tests-faults")


def _bump(path: str) -> int:
    """Count this attempt in a file shared by the test and the runner (same machine, process runtime)."""
    count = int(open(path).read()) + 1 if os.path.exists(path) else 1
    with open(path, "w") as f:
        f.write(str(count))
    return count


@app.function(retries=minimodal.Retries(max_retries=3, backoff_coefficient=2.0, initial_delay=0.5))
def flaky(counter: str, failures: int) -> str:
    attempt = _bump(counter)
    if attempt <= failures:
        raise RuntimeError(f"attempt {attempt} fails")
    return f"ok on attempt {attempt}"


@app.function(retries=minimodal.Retries(max_retries=2, backoff_coefficient=1.0, initial_delay=0.2))
def unless_flag(flag: str, counter: str) -> str:
    _bump(counter)
    if not os.path.exists(flag):
        raise ValueError("the flag file is missing")
    return "ran with the flag"


@app.function(retries=1, timeout=1)
def too_slow(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@app.function()
def fails_once_without_retries() -> None:
    raise ValueError("no retries here")


@app.function(retries=minimodal.Retries(max_retries=1, initial_delay=6.0))
def fails_first_then_waits(counter: str) -> str:
    if _bump(counter) == 1:
        raise RuntimeError("the first attempt fails")
    return "ok"
