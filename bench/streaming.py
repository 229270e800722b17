"""Worker-to-client latency of generator items, and of a printed line.

    .venv/bin/python -m bench.streaming [--items 200] [--runtime process]

A generator yields ``time.time()`` every 20 ms; the client subtracts it from its own clock when the
item arrives (same machine, same clock). The goal on this 2-core machine is a p50 under 20 ms.
"""

from __future__ import annotations

import argparse
import time

import minimodal
from bench._harness import local_stack, summary_ms, write_results

app = minimodal.App("bench-streaming")


@app.function(serialized=True)
def ticks(n: int, pause: float):  # type: ignore[no-untyped-def]
    import time

    for _ in range(n):
        time.sleep(pause)
        yield time.time()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--runtime", default="process")
    args = parser.parse_args()
    with local_stack(args.runtime), app.run():
        list(ticks.remote_gen(3, 0.0))  # warm the runner
        latencies = []
        for produced in ticks.remote_gen(args.items, 0.02):
            latencies.append(time.time() - produced)
    results = {"runtime": args.runtime, "generator_item_latency": summary_ms(latencies)}
    s = results["generator_item_latency"]
    print(
        f"generator item worker->client latency ({args.runtime}): n={s['n']} p50 {s['p50_ms']} ms p99 {s['p99_ms']} ms"
    )
    print("written to", write_results("streaming", results))


if __name__ == "__main__":
    main()
