"""Shared pieces of the benchmarks: a throwaway local stack and percentile reports."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
HOMES: list[Path] = []  # every stack home this process started, so a caller can check nothing outlived it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary_ms(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {"n": len(ms), "p50_ms": round(percentile(ms, 0.5), 2), "p99_ms": round(percentile(ms, 0.99), 2)}


@contextlib.contextmanager
def local_stack(runtime: str, **settings: str) -> Iterator[Path]:
    """`minimodal up --detach` in a fresh home on free ports (its own Redis); `down` afterwards."""
    from mm_app.stack import Stack

    # The per-token call rate limit (100/s by default) would measure the limiter, not the path: raise it
    # out of reach. Its check still runs on every submission, so its cost stays in the figures.
    settings.setdefault("call_rate_limit", "1000000")
    with tempfile.TemporaryDirectory(prefix="mm-bench-") as tmp:
        home = Path(tmp)
        HOMES.append(home)
        env = {
            "MINIMODAL_HOME": str(home),
            "MINIMODAL_API_PORT": str(free_port()),
            "MINIMODAL_LOCAL_REDIS_PORT": str(free_port()),
            "MINIMODAL_FLOWER_PORT": str(free_port()),
            "MINIMODAL_WORKER_RUNTIME": runtime,
            **{f"MINIMODAL_{k.upper()}": v for k, v in settings.items()},
        }
        saved = {k: os.environ.get(k) for k in [*env, "MINIMODAL_TOKEN", "MINIMODAL_SERVER_URL", "MINIMODAL_REDIS_URL"]}
        for k in ("MINIMODAL_TOKEN", "MINIMODAL_SERVER_URL", "MINIMODAL_REDIS_URL"):
            os.environ.pop(k, None)
        os.environ.update(env)
        stack = Stack(home)
        try:
            with contextlib.redirect_stdout(open(os.devnull, "w")):  # noqa: SIM115
                stack.up(detach=True)
            yield home
        finally:
            with contextlib.redirect_stdout(open(os.devnull, "w")):  # noqa: SIM115
                stack.down()
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def write_results(name: str, results: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    return path
