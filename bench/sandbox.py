"""Sandboxes through the whole stack: create-to-first-output and exec round trip, per container runtime.

    .venv/bin/python -m bench.sandbox [--creates 10] [--execs 50] [--runtimes runc,runsc]

Create-to-first-output: from ``Sandbox.create("echo", "ready")`` to its first line on ``sb.stdout``
(the image is built once before). Exec round trip: ``sb.exec("true").wait()`` in a running sandbox, and
``sb.exec("echo", "x").stdout.read()``. Each runtime gets its own fresh stack (`minimodal up`) whose
sandboxes run under it (``MINIMODAL_CONTAINER_RUNTIME``; ``runc`` is Docker's default).
"""

from __future__ import annotations

import argparse
import time

import minimodal
from bench._harness import local_stack, print_summaries, summary_ms, write_results


def measure(creates: int, execs: int) -> dict[str, dict[str, float]]:
    minimodal.Sandbox.create("true", timeout=60).wait()  # builds (or finds) the image, warms the path
    first_output = []
    for _ in range(creates):
        started = time.perf_counter()
        sb = minimodal.Sandbox.create("echo", "ready", timeout=60)
        assert next(iter(sb.stdout)) == "ready\n"
        first_output.append(time.perf_counter() - started)
        sb.wait()
    sb = minimodal.Sandbox.create(timeout=600)
    try:
        sb.exec("true").wait()
        wait, echo = [], []
        for _ in range(execs):
            started = time.perf_counter()
            assert sb.exec("true").wait() == 0
            wait.append(time.perf_counter() - started)
        for _ in range(execs):
            started = time.perf_counter()
            assert sb.exec("echo", "x").stdout.read() == "x\n"
            echo.append(time.perf_counter() - started)
    finally:
        sb.terminate()
    return {
        "create_to_first_output": summary_ms(first_output),
        "exec_wait": summary_ms(wait),
        "exec_echo_read": summary_ms(echo),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--creates", type=int, default=10)
    parser.add_argument("--execs", type=int, default=50)
    parser.add_argument("--runtimes", default="runc,runsc")
    args = parser.parse_args()
    results = {}
    for runtime in args.runtimes.split(","):
        with local_stack("docker", container_runtime="" if runtime == "runc" else runtime):
            results[runtime] = measure(args.creates, args.execs)
    print_summaries(results, 24)
    print("written to", write_results("sandbox", results))


if __name__ == "__main__":
    main()
