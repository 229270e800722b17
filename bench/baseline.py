"""The baseline: a bare Celery app and worker on the same Redis, with no MiniModal in the path.

    .venv/bin/python -m bench.baseline [--calls 500] [--tasks 5000] [--concurrency 2]

The worker is the same kind MiniModal runs (threads pool, the same number of threads, acks_late,
JSON), so the figures of the run are the floor MiniModal is compared with: ``delay().get()`` round
trips one at a time, and the throughput of many no-op tasks sent at once (each task one message).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from celery import Celery
from redis import Redis

from bench._harness import summary_ms

QUEUE = "bench.baseline"
ROOT = Path(__file__).resolve().parent.parent


def make_app(broker: str) -> Celery:
    app = Celery("bench-baseline", broker=broker, backend=broker)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_acks_late=True,
        task_default_queue=QUEUE,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
        result_expires=3600,
    )

    @app.task(name="bench.noop")
    def noop(x: Any = None) -> Any:
        return x

    @app.task(name="bench.count", ignore_result=True)
    def count(key: str) -> None:
        app.backend.client.incr(key)  # type: ignore[attr-defined]

    return app


# The worker process imports this module: the broker comes from the environment.
app = make_app(os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/15"))


@contextlib.contextmanager
def worker(broker: str, concurrency: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A bare Celery worker (threads pool, ``concurrency`` threads) on ``broker``; stopped on exit."""
    env = {**os.environ, "BENCH_BROKER_URL": broker}
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "bench.baseline", "worker", "-P", "threads",
             "-c", str(concurrency), "-Q", QUEUE, "--prefetch-multiplier", "2", "-l", "WARNING",
             "--without-gossip", "--without-mingle", "-n", f"bench-baseline-{os.getpid()}@%h"],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True,
        )  # fmt: skip
    try:
        client = make_app(broker)
        deadline = time.monotonic() + 60
        while True:  # ready once it answers a task
            try:
                client.tasks["bench.noop"].delay(0).get(timeout=2)
                break
            except Exception:  # noqa: BLE001 - not up yet
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the baseline Celery worker did not start; see {log}") from None
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def measure(broker: str, calls: int, tasks: int) -> dict[str, Any]:
    """Round trips of ``delay().get()`` one at a time, then ``tasks`` no-ops sent at once until all ran."""
    app = make_app(broker)
    noop = app.tasks["bench.noop"]
    for i in range(20):  # warm connections
        noop.delay(i).get(timeout=30)
    trips = []
    for i in range(calls):
        began = time.perf_counter()
        noop.delay(i).get(timeout=60)
        trips.append(time.perf_counter() - began)
    return {
        "round_trip": summary_ms(trips),
        "throughput": throughput(broker, tasks),
        "throughput_no_results": throughput_no_results(app, broker, tasks),
    }


def throughput(broker: str, tasks: int) -> dict[str, float]:
    """``tasks`` no-op tasks sent at once, then every result collected: what a hand-written fan-out does.

    The sender has no result backend of its own (the Redis backend would subscribe to one channel per
    task); it reads the results the worker stored with MGET, as they come.
    """
    app = make_app(broker)
    app.conf.result_backend = None
    noop = app.tasks["bench.noop"]
    redis = Redis.from_url(broker)
    began = time.perf_counter()
    with app.producer_or_acquire() as producer:
        ids = [noop.apply_async((i,), producer=producer).id for i in range(tasks)]
    sent = time.perf_counter() - began
    values: dict[int, object] = {}
    waiting = list(range(tasks))
    while waiting:
        left = []
        for chunk in range(0, len(waiting), 1000):
            part = waiting[chunk : chunk + 1000]
            for i, raw in zip(part, redis.mget([f"celery-task-meta-{ids[i]}" for i in part]), strict=True):
                if raw is None:
                    left.append(i)
                else:
                    values[i] = json.loads(raw)["result"]
        waiting = left
        if waiting:
            time.sleep(0.005)
    elapsed = time.perf_counter() - began
    for chunk in range(0, len(ids), 1000):
        redis.delete(*[f"celery-task-meta-{i}" for i in ids[chunk : chunk + 1000]])
    redis.close()
    assert [values[i] for i in range(tasks)] == list(range(tasks))
    return {"tasks": tasks, "seconds": round(elapsed, 3), "send_seconds": round(sent, 3),
            "per_second": round(tasks / elapsed, 1)}  # fmt: skip


def throughput_no_results(app: Celery, broker: str, tasks: int) -> dict[str, float]:
    """The same without a result backend: each task bumps a counter; done when it reaches ``tasks``."""
    count = app.tasks["bench.count"]
    redis = Redis.from_url(broker)
    key = f"bench:count:{os.getpid()}:{time.time()}"
    began = time.perf_counter()
    with app.producer_or_acquire() as producer:
        for _ in range(tasks):
            count.apply_async((key,), producer=producer)
    sent = time.perf_counter() - began
    while int(redis.get(key) or 0) < tasks:
        time.sleep(0.01)
    elapsed = time.perf_counter() - began
    redis.delete(key)
    redis.close()
    return {"tasks": tasks, "seconds": round(elapsed, 3), "send_seconds": round(sent, 3),
            "per_second": round(tasks / elapsed, 1)}  # fmt: skip


def main() -> None:
    from bench._harness import local_stack
    from minimodal import config

    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    with local_stack("process", worker_concurrency=str(args.concurrency)) as home:
        broker = config.read_profile()["redis_url"].rsplit("/", 1)[0] + "/1"
        with worker(broker, args.concurrency, home / "logs" / "baseline.log"):
            print(measure(broker, args.calls, args.tasks))


if __name__ == "__main__":
    main()
