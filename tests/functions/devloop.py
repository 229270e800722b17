"""Functions the dev-loop tests run: a web endpoint of an ephemeral app, slow calls to cancel or detach."""

from __future__ import annotations

import time
from typing import Any

import minimodal

app = minimodal.App("tests-devloop")


@app.function()
@minimodal.fastapi_endpoint()
def hello(name: str = "world") -> dict[str, Any]:
    return {"hello": name}


@app.function()
def slow(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@app.function()
def mark(key: str, seconds: float) -> str:
    time.sleep(seconds)
    minimodal.Dict.from_name("devloop-marks", create_if_missing=True)[key] = time.time()
    return key


@app.local_entrypoint()
def spawn_and_leave(key: str = "detached", seconds: float = 3.0) -> None:
    fc = mark.spawn(key, seconds)
    print("SPAWNED", fc.object_id, flush=True)


@app.local_entrypoint()
def spawn_and_wait(seconds: float = 60.0) -> None:
    fc = slow.spawn(seconds)
    print("SPAWNED", fc.object_id, flush=True)
    time.sleep(seconds)


@app.function()
def pid() -> int:
    import os

    return os.getpid()
