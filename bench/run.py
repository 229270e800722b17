"""`make bench`: every figure of the suite in one run, each next to a bare-Celery baseline of the same run.

    .venv/bin/python -m bench [--quick] [--runtimes process,docker] [--only baseline,remote,map,cold,...,sandboxes]

The machine is shared, so absolute times drift between runs; the ratios are taken within one run.
It starts everything it needs on free ports (a `minimodal up` stack per runtime with its own Redis, a
bare Celery worker with as many threads as MiniModal's worker on that same Redis) and stops it all,
containers included, at the end or on Ctrl-C / SIGTERM. Results are printed as tables and written to
bench/results/latest.json (``--quick``: bench/results/quick.json).

1. baseline: bare Celery ``delay().get()`` round trip, and throughput of many no-op tasks sent at once.
2. remote: warm `.remote()` of a no-op through the whole path, per runtime; ratio to the baseline trip.
3. map: `.map` of many no-op inputs, twice, then one ten times as large; inputs/s, time to the first
   result, and ratio to the baseline throughput.
4. cold: first call of a new function whose image is cached, per runtime.
5. payloads: `.remote()` round trip with 1 KiB, 1 MiB and 64 MiB arguments.
6. fairness: proportional shares, a newcomer's wait behind a backlog, 100 users against 1 (bench.fairness).
7. memory: resident set of the API, dispatcher and worker after each map (the large one against the first).
8. reads: requests/s of `GET /v1/calls/{id}` (a call's status) from 64 concurrent clients (bench.reads).
9. sandboxes: runc against runsc (gVisor), a stack each: cold start, warm `.remote()`, `.map`, a CPU-bound
   and a syscall-heavy call (bench.sandboxes).
10. dispatch: the dispatcher's cost per call with 1, 10, 100 and 1,000 users waiting (bench.curves).
11. depth: submit and drain rate with 1,000, 100,000 and 1,000,000 inputs queued (bench.curves).
12. workers: a stack with 4 worker processes against 1 (bench.curves).

Progress lines (``[elapsed] section: what``) go to stdout as it runs. The results carry the machine
(cores, memory, kernel, Python, Docker, commit, load) and, when a curve was measured, a PNG of the
curves is written beside the JSON (bench.plot).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import minimodal
from bench import baseline, containers, curves, fairness, reads, sandboxes
from bench._harness import HOMES, local_stack, machine, say, summary_ms, write_results
from bench.plot import plot
from minimodal import config

SIZES: dict[str, dict[str, Any]] = {
    "full": {
        "calls": 500,
        "tasks": 5000,
        "map": 10000,
        "map_large": 100000,
        "cold": 10,
        "payloads": [1024, 1024**2, 64 * 1024**2],
        "payload_calls": 5,
        "fair_seconds": 30,
        "users": 100,
        "user_calls": 100,
        "backlog": 500,
        "read_clients": 64,
        "read_seconds": 15,
        "dispatch_users": [1, 10, 100, 1000],
        "dispatch_calls": 2000,
        "depths": [1000, 100_000, 1_000_000],
        "depth_drain": 20_000,
        "depth_http_max": 1_000_000,  # above it the filler goes straight into the pending queue (bench.curves)
        "worker_counts": [1, 4],
        "worker_inputs": 4000,
    },
    "quick": {
        "calls": 20,
        "tasks": 200,
        "map": 300,
        "map_large": 1000,
        "cold": 2,
        "payloads": [1024, 1024**2],
        "payload_calls": 2,
        "fair_seconds": 2,
        "users": 4,
        "user_calls": 10,
        "backlog": 20,
        "read_clients": 8,
        "read_seconds": 1,
        "dispatch_users": [1, 10],
        "dispatch_calls": 20,
        "depths": [300, 1000],
        "depth_drain": 100,
        "depth_http_max": 500,  # so that the quick run takes the direct path too
        "worker_counts": [1, 2],
        "worker_inputs": 100,
    },
}
ITEMS = [
    "baseline",
    "remote",
    "map",
    "cold",
    "payloads",
    "fairness",
    "reads",
    "sandboxes",
    "dispatch",
    "depth",
    "workers",
]
GOALS = {
    "remote_p50_vs_celery": "warm .remote() p50 within 3x the bare Celery round trip",
    "map_vs_celery": ".map throughput at least 2x bare per-task Celery throughput",
    "map_per_second": ".map throughput at least 2,000 inputs/s",
    "cold_start": "cold start (Docker, image cached) under 1 s",
    "cold_start_150": "cold start (Docker, image cached) under 150 ms (issue 21)",
    "remote_p99_vs_celery": "warm .remote() p99 within 4x the bare Celery round trip",
    "remote_docker_p50_vs_celery": "warm .remote() p50 (Docker) within 3x the bare Celery round trip",
    "many_users": "100 users draining at least 80% of one user's throughput",
    "many_users_90": "100 users draining at least 90% of one user's throughput (issue 21)",
    "large_map_per_second": ".map of the large size at 6,000 inputs/s or more",
    "map_first_result": ".map's first result under 100 ms",
    "map_memory_flat": "RSS of API, dispatcher, worker: large map within 10% of the first",
}

app = minimodal.App("bench-run")


@app.function(serialized=True)
def noop(x: Any = None) -> Any:
    return x


@app.function(serialized=True)
def size_of(data: bytes) -> int:
    return len(data)


# ---- resident memory ----------------------------------------------------------------------------


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            out += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        pass
    return out + [g for c in out for g in _children(c)]


def resident(home: Path) -> dict[str, dict[str, float]]:
    """RSS in MiB of the API, dispatcher and worker processes, and of their children (the API's gunicorn
    workers, the worker's runner processes)."""
    from mm_app.stack import Stack

    out = {}
    pids = Stack(home).pids()  # from supervisord
    for name in ("api", "dispatcher", "worker"):
        pid = pids[name]
        kids = _children(pid)
        out[name] = {
            "rss_mib": round(_rss_kib(pid) / 1024, 1),
            "children_mib": round(sum(map(_rss_kib, kids)) / 1024, 1),
        }
    return out


# ---- the MiniModal measurements -------------------------------------------------------------------


def _timed_map(n: int) -> dict[str, Any]:
    """One `.map` of ``n`` no-ops: inputs/s, and the time to its first result."""
    began = time.perf_counter()
    first = None
    for i, got in enumerate(noop.map(range(n))):
        if first is None:
            first = time.perf_counter() - began
        if got != i:
            raise SystemExit(f"map of {n}: output {i} is {got!r}, not its input")
    elapsed = time.perf_counter() - began
    return {
        "inputs": n,
        "seconds": round(elapsed, 3),
        "per_second": round(n / elapsed, 1),
        "first_result_ms": round((first or 0) * 1000, 1),
    }


def measure_map(n: int, home: Path, large: int) -> dict[str, Any]:
    """`.map` of ``n`` no-op inputs, twice, then one of ``large`` inputs; the resident set of each process
    after each (growth: the second against the first, and the large one against the first)."""
    with app.run():
        assert list(noop.map(range(50))) == list(range(50))  # runners warm, function's run time known
        memory = {"before": resident(home)}
        runs = []
        for run in (1, 2):
            runs.append(_timed_map(n))
            memory[f"after_map_{run}"] = resident(home)
        big = _timed_map(large)
        memory["after_large_map"] = resident(home)
    growth, large_growth = {}, {}
    for name in ("api", "dispatcher", "worker"):
        first = memory["after_map_1"][name]["rss_mib"]
        for out, key in ((growth, "after_map_2"), (large_growth, "after_large_map")):
            out[name] = round((memory[key][name]["rss_mib"] - first) / first, 4) if first else 0.0
    return {
        "runs": runs,
        "per_second": max(r["per_second"] for r in runs),
        "large": big,
        "memory": memory,
        "growth": growth,
        "large_growth": large_growth,
    }


def measure_payloads(sizes: list[int], calls: int) -> dict[str, Any]:
    """`.remote()` round trips with an argument of each size (the function answers its length)."""
    out = {}
    with app.run():
        size_of.remote(b"warm")
        for size in sizes:
            data = os.urandom(size)
            trips = []
            for _ in range(calls):
                began = time.perf_counter()
                assert size_of.remote(data) == size
                trips.append(time.perf_counter() - began)
            out[_size_name(size)] = {"bytes": size, **summary_ms(trips)}
    return out


def measure_reads(clients: int, seconds: float) -> dict[str, Any]:
    """Requests/s of ``GET /v1/calls/{id}`` of one finished call from ``clients`` clients at once."""
    with app.run():
        call = noop.spawn(1)
        call.get()
        profile = config.read_profile()
        return reads.measure(profile["server_url"], profile["token"], call.object_id, clients=clients, seconds=seconds)


def _size_name(size: int) -> str:
    return f"{size // 1024**2} MiB" if size >= 1024**2 else f"{size // 1024} KiB"


def process_stack(size: dict[str, Any], only: set[str], results: dict[str, Any]) -> None:
    if not only & {"baseline", "remote", "cold", "map", "payloads", "reads"}:
        return
    concurrency = os.cpu_count() or 2
    say("process stack", f"starting `minimodal up` (process runtime, {concurrency} slots)")
    with local_stack("process", worker_concurrency=str(concurrency)) as home:
        if "baseline" in only:
            say("baseline", f"bare Celery: {size['calls']} delay().get() round trips, {size['tasks']:,} tasks at once")
            # The same Redis server as the stack (another database), the same number of worker threads.
            broker = config.read_profile()["redis_url"].rsplit("/", 1)[0] + "/1"
            with baseline.worker(broker, concurrency, home / "logs" / "baseline.log"):
                results["baseline"] = {
                    "concurrency": concurrency,
                    **baseline.measure(broker, size["calls"], size["tasks"]),
                }
                results["baseline"]["throughput_2"] = baseline.throughput(broker, size["tasks"])
        if "remote" in only or "cold" in only:
            say("remote/cold", f"process: {size['calls']} warm .remote() calls, {size['cold']} cold starts")
            figures = containers.measure(size["calls"], size["cold"])
            results.setdefault("remote", {})["process"] = figures["warm_remote"]
            results.setdefault("cold", {})["process"] = figures["cold_start"]
        if "map" in only:
            say("map", f".map of {size['map']:,} no-ops twice, then {size['map_large']:,}, memory after each")
            results["map"] = measure_map(size["map"], home, size["map_large"])
        if "payloads" in only:
            say("payloads", f".remote() with arguments of {', '.join(map(_size_name, size['payloads']))}")
            results["payloads"] = measure_payloads(size["payloads"], size["payload_calls"])
        if "reads" in only:
            say("reads", f"GET /v1/calls/{{id}} from {size['read_clients']} clients for {size['read_seconds']} s")
            results["reads"] = measure_reads(size["read_clients"], size["read_seconds"])


def docker_stack(size: dict[str, Any], only: set[str], results: dict[str, Any]) -> None:
    from workers.runtimes import docker_client

    client = docker_client()
    if client is None:
        results.setdefault("skipped", []).append("docker: no Docker engine answers")
        return
    client.close()
    say("remote/cold", f"docker: {size['calls']} warm .remote() calls, {size['cold']} cold starts")
    with local_stack("docker"):
        figures = containers.measure(size["calls"], size["cold"])
    results.setdefault("remote", {})["docker"] = figures["warm_remote"]
    results.setdefault("cold", {})["docker"] = figures["cold_start"]


def measure_fairness(size: dict[str, Any]) -> dict[str, Any]:
    say("fairness", f"{size['users']} users x {size['user_calls']} queued calls drain, then 1 user")
    many = fairness.drain(size["users"], size["user_calls"])
    one = fairness.drain(1, size["users"] * size["user_calls"])
    say("fairness", f"weighted shares for {size['fair_seconds']} s")
    shares = fairness.shares(size["fair_seconds"])
    say("fairness", f"a newcomer behind a backlog of {size['backlog']}")
    return {
        "shares": shares,
        "starvation": fairness.starvation(size["backlog"]),
        "many_users": many,
        "one_user": one,
        "scale_ratio": round(many["per_second"] / one["per_second"], 4),
    }


# ---- goals and tables -----------------------------------------------------------------------------


def goals(results: dict[str, Any]) -> dict[str, Any]:
    """Where each goal stands: the measured figure, the target, and whether it is met (None: not measured)."""
    out: dict[str, Any] = {}
    base = results.get("baseline")
    remote = results.get("remote", {})
    if base and "process" in remote:
        ratio = remote["process"]["p50_ms"] / base["round_trip"]["p50_ms"]
        out["remote_p50_vs_celery"] = {"value": round(ratio, 2), "target": "<= 3", "met": ratio <= 3}
    if base and "map" in results:
        celery = max(base[k]["per_second"] for k in ("throughput", "throughput_2", "throughput_no_results"))
        ratio = results["map"]["per_second"] / celery
        out["map_vs_celery"] = {"value": round(ratio, 2), "target": ">= 2", "met": ratio >= 2}
    if "map" in results:
        rate = results["map"]["per_second"]
        out["map_per_second"] = {"value": rate, "target": ">= 2000", "met": rate >= 2000}
    if base and "process" in remote:
        ratio = remote["process"]["p99_ms"] / base["round_trip"]["p99_ms"]
        out["remote_p99_vs_celery"] = {"value": round(ratio, 2), "target": "<= 4", "met": ratio <= 4}
    if base and "docker" in remote:
        ratio = remote["docker"]["p50_ms"] / base["round_trip"]["p50_ms"]
        out["remote_docker_p50_vs_celery"] = {"value": round(ratio, 2), "target": "<= 3", "met": ratio <= 3}
    cold = results.get("cold", {}).get("docker")
    if cold:
        out["cold_start"] = {"value": cold["p50_ms"], "target": "< 1000 ms", "met": cold["p50_ms"] < 1000}
        out["cold_start_150"] = {"value": cold["p50_ms"], "target": "< 150 ms", "met": cold["p50_ms"] < 150}
    if "fairness" in results:
        ratio = results["fairness"]["scale_ratio"]
        out["many_users"] = {"value": ratio, "target": ">= 0.8", "met": ratio >= 0.8}
        out["many_users_90"] = {"value": ratio, "target": ">= 0.9", "met": ratio >= 0.9}
    if "map" in results and "large" in results["map"]:
        m = results["map"]
        rate = m["large"]["per_second"]
        out["large_map_per_second"] = {"value": rate, "target": ">= 6000", "met": rate >= 6000}
        first = max(r["first_result_ms"] for r in [*m["runs"], m["large"]])
        out["map_first_result"] = {"value": first, "target": "< 100 ms", "met": first < 100}
        growth = max(m["large_growth"].values())
        out["map_memory_flat"] = {"value": growth, "target": "< 0.1", "met": growth < 0.1}
    return out


def _mib(row: dict[str, float]) -> str:
    return f"{row['rss_mib']} (+{row['children_mib']})"


def print_tables(results: dict[str, Any]) -> None:
    base = results.get("baseline")
    print("\n== latency (ms)")
    print(f"{'what':34} {'n':>5} {'p50':>9} {'p99':>9} {'p50 / celery':>13}")
    rows = []
    if base:
        rows.append(("bare Celery delay().get()", base["round_trip"]))
    for runtime, s in results.get("remote", {}).items():
        rows.append((f"warm .remote() ({runtime})", s))
    for runtime, s in results.get("cold", {}).items():
        rows.append((f"cold start ({runtime})", s))
    for name, s in results.get("payloads", {}).items():
        rows.append((f".remote() with a {name} argument", s))
    for what, s in rows:
        ratio = f"{s['p50_ms'] / base['round_trip']['p50_ms']:12.1f}x" if base else ""
        print(f"{what:34} {s['n']:5} {s['p50_ms']:9.2f} {s['p99_ms']:9.2f} {ratio:>13}")
    print("\n== throughput (inputs/s)")
    print(f"{'what':44} {'inputs':>7} {'seconds':>8} {'per s':>8}")
    if base:
        for key, what in (
            ("throughput", "bare Celery, tasks sent at once + results"),
            ("throughput_2", "bare Celery, the same again"),
            ("throughput_no_results", "bare Celery, no result backend"),
        ):
            t = base[key]
            print(f"{what:44} {t['tasks']:7} {t['seconds']:8.2f} {t['per_second']:8.1f}")
    runs = results.get("map", {}).get("runs", [])
    named = [(f".map of no-ops, run {i}", run) for i, run in enumerate(runs, 1)]
    if "large" in results.get("map", {}):
        named.append((".map of no-ops, large", results["map"]["large"]))
    for what, run in named:
        first = f"  (first result {run['first_result_ms']} ms)" if "first_result_ms" in run else ""
        print(f"{what:44} {run['inputs']:7} {run['seconds']:8.2f} {run['per_second']:8.1f}{first}")
    if "reads" in results:
        r = results["reads"]
        what = f"GET /v1/calls/{{id}}, {r['clients']} clients (requests)"
        print(f"{what:44} {r['requests']:7} {r['seconds']:8.2f} {r['per_second']:8.1f}")
    if "map" in results:
        print("\n== resident memory (MiB): process (+ its runner processes)")
        memory = results["map"]["memory"]
        large = results["map"].get("large_growth", {})
        print(f"{'process':11} " + " ".join(f"{k:>18}" for k in memory) + f" {'2nd map added':>14} {'large added':>12}")
        for name in ("api", "dispatcher", "worker"):
            cells = " ".join(f"{_mib(m[name]):>18}" for m in memory.values())
            extra = f" {large[name]:12.1%}" if name in large else ""
            print(f"{name:11} {cells} {results['map']['growth'][name]:14.1%}{extra}")
    if "fairness" in results:
        f = results["fairness"]
        print("\n== fairness")
        for name, row in f["shares"]["users"].items():
            print(f"share {name}: weight {row['weight']}, expected {row['expected']:.1%}, measured {row['share']:.1%}")
        print(f"Jain's index {f['shares']['jain_index']:.4f}")
        s = f["starvation"]
        print(
            f"newcomer behind a backlog of {s['backlog']}: waited {s['bob_wait_seconds']:.3f} s, "
            f"{s['alice_starts_before_bob']} backlog calls started first"
        )
        print(
            f"{f['many_users']['users']} users: {f['many_users']['per_second']:.1f}/s; 1 user: "
            f"{f['one_user']['per_second']:.1f}/s; ratio {f['scale_ratio']:.1%}"
        )
    sandboxes.print_table(results.get("sandboxes", {}))
    print_curves(results)
    print("\n== goals" + (" (quick size: too small to say anything about them)" if results["size"] == "quick" else ""))
    for key, g in results["goals"].items():
        verdict = "met" if g["met"] else "NOT met"
        print(f"{GOALS[key]:62} {g['value']!s:>10} ({g['target']}): {verdict}")
    for key in GOALS.keys() - results["goals"].keys():
        print(f"{GOALS[key]:62} not measured in this run")


def print_curves(results: dict[str, Any]) -> None:
    if "dispatch" in results:
        d = results["dispatch"]
        print(f"\n== dispatch cost per call, {d['slots']} slots busy (µs; Redis commands from the dispatcher)")
        print(f"{'users waiting':>13} {'freed/pass':>10} {'calls':>6} {'wall':>8} {'p50':>8} {'cpu':>8} {'cmds':>6}")
        for p in d["points"]:
            print(
                f"{p['users']:13} {p['freed_per_pass']:10} {p['calls']:6} {p['per_call_us']:8.1f} "
                f"{p['per_call_p50_us']:8.1f} {p['cpu_per_call_us']:8.1f} {p['redis_commands_per_call']:6.1f}"
            )
    if "depth" in results:
        d = results["depth"]
        print(f"\n== submit and drain against queue depth (inputs/s; drain of the first {d['drain_window']:,})")
        head = ("queued", "filler", "submit", "drain", "1st take s", "disp cpu", "Redis MiB")
        print("{:>9} {:>6} {:>8} {:>8} {:>10} {:>8} {:>9}".format(*head))
        for p in d["points"]:
            r = p["drain"]
            print(
                f"{p['queued']:9} {p['filler_path']:>6} {p['submit_per_second']:8.1f} {r['per_second'] or 0:8.1f} "
                f"{r['first_take_seconds']:10.2f} {r['dispatcher_cpu_share'] or 0:8.0%} {p['redis_used_mib']:9.1f}"
            )
    if "workers" in results:
        w = results["workers"]
        print(f"\n== workers ({w['slots_per_worker']} slots each, {w['call_seconds'] * 1000:g} ms sleeps; calls/s)")
        print(f"{'workers':>7} {'inputs':>7} {'drain':>8} {'ceiling':>8} {'disp cpu':>8} {'machine cpu':>11}")
        for p in w["points"]:
            print(
                f"{p['workers']:7} {p['inputs']:7} {p['per_second'] or 0:8.1f} {p['ceiling_per_second']:8.0f} "
                f"{p['dispatcher_cpu_share'] or 0:8.0%} {p['machine_cpu_busy']:11.0%}"
            )
        if w["ratio"]:
            print(f"{w['points'][-1]['workers']} workers against 1: {w['ratio']:.2f}x")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    # `kill` (SIGTERM) unwinds like Ctrl-C, so every stack and worker this started is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: proves the suite works, measures nothing")
    parser.add_argument("--runtimes", default="process,docker")
    parser.add_argument("--only", default=",".join(ITEMS), help=f"some of {','.join(ITEMS)}")
    parser.add_argument("--out", type=Path, help="write the results here instead of bench/results/")
    args = parser.parse_args(argv)
    size = SIZES["quick" if args.quick else "full"]
    only = set(args.only.split(","))
    runtimes = args.runtimes.split(",")
    results: dict[str, Any] = {
        "size": "quick" if args.quick else "full",
        "cpus": os.cpu_count(),
        "at": time.time(),
        "machine": machine(),
        "only": sorted(only),
    }
    m = results["machine"]
    say(
        "bench",
        f"{results['size']} size; {sorted(only)}; {m['cpus']} cores, {m['memory_gib']} GiB, commit {m['commit']}",
    )
    began = time.monotonic()
    if "process" in runtimes:
        process_stack(size, only, results)
    if "docker" in runtimes and only & {"remote", "cold"}:
        docker_stack(size, only, results)
    if "fairness" in only:
        results["fairness"] = measure_fairness(size)
    if "docker" in runtimes and "sandboxes" in only:
        say("sandboxes", "runc against runsc, a stack each")
        results["sandboxes"] = sandboxes.measure(quick=args.quick)
    if "dispatch" in only:
        say("dispatch", f"per-call dispatch cost with {size['dispatch_users']} users waiting")
        results["dispatch"] = curves.dispatch_cost(size["dispatch_users"], size["dispatch_calls"])
    if "depth" in only:
        say("depth", f"submit and drain rate with {size['depths']} inputs queued")
        results["depth"] = curves.queue_depth(size["depths"], size["depth_drain"], size["depth_http_max"])
    if "workers" in only:
        say("workers", f"drain on {size['worker_counts']} worker processes")
        results["workers"] = curves.worker_scaling(size["worker_counts"], size["worker_inputs"])
    results["goals"] = goals(results)
    results["seconds"] = round(time.monotonic() - began, 1)
    results["homes"] = [str(home) for home in HOMES]
    results["load_average_at_end"] = list(os.getloadavg())
    print_tables(results)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        path = args.out
    else:
        path = write_results("quick" if args.quick else "latest", results)
    print("\nwritten to", path)
    png = plot(results, path.with_suffix(".png"))
    if png:
        print("curves drawn in", png)
    return results


if __name__ == "__main__":
    main()
