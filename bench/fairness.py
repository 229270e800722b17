"""Fair scheduling under load: proportional shares, starvation, and many users against one.

    .venv/bin/python -m bench.fairness [--only shares,starvation,scale] [--seconds 30] [--users 100] [--calls 100]

Each scenario runs on its own fresh stack (`minimodal up` in a temporary home, process runtime) and
queues all its calls while the dispatcher is stopped, then starts it, so every user is waiting from
the first dispatch on. Times come from the database: ``started_at`` (when a worker took the input)
and ``finished_at`` / ``duration``.

- shares: three users with weights 1, 1, 2 keep a 4-slot pool busy with 0.1 s calls for
  ``--seconds``; each user's share of the run time in that window, against 25/25/50, and Jain's index
  over the weight-normalised shares.
- starvation: 2 slots; Alice queues 500 calls of 0.2 s, then Bob submits one; Bob's wait and how many
  of Alice's calls started between his submission and his start.
- scale: ``--users`` users with ``--calls`` queued no-op calls each, against one user with
  users x calls; drain throughput of each (inputs per second from the first start to the last end).

Results are printed and written to bench/results/fairness.json.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import requests
from sqlalchemy import func, select

from bench._harness import local_stack, write_results
from minimodal import config, protocol
from minimodal._serialization import serialize_args, serialize_function
from mm_app.database import Database
from mm_app.fairshare import jain_index
from mm_app.models import InputRecord

TERMINAL = [s.value for s in protocol.TERMINAL]


def nap(seconds: float) -> float:
    import time

    time.sleep(seconds)
    return seconds


def noop(x: int) -> int:
    return x


class Tenant:
    """One user of the stack, over the HTTP API."""

    def __init__(self, server: str, admin: requests.Session, name: str, **fields: int) -> None:
        reply = admin.post(f"{server}/v1/users", json={"name": name, **fields}, timeout=30)
        reply.raise_for_status()
        self.server = server
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {reply.json()['token']}"

    def deploy(self, fn: Callable[..., Any], tag: str) -> str:
        code = protocol.b64(serialize_function(fn))
        body = {"name": tag, "functions": [{"tag": tag, "code": code, "options": {}}]}
        reply = self.http.post(f"{self.server}/v1/apps", json=body, timeout=30)
        reply.raise_for_status()
        return reply.json()["functions"][tag]

    def call(self, function_id: str, *args: Any) -> str:
        body = {"inputs": [{"args": protocol.b64(serialize_args(args, {}))}]}
        reply = self.http.post(f"{self.server}/v1/functions/{function_id}/calls", json=body, timeout=60)
        reply.raise_for_status()
        return reply.json()["call_id"]


@contextlib.contextmanager
def stack(slots: int) -> Iterator[tuple[Path, str, requests.Session, Database]]:
    with local_stack("process", worker_concurrency=str(slots)) as home:
        profile = config.read_profile()
        admin = requests.Session()
        admin.headers["Authorization"] = f"Bearer {profile['token']}"
        db = Database(config.database_url())
        try:
            yield home, profile["server_url"], admin, db
        finally:
            db.dispose()


def stop_dispatcher(home: Path) -> None:
    """Stop the stack's dispatcher through supervisord (which would otherwise start it again)."""
    from mm_app.stack import GROUP, Stack

    Stack(home).supervisor().stopProcess(f"{GROUP}:dispatcher", True)


def start_dispatcher(home: Path) -> None:
    """Start the stack's dispatcher again, as `minimodal up` did."""
    from mm_app.stack import GROUP, Stack

    Stack(home).supervisor().startProcess(f"{GROUP}:dispatcher", True)


def submit_all(jobs: list[tuple[Tenant, str, tuple[Any, ...]]], threads: int = 8) -> list[str]:
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda job: job[0].call(job[1], *job[2]), jobs))


def wait_done(db: Database, total: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with db.read() as session:
            done = session.scalar(select(func.count()).where(InputRecord.status.in_(TERMINAL)))
        if done >= total:
            return
        time.sleep(0.25)
    raise SystemExit(f"only {done} of {total} inputs ended within {timeout:.0f} s")


def rows(db: Database, call_ids: list[str]) -> list[Any]:
    out = []
    with db.read() as session:
        for i in range(0, len(call_ids), 500):
            out += session.execute(
                select(
                    InputRecord.call_id,
                    InputRecord.created_at,
                    InputRecord.started_at,
                    InputRecord.finished_at,
                    InputRecord.duration,
                ).where(InputRecord.call_id.in_(call_ids[i : i + 500]))
            ).all()
    return out


# ---- scenarios -----------------------------------------------------------------------------------


def shares(seconds: float, slots: int = 4, call_seconds: float = 0.1) -> dict[str, Any]:
    weights = {"ann": 1, "ben": 1, "cat": 2}
    per_user = int(seconds * slots / call_seconds * 0.75) + 50  # more than even the heaviest user can run
    with stack(slots) as (home, server, admin, db):
        stop_dispatcher(home)
        tenants = {n: Tenant(server, admin, n, quota=slots, weight=w) for n, w in weights.items()}
        functions = {n: t.deploy(nap, f"nap-{n}") for n, t in tenants.items()}
        names = [n for _ in range(per_user) for n in weights]
        calls = submit_all([(tenants[n], functions[n], (call_seconds,)) for n in names])
        owner = dict(zip(calls, names, strict=True))
        start_dispatcher(home)
        t0 = None
        while t0 is None:
            time.sleep(0.5)
            started = [r.started_at for r in rows(db, calls[:50]) if r.started_at]
            t0 = min(started) if started else None
        time.sleep(seconds + 2)
        window_end = t0.timestamp() + seconds
        busy: dict[str, float] = defaultdict(float)
        for r in rows(db, calls):
            if r.started_at and r.started_at.timestamp() < window_end:
                end = min(window_end, r.started_at.timestamp() + (r.duration or call_seconds))
                busy[owner[r.call_id]] += max(0.0, end - r.started_at.timestamp())
        stop_dispatcher(home)  # the rest of the backlog is not measured
    total = sum(busy.values())
    table = {
        n: {"weight": w, "expected": w / sum(weights.values()), "share": busy[n] / total, "busy_seconds": busy[n]}
        for n, w in weights.items()
    }
    return {
        "seconds": seconds,
        "slots": slots,
        "users": table,
        "jain_index": jain_index(table[n]["share"] / w for n, w in weights.items()),
        "within_10_percent": all(abs(v["share"] - v["expected"]) <= 0.1 * v["expected"] for v in table.values()),
    }


def starvation(backlog: int = 500, slots: int = 2, call_seconds: float = 0.2) -> dict[str, Any]:
    with stack(slots) as (home, server, admin, db):
        alice, bob = Tenant(server, admin, "alice"), Tenant(server, admin, "bob")
        fa, fb = alice.deploy(nap, "alice-nap"), bob.deploy(nap, "bob-nap")
        alice_calls = submit_all([(alice, fa, (call_seconds,))] * backlog)
        bob_call = bob.call(fb, call_seconds)
        deadline = time.monotonic() + 60
        mine = None
        while time.monotonic() < deadline and not (mine and mine.started_at):
            time.sleep(0.2)
            mine = rows(db, [bob_call])[0]
        time.sleep(3 * call_seconds + 1)
        between = [
            r for r in rows(db, alice_calls) if r.started_at and mine.created_at < r.started_at < mine.started_at
        ]
        stop_dispatcher(home)
    return {
        "backlog": backlog,
        "slots": slots,
        "call_seconds": call_seconds,
        "bob_wait_seconds": (mine.started_at - mine.created_at).total_seconds(),
        "alice_starts_before_bob": len(between),
    }


def drain(users: int, calls: int) -> dict[str, Any]:
    """Queue ``calls`` no-op calls for each of ``users`` users, then measure how fast they drain."""
    with stack(4) as (home, server, admin, db):
        stop_dispatcher(home)
        tenants = [Tenant(server, admin, f"user{i}", quota=5) for i in range(users)]
        functions = [t.deploy(noop, f"noop-{i}") for i, t in enumerate(tenants)]
        jobs = [(t, f, (i,)) for i in range(calls) for t, f in zip(tenants, functions, strict=True)]
        ids = submit_all(jobs)
        start_dispatcher(home)
        wait_done(db, len(ids), timeout=max(120.0, len(ids) / 20))
        got = rows(db, ids)
    first = min(r.started_at for r in got)
    last = max(r.finished_at for r in got)
    elapsed = (last - first).total_seconds()
    return {
        "users": users,
        "calls_per_user": calls,
        "inputs": len(ids),
        "seconds": elapsed,
        "per_second": len(ids) / elapsed,
    }


def main() -> None:
    # `kill` (SIGTERM) unwinds like Ctrl-C, so every stack this started is taken down (`minimodal down`).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="shares,starvation,scale")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--backlog", type=int, default=500)
    parser.add_argument("--name", default="fairness", help="results file name under bench/results/")
    args = parser.parse_args()
    only = set(args.only.split(","))
    results: dict[str, Any] = {}
    if "shares" in only:
        s = results["shares"] = shares(args.seconds)
        print(f"\nproportional share, {s['slots']} slots saturated for {s['seconds']:g} s")
        print(f"{'user':6} {'weight':>6} {'expected':>9} {'measured':>9} {'busy s':>8}")
        for name, row in s["users"].items():
            print(
                f"{name:6} {row['weight']:>6} {row['expected']:>9.1%} {row['share']:>9.1%} {row['busy_seconds']:>8.1f}"
            )
        print(
            f"Jain's index over weight-normalised shares: {s['jain_index']:.4f}; within 10%: {s['within_10_percent']}"
        )
    if "starvation" in only:
        s = results["starvation"] = starvation(args.backlog)
        print(
            f"\nstarvation: Alice {s['backlog']} x {s['call_seconds']} s on {s['slots']} slots, then Bob 1: "
            f"Bob waited {s['bob_wait_seconds']:.3f} s; {s['alice_starts_before_bob']} of Alice's calls started first"
        )
    if "scale" in only:
        many = results["many_users"] = drain(args.users, args.calls)
        one = results["one_user"] = drain(1, args.users * args.calls)
        ratio = results["scale_ratio"] = many["per_second"] / one["per_second"]
        print(f"\ndrain of {many['inputs']} queued no-op calls on 4 slots")
        print(f"{args.users} users x {args.calls} calls: {many['per_second']:8.1f} calls/s ({many['seconds']:.1f} s)")
        print(f"1 user x {args.users * args.calls} calls: {one['per_second']:8.1f} calls/s ({one['seconds']:.1f} s)")
        print(f"ratio {ratio:.1%} (target >= 80%)")
    print("written to", write_results(args.name, results))


if __name__ == "__main__":
    main()
