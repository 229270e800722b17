"""Warm `.remote()` round trip and cold start through the whole stack, container and process runtimes.

    .venv/bin/python -m bench.containers [--calls 200] [--cold 10] [--runtimes docker,process]

Warm: `.remote()` of a no-op after one call has warmed its runner, over ``--calls`` calls.
Cold: the first `.remote()` of a function whose code is new (so no runner exists) and whose image is
already built, over ``--cold`` functions. Each runtime gets its own fresh stack (`minimodal up`).
"""

from __future__ import annotations

import argparse
import time

import minimodal
from bench._harness import local_stack, print_summaries, summary_ms, write_results


def _noop_app(n: int) -> tuple[minimodal.App, minimodal.Function]:
    app = minimodal.App(f"bench-{n}")
    namespace: dict[str, object] = {}
    exec(f"def noop(x=None):\n    return {n}", namespace)  # new code each time: a cold runner  # noqa: S102
    return app, app.function(serialized=True)(namespace["noop"])  # type: ignore[arg-type]


def measure(calls: int, cold: int) -> dict[str, dict[str, float]]:
    app, noop = _noop_app(0)
    with app.run():
        noop.remote()
        warm = []
        for _ in range(calls):
            started = time.perf_counter()
            noop.remote()
            warm.append(time.perf_counter() - started)
    cold_starts = []
    for n in range(1, cold + 1):
        app, fn = _noop_app(n)
        with app.run():
            started = time.perf_counter()
            assert fn.remote() == n
            cold_starts.append(time.perf_counter() - started)
    return {"warm_remote": summary_ms(warm), "cold_start": summary_ms(cold_starts)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--cold", type=int, default=10)
    parser.add_argument("--runtimes", default="docker,process")
    args = parser.parse_args()
    results = {}
    for runtime in args.runtimes.split(","):
        with local_stack(runtime):
            results[runtime] = measure(args.calls, args.cold)
    print_summaries(results)
    print("written to", write_results("containers", results))


if __name__ == "__main__":
    main()
