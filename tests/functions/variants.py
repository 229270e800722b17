"""Functions the with_options tests run: each reports the runner process it ran in."""

from __future__ import annotations

import os
import time

import minimodal

app = minimodal.App("tests-variants")


@app.function(timeout=30, secrets=[minimodal.Secret.from_dict({"MM_VARIANT": "base"})])
def nap(seconds: float) -> tuple[int, str | None]:
    """Sleep, then say which runner process ran it and what the secret said."""
    time.sleep(seconds)
    return os.getpid(), os.environ.get("MM_VARIANT")


@app.function()
def record(results_name: str, key: int) -> None:
    """Put this runner's process id in the named Dict under ``key`` (spawn_map has no results)."""
    minimodal.Dict.from_name(results_name)[key] = os.getpid()


@app.function()
def fan_out(results_name: str) -> tuple[int, str | None]:
    """From inside a function: spawn_map a variant of ``record``, and call a variant of ``nap``."""
    record.with_options(max_containers=2).spawn_map([results_name] * 3, range(3))
    return nap.with_options(timeout=5).remote(0)
