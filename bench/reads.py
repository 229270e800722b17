"""Requests/s of ``GET /v1/calls/{id}`` (a call's status) with many clients at once: what the API serves.

The clients are threads spread over a few processes (one Python process's GIL would measure the
client, not the server), each with its own keep-alive connection, for a fixed time.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from typing import Any

import requests


def _client_process(url: str, token: str, threads: int, seconds: float, out: Any) -> None:
    counts = [0] * threads
    errors = [0] * threads
    deadline = time.monotonic() + seconds

    def run(i: int) -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"
        while time.monotonic() < deadline:
            try:
                ok = session.get(url, timeout=30).status_code == 200
            except requests.RequestException:
                ok = False
            if ok:
                counts[i] += 1
            else:
                errors[i] += 1
        session.close()

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    out.put((sum(counts), sum(errors)))


def measure(server_url: str, token: str, call_id: str, *, clients: int = 64, seconds: float = 10) -> dict[str, Any]:
    """``clients`` concurrent clients reading one call's status for ``seconds``."""
    url = f"{server_url}/v1/calls/{call_id}"
    processes = min(4, clients)
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    began = time.perf_counter()
    children = [
        context.Process(target=_client_process, args=(url, token, clients // processes, seconds, out))
        for _ in range(processes)
    ]
    for child in children:
        child.start()
    replies = [out.get(timeout=seconds + 120) for _ in children]
    for child in children:
        child.join()
    elapsed = time.perf_counter() - began
    done, failed = sum(r[0] for r in replies), sum(r[1] for r in replies)
    return {
        "clients": clients,
        "seconds": round(elapsed, 2),
        "requests": done,
        "errors": failed,
        "per_second": round(done / elapsed, 1),
    }
