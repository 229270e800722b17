"""Cold start and warm round trip of the Docker runtime, next to the process runtime.

    .venv/bin/python -m bench.docker_runtime [--cold 10] [--calls 200]

Cold start: ``runtime.start(spec)`` until the runner has loaded the function (container create,
attach, start, ``F`` frame, ``R`` frame). Warm: one ``runner.call`` of a no-op through a started runner.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import cloudpickle
import docker

from workers.runtimes.base import RunnerSpec, Runtime
from workers.runtimes.docker import DockerRuntime
from workers.runtimes.process import ProcessRuntime


def noop() -> None:
    return None


def _spec() -> RunnerSpec:
    return RunnerSpec(key="bench:noop", code=cloudpickle.dumps(noop), timeout=30, scaledown_window=60)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _report(name: str, what: str, seconds: list[float]) -> None:
    ms = [s * 1000 for s in seconds]
    print(
        f"{name:8} {what:11} n={len(ms):4}  p50 {_percentile(ms, 0.5):8.2f} ms  p99 {_percentile(ms, 0.99):8.2f} ms"
        f"  mean {statistics.fmean(ms):8.2f} ms  min {min(ms):8.2f} ms  max {max(ms):8.2f} ms"
    )


def bench(name: str, runtime: Runtime, cold: int, calls: int) -> None:
    spec = _spec()
    starts: list[float] = []
    for _ in range(cold):
        began = time.perf_counter()
        runner = runtime.start(spec)
        starts.append(time.perf_counter() - began)
        runner.stop()
    _report(name, "cold start", starts)

    runner = runtime.start(spec)
    try:
        payload = cloudpickle.dumps(((), {}))
        call: Callable[[int], object] = lambda i: runner.call(payload, call_id="fc-bench", idx=i)  # noqa: E731
        for i in range(10):  # warm up
            call(i)
        trips = []
        for i in range(calls):
            began = time.perf_counter()
            outcome = call(i)
            trips.append(time.perf_counter() - began)
            assert getattr(outcome, "ok", False), outcome
        _report(name, "warm call", trips)
    finally:
        runner.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cold", type=int, default=10, help="runners to start and stop")
    parser.add_argument("--calls", type=int, default=200, help="warm no-op calls through one runner")
    args = parser.parse_args()
    bench("process", ProcessRuntime(), args.cold, args.calls)
    client = docker.from_env()
    try:
        runtime = DockerRuntime(client)
        bench("docker", runtime, args.cold, args.calls)
        runtime.shutdown()
    finally:
        client.close()


if __name__ == "__main__":
    main()
