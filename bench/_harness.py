"""Shared pieces of the benchmarks: a throwaway local stack, percentile reports, progress lines, the machine."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import subprocess
import tempfile
import time
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


# ---- progress and provenance ----------------------------------------------------------------------

_STARTED = time.monotonic()


def say(section: str, message: str) -> None:
    """One progress line on stdout, flushed at once (a run takes many minutes; a file sees it as it goes)."""
    elapsed = time.monotonic() - _STARTED
    print(f"[{elapsed:7.1f}s] {section}: {message}", flush=True)


class Progress:
    """A running count for a long loop, printed at most every ``every`` seconds and at the end."""

    def __init__(self, section: str, what: str, total: int, every: float = 5.0) -> None:
        self.section, self.what, self.total, self.every = section, what, total, every
        self.done = 0
        self.began = self._last = time.monotonic()

    def add(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= self.every or self.done >= self.total:
            self._last = now
            rate = self.done / max(now - self.began, 1e-9)
            say(self.section, f"{self.what}: {self.done:,} of {self.total:,} ({rate:,.0f}/s)")


def _run(*argv: str) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine() -> dict[str, Any]:
    """What the figures were measured on: cores, memory, kernel, Python, Docker, the commit, the load."""
    meminfo = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, value = line.partition(":")
            meminfo[key] = value.strip()
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    root = Path(__file__).resolve().parent.parent
    commit = _run("git", "-C", str(root), "rev-parse", "HEAD")
    dirty = bool(_run("git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"))
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(int(meminfo.get("MemTotal", "0 kB").split()[0]) / 1024**2, 1),
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "docker": _run("docker", "version", "--format", "{{.Server.Version}}") or None,
        "commit": commit + ("-dirty" if dirty else ""),
        "branch": _run("git", "-C", str(root), "rev-parse", "--abbrev-ref", "HEAD"),
        "load_average": list(os.getloadavg()),
    }
