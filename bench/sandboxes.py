"""runc against runsc (gVisor) in the same run: one `minimodal up` stack per container runtime.

    .venv/bin/python -m bench.sandboxes [--quick]

Per runtime: cold start (first call of new code, image cached), warm `.remote()` p50/p99 of a no-op,
`.map` of no-ops in inputs/s, a CPU-bound call (pure Python arithmetic) and a syscall-heavy call (many
small file writes in /tmp: open, write, close, unlink). gVisor costs most where the function makes
system calls, since each is served by its user-space kernel (ptrace platform here).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import minimodal
from bench._harness import local_stack, summary_ms, write_results

RUNTIMES = ("runc", "runsc")
SIZES = {
    "full": {"calls": 200, "cold": 5, "map": 2000, "cpu": 3, "syscalls": 3, "files": 2000, "loops": 2_000_000},
    "quick": {"calls": 5, "cold": 1, "map": 20, "cpu": 1, "syscalls": 1, "files": 50, "loops": 10_000},
}


def _app(n: int) -> tuple[minimodal.App, dict[str, minimodal.Function]]:
    """An app of new code each time (``n`` is in it), so its first call starts a cold runner."""
    app = minimodal.App(f"bench-sandbox-{n}")
    namespace: dict[str, Any] = {}
    source = (
        f"def noop(x=None):\n    return {n} if x is None else x\n"
        "def cpu(loops):\n    total = 0\n    for i in range(loops):\n        total += i * i\n    return total\n"
        "def syscalls(files):\n    import os\n    for i in range(files):\n"
        "        path = f'/tmp/f{i}'\n        with open(path, 'w') as f:\n            f.write('x' * 64)\n"
        "        os.unlink(path)\n    return files\n"
    )
    exec(source, namespace)  # noqa: S102
    image = minimodal.Image.debian_slim()
    functions = {
        name: app.function(serialized=True, image=image, name=name)(namespace[name])
        for name in ("noop", "cpu", "syscalls")
    }
    return app, functions


def _timed(fn: Any, *args: Any) -> float:
    started = time.perf_counter()
    fn.remote(*args)
    return time.perf_counter() - started


def measure_one(size: dict[str, int]) -> dict[str, Any]:
    app, fns = _app(0)
    with app.run():
        fns["noop"].remote()
        warm = [_timed(fns["noop"]) for _ in range(size["calls"])]
        started = time.perf_counter()
        assert sum(1 for _ in fns["noop"].map(range(size["map"]))) == size["map"]
        map_seconds = time.perf_counter() - started
        fns["cpu"].remote(10)  # warm its runner: the figures below are the calls, not a container start
        fns["syscalls"].remote(1)
        cpu = [_timed(fns["cpu"], size["loops"]) for _ in range(size["cpu"])]
        syscalls = [_timed(fns["syscalls"], size["files"]) for _ in range(size["syscalls"])]
    cold = []
    for n in range(1, size["cold"] + 1):
        app, fns = _app(n)
        with app.run():
            cold.append(_timed(fns["noop"]))
    return {
        "cold_start": summary_ms(cold),
        "warm_remote": summary_ms(warm),
        "map": {
            "inputs": size["map"],
            "seconds": round(map_seconds, 3),
            "per_second": round(size["map"] / map_seconds, 1),
        },
        "cpu_call": {**summary_ms(cpu), "loops": size["loops"]},
        "syscall_call": {**summary_ms(syscalls), "files": size["files"]},
    }


def registered() -> set[str]:
    from workers.runtimes import docker_client

    client = docker_client()
    if client is None:
        return set()
    try:
        engine = set(client.info().get("Runtimes") or {})
    finally:
        client.close()
    return {"runc"} | ({"runsc"} if {"runsc", "runsc-net"} <= engine else set())


def measure(quick: bool = False) -> dict[str, Any]:
    """Figures per container runtime; a runtime the engine lacks is listed under ``skipped``."""
    size = SIZES["quick" if quick else "full"]
    available = registered()
    results: dict[str, Any] = {}
    for runtime in RUNTIMES:
        if runtime not in available:
            results.setdefault("skipped", []).append(f"{runtime}: not registered in the engine (make docker-base)")
            continue
        with local_stack("docker", container_runtime=runtime):
            results[runtime] = measure_one(size)
    return results


def print_table(results: dict[str, Any]) -> None:
    runtimes = [r for r in RUNTIMES if r in results]
    if not runtimes:
        return
    print("\n== container runtimes (ms unless said)")
    print(
        f"{'what':30} "
        + " ".join(f"{r:>18}" for r in runtimes)
        + (f" {'runsc / runc':>13}" if len(runtimes) == 2 else "")
    )
    rows = [
        ("cold start p50", "cold_start", "p50_ms"),
        ("warm .remote() p50", "warm_remote", "p50_ms"),
        ("warm .remote() p99", "warm_remote", "p99_ms"),
        (".map inputs/s", "map", "per_second"),
        ("CPU-bound call p50", "cpu_call", "p50_ms"),
        ("syscall-heavy call p50", "syscall_call", "p50_ms"),
    ]
    for label, group, key in rows:
        values = [results[r][group][key] for r in runtimes]
        ratio = f" {values[1] / values[0]:12.2f}x" if len(values) == 2 and values[0] else ""
        print(f"{label:30} " + " ".join(f"{v:18.1f}" for v in values) + ratio)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    results = measure(args.quick)
    print_table(results)
    print("written to", write_results("sandboxes", results))


if __name__ == "__main__":
    main()
