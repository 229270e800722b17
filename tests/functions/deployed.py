"""Apps the deploy tests deploy: one app under two versions of the same function, to redeploy."""

from __future__ import annotations

import time

import minimodal

app = minimodal.App("tests-deployed")


@app.function()
def double(x: int) -> int:
    return 2 * x


@app.function()
def count_up(n: int):  # type: ignore[no-untyped-def]
    yield from range(n)


v1 = minimodal.App("tests-versioned")
v2 = minimodal.App("tests-versioned")


@v1.function(name="which")
def which_v1(delay: float) -> str:
    time.sleep(delay)
    return "v1"


@v2.function(name="which")
def which_v2(delay: float) -> str:
    time.sleep(delay)
    return "v2"
