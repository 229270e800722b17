"""Costs that should stay flat as work grows, measured as curves (bench.run's ``dispatch``, ``depth`` and
``workers`` items).

- dispatch: the dispatcher's cost per dispatched call with 1, 10, 100 and 1,000 users waiting. The real
  :class:`~mm_app.dispatcher.Dispatcher`, the real Lua take/finish steps and a real Celery producer, in
  this process, against a private ``redis-server``; the worker is one registered capacity (16 slots)
  whose queue nobody reads, so only the dispatcher is timed. In steady state every slot is busy; each
  step finishes the oldest task(s) (``freed`` per pass: 1, as when each finish wakes its own pass, or
  every slot at once) and times one ``dispatch_pass``. Per call: wall time, the dispatcher's own CPU
  time, and Redis commands (``INFO`` ``total_commands_processed``, Lua's inner calls not counted).
- depth: submit and drain rate with 1,000, 100,000 and 1,000,000 inputs queued, on a fresh stack each
  (process runtime, dispatcher stopped while queuing). The backlog is laid out head / filler / tail: the
  head (up to ``drain`` inputs) and the tail (a probe of up to 5,000 inputs, timed: the submit rate
  with the whole backlog queued) go over HTTP, 100 inputs a request as ``.map`` sends them; the filler
  between them goes over HTTP up to ``http_max`` queued inputs, and above it straight into the user's
  pending queue through the real enqueue Lua step (:meth:`mm_app.pending.PendingQueues.enqueue`,
  payloads included, no database rows; the point says ``filler_path: direct``). The full size sends
  all 1,000,000 over HTTP (about a minute at ~20,000 inputs/s on 2 cores); the quick size goes direct
  above 500 inputs so that this path stays tested. Then the dispatcher starts and the head drains:
  time to the first take (its process start, and its rebuild from the database of queued rows older
  than the rebuild grace), and inputs/s from 10 % to 100 % of the head (ended = queued - not yet taken
  (``mm:pending_inputs``) - in the ledger).
- workers: one stack (process runtime, 4 slots per worker) with 1 worker, then with 3 more worker
  processes (``python -m mm_app worker``) on this machine; the same backlog of 20 ms sleeps drains on
  each. The calls sleep so that 4 workers have 4x the capacity even on a 2-core machine; the
  dispatcher's CPU share during the drain says whether it is the bottleneck.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from redis import Redis

from bench._harness import HOMES, Progress, free_port, say
from bench.fairness import Tenant, nap, noop, stack, stop_dispatcher
from minimodal import config, protocol
from minimodal._serialization import serialize_args
from mm_app import keyspace

# ---- dispatch cost against users waiting ---------------------------------------------------------


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """A throwaway ``redis-server`` on a free port (no persistence), stopped afterwards."""
    with tempfile.TemporaryDirectory(prefix="mm-bench-redis-") as tmp:
        HOMES.append(Path(tmp))
        port = free_port()
        argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        server = subprocess.Popen(argv, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            client = Redis(port=port)
            for _ in range(100):
                with contextlib.suppress(Exception):
                    if client.ping():
                        break
                time.sleep(0.05)
            client.close()
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            server.terminate()
            server.wait(10)


def dispatch_cost(user_counts: list[int], calls: int, slots: int = 16) -> dict[str, Any]:
    """Per-call dispatch cost with each number of users waiting, freeing 1 slot a pass and all of them."""
    from mm_app.broker import TaskSender

    points = []
    with private_redis() as url:
        redis = Redis.from_url(url)
        try:
            for users in user_counts:
                for freed in sorted({1, slots}):
                    points.append(_dispatch_point(redis, TaskSender(redis), users, calls, slots, freed))
        finally:
            redis.close()
    return {"slots": slots, "calls": calls, "points": points}


def _dispatch_point(redis: Redis, sender: Any, users: int, calls: int, slots: int, freed: int) -> dict[str, Any]:
    from mm_app import recovery, registry
    from mm_app.dispatcher import Dispatcher
    from mm_app.keyspace import PendingEntry, WorkerCapacity
    from mm_app.pending import PendingQueues, Policy

    section = f"dispatch {users} user(s), {freed} freed/pass"
    redis.flushdb()
    policy = Policy(default_quota=slots)
    pending = PendingQueues(redis, policy)
    worker = WorkerCapacity(
        "bench-worker", keyspace.worker_queue("bench-worker"), slots, slots * 1000, slots * 1024, {}, False
    )
    registry.beat(redis, worker, {}, ttl=3600)
    need = registry.needs_of({}, keyspace.QUEUE_CPU)
    payload = serialize_args((0,), {})
    per_user = -(-(calls + slots) // users) + 2  # nobody's queue empties during the run: n users wait throughout
    say(section, f"queuing {per_user * users:,} one-input calls through the enqueue step")
    count = Progress(section, "queued", per_user * users)
    for user in range(1, users + 1):
        function_id = f"fu-bench{user:05d}"
        pending.set_needs(function_id, need)
        pending.set_quota(user, slots, weight=1)
        for _ in range(per_user):
            pending.enqueue(
                user, PendingEntry(protocol.new_id("fc"), function_id, 0, 1), inputs={"0": payload}, ttl=600
            )
            count.add()
    dispatcher = Dispatcher(redis, sender, None, policy=policy, lease_seconds=0)
    dispatcher.dispatch_pass()  # fill every slot: the steady state, where each finish frees one
    say(section, f"timing passes until {calls:,} calls are dispatched")
    wall = cpu = 0.0
    commands = sent = passes = 0
    per_pass_us: list[float] = []
    beaten = time.monotonic()
    count = Progress(section, "dispatched", calls)
    stats_before = _commandstats(redis)
    while sent < calls and passes < calls * 4:
        if time.monotonic() - beaten > 1:  # keep the worker alive in Redis time (untimed)
            registry.beat(redis, worker, {}, ttl=3600)
            beaten = time.monotonic()
        ledger = sorted(recovery.ledger(redis).items(), key=lambda kv: kv[1].at)
        for task_id, task in ledger[:freed]:
            pending.finish(task.user_id, task.function_id, mean_run_us=1000, task_id=task_id)
        redis.delete(keyspace.wake_key(), keyspace.worker_queue("bench-worker"))
        before = redis.info("stats")["total_commands_processed"]
        began, began_cpu = time.perf_counter(), time.thread_time()
        n = dispatcher.dispatch_pass()
        took, took_cpu = time.perf_counter() - began, time.thread_time() - began_cpu
        commands += redis.info("stats")["total_commands_processed"] - before - 1  # less the INFO itself
        passes += 1
        if n:
            wall += took
            cpu += took_cpu
            sent += n
            per_pass_us.append(took / n * 1e6)
            count.add(n)
    per_pass_us.sort()
    by_name = {k: v["calls"] - stats_before.get(k, {}).get("calls", 0) for k, v in _commandstats(redis).items()}
    return {
        "users": users,
        "freed_per_pass": freed,
        "calls": sent,
        "passes": passes,
        "per_call_us": round(wall / max(sent, 1) * 1e6, 1),
        "per_call_p50_us": round(per_pass_us[len(per_pass_us) // 2], 1) if per_pass_us else 0.0,
        "cpu_per_call_us": round(cpu / max(sent, 1) * 1e6, 1),
        "redis_commands_per_call": round(commands / max(sent, 1), 1),
        # every client's commands during the loop (the untimed finishes and INFO too), per call, most first
        "commands_per_call_by_name": {
            k: round(v / max(sent, 1), 2) for k, v in sorted(by_name.items(), key=lambda kv: -kv[1])[:8] if v
        },
    }


def _commandstats(redis: Redis) -> dict[str, dict[str, Any]]:
    return {k.removeprefix("cmdstat_"): v for k, v in redis.info("commandstats").items()}


# ---- submit and drain against the depth of the queue ---------------------------------------------


def _redis() -> Redis:
    return Redis.from_url(config.read_profile()["redis_url"])


def _not_taken(redis: Redis) -> int:
    """Inputs queued and not yet taken, over all users (``mm:pending_inputs``)."""
    return sum(int(v) for v in redis.hvals(keyspace.pending_inputs_key()))


def submit(tenant: Tenant, function_id: str, inputs: int, section: str, *, args: tuple[Any, ...] = (0,)) -> float:
    """Queue ``inputs`` inputs over HTTP, 100 a request (as ``.map``) from 8 threads; return inputs/s."""
    if inputs <= 0:
        return 0.0
    item = {"args": protocol.b64(serialize_args(args, {}))}
    sizes = [min(100, inputs - i) for i in range(0, inputs, 100)]
    count = Progress(section, "inputs submitted over HTTP", inputs)

    def post(size: int) -> None:
        reply = tenant.http.post(
            f"{tenant.server}/v1/functions/{function_id}/calls", json={"inputs": [item] * size}, timeout=120
        )
        reply.raise_for_status()
        count.add(size)

    began = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(post, sizes))
    return inputs / (time.perf_counter() - began)


def enqueue_directly(redis: Redis, user_id: int, function_id: str, inputs: int, section: str) -> float:
    """Queue ``inputs`` inputs through the real enqueue Lua step, 100 an entry, no database rows; inputs/s."""
    from mm_app.keyspace import PendingEntry
    from mm_app.pending import PendingQueues, Policy

    pending = PendingQueues(redis, Policy.from_config())
    payload = serialize_args((0,), {})
    count = Progress(section, "inputs enqueued directly (Lua, no HTTP, no database)", inputs)
    began = time.perf_counter()
    for first in range(0, inputs, 100):
        size = min(100, inputs - first)
        entry = PendingEntry(protocol.new_id("fc"), function_id, 0, size)
        pending.enqueue(user_id, entry, inputs={str(i): payload for i in range(size)}, ttl=3600)
        count.add(size)
    return inputs / (time.perf_counter() - began)


def drain(home: Path, redis: Redis, inputs: int, section: str, timeout: float) -> dict[str, Any]:
    """Start the dispatcher and time how fast the first ``inputs`` queued inputs end.

    Ended = queued - not yet taken - in the ledger (a task holds up to 100 inputs, so taken alone would
    jump). The rate is from 10 % to 100 % of ``inputs``; the dispatcher's CPU share over the same span.
    """
    from mm_app.stack import GROUP, Stack

    queued = _not_taken(redis)
    say(section, f"starting the dispatcher; draining {inputs:,} of {queued:,} queued inputs")
    stack = Stack(home)
    began = time.monotonic()
    stack.supervisor().startProcess(f"{GROUP}:dispatcher", False)  # no wait: the drain is timed from here
    pid = 0
    first = tenth = end = None
    tenth_done = end_done = 0
    cpu_tenth = cpu_end = 0.0
    machine_tenth = machine_end = (0.0, 0.0)
    deadline = began + timeout
    last_said = began
    while time.monotonic() < deadline:
        if not pid:
            pid = stack.pids().get("dispatcher", 0)
        taken = queued - _not_taken(redis)
        done = taken - _in_flight(redis)
        now = time.monotonic()
        if first is None and taken > 0:
            first = now
        if tenth is None and done >= inputs * 0.1:
            tenth, tenth_done, cpu_tenth, machine_tenth = now, done, _cpu_seconds(pid), _machine_cpu()
        if done >= inputs:
            end, end_done, cpu_end, machine_end = now, done, _cpu_seconds(pid), _machine_cpu()
            break
        if now - last_said >= 5:
            last_said = now
            say(section, f"ended {done:,} of {inputs:,}")
        time.sleep(0.02)
    if end is None or tenth is None or first is None:
        raise SystemExit(f"{section}: only {queued - _not_taken(redis)} of {inputs} were taken in {timeout} s")
    span = end - tenth
    return {
        "inputs": inputs,
        "first_take_seconds": round(first - began, 3),  # includes the dispatcher's process start
        "seconds": round(end - began, 3),
        "per_second": round((end_done - tenth_done) / span, 1) if span > 0 else None,
        "dispatcher_cpu_share": round((cpu_end - cpu_tenth) / span, 3) if span > 0 else None,
        # every process on the machine (other helpers' included), as a share of all its cores
        "machine_cpu_busy": round(
            (machine_end[0] - machine_tenth[0]) / max(machine_end[1] - machine_tenth[1], 1e-9), 3
        ),
    }


def _machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of all cores since boot, from /proc/stat."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0.0, 0.0
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return float(sum(values[:8]) - idle), float(sum(values[:8]))


def _in_flight(redis: Redis) -> int:
    """Inputs in dispatched, unfinished tasks (the ledger)."""
    from mm_app.keyspace import InflightTask

    return sum(t.end - t.start for t in map(InflightTask.decode, redis.hvals(keyspace.inflight_key())))


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def queue_depth(sizes: list[int], drain_inputs: int, http_max: int) -> dict[str, Any]:
    points = [_depth_point(n, drain_inputs, http_max) for n in sizes]
    return {"drain_window": drain_inputs, "http_max": http_max, "points": points}


def _depth_point(n: int, drain_inputs: int, http_max: int) -> dict[str, Any]:
    section = f"depth {n:,}"
    tail = max(100, min(5000, n // 10))
    head = min(drain_inputs, n - tail)
    filler = n - head - tail
    direct = n > http_max
    say(section, f"stack up; head {head:,} + filler {filler:,} ({'direct' if direct else 'HTTP'}) + tail {tail:,}")
    with stack(os.cpu_count() or 2) as (home, server, admin, _db):
        redis = _redis()
        try:
            stop_dispatcher(home)
            tenant = Tenant(server, admin, "depth", quota=64)
            function_id = tenant.deploy(noop, "noop-depth")
            head_rate = submit(tenant, function_id, head, section)
            user_id = int(next(iter(redis.hkeys(keyspace.pending_inputs_key()))))
            if direct:
                filler_rate = enqueue_directly(redis, user_id, function_id, filler, section)
            else:
                filler_rate = submit(tenant, function_id, filler, section)
            say(section, f"{_not_taken(redis):,} queued; timing the tail probe")
            tail_rate = submit(tenant, function_id, tail, section)
            queued = _not_taken(redis)
            memory = redis.info("memory")["used_memory"]
            drained = drain(home, redis, head, section, timeout=max(120.0, head / 50))
            stop_dispatcher(home)
        finally:
            redis.close()
    return {
        "queued": queued,
        "head": head,
        "filler": filler,
        "filler_path": "direct" if direct else "http",
        "tail": tail,
        "submit_head_per_second": round(head_rate, 1),
        "submit_filler_per_second": round(filler_rate, 1),
        "submit_per_second": round(tail_rate, 1),  # the tail probe: submitting with the whole backlog queued
        "redis_used_mib": round(memory / 1024**2, 1),
        "drain": drained,
    }


# ---- 4 workers against 1 -------------------------------------------------------------------------


def worker_scaling(counts: list[int], inputs: int, slots: int = 4, call_seconds: float = 0.02) -> dict[str, Any]:
    from mm_app import credential, registry

    points = []
    extra: list[subprocess.Popen[bytes]] = []
    with stack(slots) as (home, server, admin, _db):
        redis = _redis()
        env = {
            **{k: v for k, v in os.environ.items() if k != "MINIMODAL_WORKER_ID"},
            "MINIMODAL_REDIS_URL": config.read_profile()["redis_url"],
            "MINIMODAL_SERVER_URL": server,
            "MINIMODAL_WORKER_TOKEN": credential.worker_token(),
        }
        try:
            tenant = Tenant(server, admin, "scaling", quota=64)
            function_id = tenant.deploy(nap, "nap-scaling")
            for count in counts:
                section = f"workers {count}"
                while 1 + len(extra) < count:
                    log = open(home / "logs" / f"bench-worker-{len(extra)}.log", "wb")  # noqa: SIM115
                    argv = [sys.executable, "-m", "mm_app", "worker", "-c", str(slots)]
                    extra.append(subprocess.Popen(argv, cwd=home, env=env, stdout=log, stderr=log))
                say(section, f"waiting for {count} live worker(s)")
                deadline = time.monotonic() + 120
                while len(registry.capacities(redis, 10)[0]) < count:
                    if time.monotonic() > deadline:
                        raise SystemExit(f"{section}: only {len(registry.capacities(redis, 10)[0])} workers registered")
                    time.sleep(0.5)
                warm = count * slots * 10  # every worker starts its runners before the timed drain
                say(section, f"warming {count * slots} runner(s) with {warm} calls")
                submit(tenant, function_id, warm, section, args=(call_seconds,))
                while _not_taken(redis):
                    time.sleep(0.2)
                time.sleep(1)
                stop_dispatcher(home)
                submit(tenant, function_id, inputs, section, args=(call_seconds,))
                drained = drain(home, redis, inputs, section, timeout=max(120.0, inputs * call_seconds))
                points.append({"workers": count, "slots": count * slots, **drained})
        finally:
            for worker in extra:
                worker.terminate()  # Celery's warm shutdown: it stops its runners
            for worker in extra:
                try:
                    worker.wait(60)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait(10)
            redis.close()
    capacity = [p["slots"] / call_seconds for p in points]
    for point, ceiling in zip(points, capacity, strict=True):
        point["ceiling_per_second"] = ceiling  # slots / call time: what the workers could do at best
    ratio = points[-1]["per_second"] / points[0]["per_second"] if len(points) > 1 and points[0]["per_second"] else None
    return {"call_seconds": call_seconds, "slots_per_worker": slots, "points": points, "ratio": ratio}
