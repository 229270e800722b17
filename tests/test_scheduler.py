"""Fair scheduling, placement, recovery and autoscaling (issue 4).

Two kinds of tests. The in-process ones drive the real dispatcher, Lua steps, registry and
autoscaler on a real Redis, with a recording stand-in for Celery's sending interface, and finish
tasks in an order they choose: they check the scheduling rules exactly (shares, quotas, placement,
holds, recovery). The end-to-end ones start real API, dispatcher and worker processes and check the
same rules on the real path, on recorded start order, never on how long anything took.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from redis import Redis
from sqlalchemy import select

from minimodal import protocol
from minimodal._serialization import deserialize, serialize_args, serialize_function
from minimodal.exception import InsufficientResourcesError
from minimodal.protocol import CallStatus
from mm_app import keyspace, recovery, registry
from mm_app.broker import TaskSender
from mm_app.database import Database
from mm_app.dispatcher import Dispatcher, Lease
from mm_app.fairshare import DeficitRoundRobin, jain_index
from mm_app.keyspace import PendingEntry, WorkerCapacity
from mm_app.models import AppRecord, CallRecord, FunctionRecord, InputRecord, UserRecord, utcnow
from mm_app.pending import Policy
from mm_app.scaler import Autoscaler, scaling_stats
from tests.conftest import (
    PYTHON,
    ROOT,
    RedisServer,
    Stack,
    bootstrap_admin,
    free_port,
    stack_database_url,
    stop_process,
    wait_for,
)
from tests.functions import sched

IN_PROCESS_DB = 12  # Redis databases of these tests: nobody else's
STACK_DB = 13


# ---- in-process: the real scheduler on a real Redis ----------------------------------------------


@dataclass(frozen=True)
class Sent:
    task_id: str
    call_id: str
    function_id: str
    user_id: int
    start: int
    end: int
    queue: str


class RecordingBroker:
    """Celery's sending interface (``producer_or_acquire``, ``send_task``), recording tasks instead of publishing."""

    def __init__(self, on_send: Callable[[Sent], None] | None = None) -> None:
        self.sent: list[Sent] = []
        self.on_send = on_send
        self._lock = threading.Lock()

    def producer_or_acquire(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def send_task(self, name: str, args: list[Any], queue: str, task_id: str, producer: Any = None) -> None:
        assert name == keyspace.TASK_EXECUTE
        sent = Sent(task_id, args[0], args[1], args[2], args[3], args[4], queue)
        with self._lock:
            self.sent.append(sent)
        if self.on_send:
            self.on_send(sent)


@pytest.fixture
def r(redis_server: RedisServer) -> Iterator[Redis]:
    client = Redis(port=redis_server.port, db=IN_PROCESS_DB)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def add_worker(
    r: Redis,
    worker_id: str,
    *,
    slots: int = 4,
    cpu: float = 2,
    memory: int = 8192,
    gpus: str = "",
    offered: int | None = None,
) -> None:
    capacity = WorkerCapacity(
        worker_id,
        keyspace.worker_queue(worker_id),
        slots,
        int(cpu * 1000),
        memory,
        keyspace.parse_gpu_inventory(gpus),
        False,
        offered,
    )
    registry.beat(r, capacity, {"worker_id": worker_id}, 60)


def make_dispatcher(r: Redis, broker: RecordingBroker, **policy: Any) -> Dispatcher:
    return Dispatcher(r, broker, policy=Policy(**{"dead_after": 60.0, **policy}))


def add_function(r: Redis, d: Dispatcher, function_id: str, *, avg_us: int = 0, **options: Any) -> None:
    d.pending.set_needs(function_id, registry.needs_of(options, keyspace.QUEUE_CPU))
    if avg_us:
        r.hset(keyspace.function_stats_key(function_id), "avg_us", avg_us)


_call_numbers = itertools.count()


def submit(d: Dispatcher, user: int, function_id: str, calls: int, *, inputs: int = 1) -> list[str]:
    ids = []
    for _ in range(calls):
        call_id = f"fc-{user}-{function_id}-{next(_call_numbers)}"
        payloads = {str(k): b"\x80\x05N." for k in range(inputs)}
        d.pending.enqueue(user, PendingEntry(call_id, function_id, 0, inputs), inputs=payloads, ttl=600)
        ids.append(call_id)
    return ids


def finish(d: Dispatcher, task: Sent, mean_us: int = 0) -> None:
    d.pending.finish(task.user_id, task.function_id, mean_us, task_id=task.task_id)


def finish_oldest(d: Dispatcher, broker: RecordingBroker, finished: set[str], mean_us: int = 0) -> Sent:
    """The oldest task still in flight ends."""
    task = next(s for s in broker.sent if s.task_id not in finished)
    finished.add(task.task_id)
    finish(d, task, mean_us)
    return task


def drive(d: Dispatcher, broker: RecordingBroker, dispatches: int, *, mean_us: Callable[[Sent], int]) -> list[Sent]:
    """Run a saturated pool: dispatch, finish the oldest task in flight, repeat (a FIFO pool of equal tasks)."""
    in_flight: list[Sent] = []
    seen = 0
    while len(broker.sent) < dispatches:
        d.dispatch_pass()
        in_flight += broker.sent[seen:]
        seen = len(broker.sent)
        assert in_flight, "nothing in flight and nothing dispatched: the pool is idle while users wait"
        task = in_flight.pop(0)
        finish(d, task, mean_us(task))
    return broker.sent[:dispatches]


def share_table(title: str, weights: dict[int, int], shares: dict[int, float]) -> str:
    lines = [title, f"{'user':>6} {'weight':>6} {'expected':>9} {'measured':>9}"]
    total = sum(weights.values())
    for user, weight in weights.items():
        lines.append(f"{user:>6} {weight:>6} {weight / total:>9.1%} {shares[user]:>9.1%}")
    return "\n".join(lines)


def test_busy_users_are_dispatched_in_proportion_to_their_weights(r: Redis) -> None:
    # Given three users with weights 1, 1, 2 and far more calls than the 4 slots can run at once
    broker = RecordingBroker()
    d = make_dispatcher(r, broker)
    add_worker(r, "w1", slots=4)
    weights = {1: 1, 2: 1, 3: 2}
    for user, weight in weights.items():
        d.pending.set_quota(user, 5, weight=weight)
        add_function(r, d, f"fn{user}", avg_us=100_000)
        submit(d, user, f"fn{user}", 300)
    # When 400 tasks are dispatched as slots free up
    sent = drive(d, broker, 400, mean_us=lambda s: 100_000)
    # Then each user's share is within 10% of its weight's share, and Jain's index is near 1
    counts = Counter(s.user_id for s in sent)
    shares = {u: counts[u] / len(sent) for u in weights}
    print("\n" + share_table("dispatch shares over 400 tasks", weights, shares))
    for user, weight in weights.items():
        expected = weight / sum(weights.values())
        assert abs(shares[user] - expected) <= 0.1 * expected, (user, shares)
    assert jain_index(shares[u] / weights[u] for u in weights) >= 0.95


def test_users_with_slower_calls_get_the_same_run_time_not_the_same_number_of_tasks(r: Redis) -> None:
    # Given two users of equal weight, one whose calls take 4 times longer
    broker = RecordingBroker()
    d = make_dispatcher(r, broker)
    add_worker(r, "w1", slots=2)
    add_function(r, d, "fast", avg_us=100_000)
    add_function(r, d, "slow", avg_us=400_000)
    submit(d, 1, "fast", 300)
    submit(d, 2, "slow", 300)
    # When 250 tasks are dispatched
    sent = drive(d, broker, 250, mean_us=lambda s: 100_000 if s.function_id == "fast" else 400_000)
    # Then their dispatched run time is even, so the fast user ran about 4 times as many tasks
    time_by_user = Counter()
    for s in sent:
        time_by_user[s.user_id] += 100 if s.function_id == "fast" else 400
    assert abs(time_by_user[1] - time_by_user[2]) <= 0.1 * max(time_by_user.values()), time_by_user


def test_no_user_ever_has_more_tasks_in_flight_than_their_quota(r: Redis) -> None:
    # Given users with quotas 1, 2 and 3 and a pool much larger than all quotas together
    quotas = {1: 1, 2: 2, 3: 3}
    in_flight: dict[int, int] = Counter()
    peak: dict[int, int] = Counter()

    def check(task: Sent) -> None:  # at every dispatch
        in_flight[task.user_id] += 1
        peak[task.user_id] = max(peak[task.user_id], in_flight[task.user_id])
        assert in_flight[task.user_id] <= quotas[task.user_id]
        assert int(r.hget(keyspace.running_key(), task.user_id)) <= quotas[task.user_id]

    broker = RecordingBroker(on_send=check)
    d = make_dispatcher(r, broker)
    add_worker(r, "w1", slots=16)
    for user, quota in quotas.items():
        d.pending.set_quota(user, quota)
        add_function(r, d, f"fn{user}")
        submit(d, user, f"fn{user}", 40)
    # When tasks finish in a random order
    rng = random.Random(4)
    finished: set[str] = set()
    for _ in range(120):
        d.dispatch_pass()
        task = rng.choice([s for s in broker.sent if s.task_id not in finished])
        finished.add(task.task_id)
        in_flight[task.user_id] -= 1
        finish(d, task)
    # Then every quota was reached and never passed, as the dispatch log also says
    assert dict(peak) == quotas
    for _, fields in r.xrange(keyspace.dispatch_log_key()):
        assert int(fields[b"running"]) <= int(fields[b"quota"])


def test_idle_slots_go_to_whoever_can_use_them(r: Redis) -> None:
    # Given 4 slots, a heavy user at quota 1 and a light user with quota 5
    broker = RecordingBroker()
    d = make_dispatcher(r, broker)
    add_worker(r, "w1", slots=4)
    d.pending.set_quota(1, 1, weight=10)
    d.pending.set_quota(2, 5, weight=1)
    for user in (1, 2):
        add_function(r, d, f"fn{user}")
        submit(d, user, f"fn{user}", 10)
    # When the dispatcher runs once
    d.dispatch_pass()
    # Then no slot is left idle: the heavy user's quota does not hold back the light user
    assert Counter(s.user_id for s in broker.sent) == {1: 1, 2: 3}


def test_a_newcomer_starts_before_the_next_three_calls_of_a_long_backlog(r: Redis) -> None:
    # Given Alice's 500 queued calls of 0.2 s on 2 slots, already running for a while
    slots = 2
    in_flight = Counter()

    def no_backlog_in_the_broker(task: Sent) -> None:
        in_flight["n"] += 1
        assert in_flight["n"] <= slots  # nothing is sent without a free slot for it

    broker = RecordingBroker(on_send=no_backlog_in_the_broker)
    d = make_dispatcher(r, broker)
    add_worker(r, "w1", slots=slots)
    add_function(r, d, "alice-fn", avg_us=200_000)
    add_function(r, d, "bob-fn", avg_us=200_000)
    submit(d, 1, "alice-fn", 500)
    finished: set[str] = set()
    for _ in range(20):
        d.dispatch_pass()
        in_flight["n"] -= 1
        finish_oldest(d, broker, finished, 200_000)
    # When Bob submits one call
    before = len(broker.sent)
    submit(d, 2, "bob-fn", 1)
    while not any(s.user_id == 2 for s in broker.sent):
        d.dispatch_pass()
        in_flight["n"] -= 1
        finish_oldest(d, broker, finished, 200_000)
    # Then at most two of Alice's calls were dispatched between his submission and his call
    alice_between = [s for s in broker.sent[before:] if s.user_id == 1]
    assert len(alice_between) <= 2
    assert int(r.hget(keyspace.pending_inputs_key(), 1)) > 400  # her backlog waits in her queue, not the broker


def test_a_weight_change_takes_effect_on_the_next_pass(r: Redis) -> None:
    # Given two equal users sharing 4 slots
    broker = RecordingBroker()
    d = make_dispatcher(r, broker)
    add_worker(r, "w1", slots=4)
    for user in (1, 2):
        d.pending.set_quota(user, 5, weight=1)
        add_function(r, d, f"fn{user}", avg_us=100_000)
        submit(d, user, f"fn{user}", 400)
    first = drive(d, broker, 100, mean_us=lambda s: 100_000)
    assert Counter(s.user_id for s in first) == {1: 50, 2: 50}
    # When user 2's weight becomes 3 (what `minimodal user set --weight 3` writes), with no restart
    d.pending.set_quota(2, 5, weight=3)
    later = drive(d, broker, 300, mean_us=lambda s: 100_000)[100:]
    # Then user 2 gets three quarters of what follows
    share = Counter(s.user_id for s in later)[2] / len(later)
    assert abs(share - 0.75) <= 0.075, share


def test_two_active_dispatchers_never_hand_out_an_input_twice(r: Redis) -> None:
    # Given two dispatchers without a lease (both dispatch) over many users' multi-input calls
    capacity = {"w1": 6, "w2": 3}
    seen: list[tuple[str, int]] = []
    lock = threading.Lock()

    def check(task: Sent) -> None:
        with lock:
            seen.extend((task.call_id, i) for i in range(task.start, task.end))
        for worker_id, used in registry.used(r).items():
            assert used.get("slots", 0) <= capacity[worker_id]

    broker = RecordingBroker(on_send=check)
    dispatchers = [make_dispatcher(r, broker) for _ in range(2)]
    for worker_id, slots in capacity.items():
        add_worker(r, worker_id, slots=slots)
    expected = set()
    for user in range(1, 9):
        dispatchers[0].pending.set_quota(user, 4, weight=user % 3 + 1)
        add_function(r, dispatchers[0], f"fn{user}", avg_us=20_000)  # 2 inputs per task
        for call_id in submit(dispatchers[0], user, f"fn{user}", 10, inputs=5):
            expected |= {(call_id, i) for i in range(5)}
    stop = threading.Event()
    errors: list[BaseException] = []

    def finisher() -> None:  # a pool finishing whatever is in flight
        done: set[str] = set()
        while not stop.is_set():
            for task in list(broker.sent):
                if task.task_id not in done:
                    done.add(task.task_id)
                    finish(dispatchers[0], task, 20_000)
            time.sleep(0.001)

    def run(d: Dispatcher) -> None:
        try:
            while not stop.is_set() and len(seen) < len(expected):
                d.dispatch_pass()
        except BaseException as exc:  # noqa: BLE001 - reported by the test body
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(d,)) for d in dispatchers] + [threading.Thread(target=finisher)]
    for t in threads:
        t.start()
    # When both run until every input is dispatched
    try:
        wait_for(lambda: len(seen) >= len(expected) or errors, 60, "every input to be dispatched")
    finally:
        stop.set()
        for t in threads:
            t.join()
    # Then each input was dispatched exactly once, and no worker was overfilled on the way
    assert not errors, errors
    assert sorted(seen) == sorted(expected)
    assert all(d.dispatched > 0 for d in dispatchers), "both dispatchers took part"


def test_a_standby_dispatcher_takes_over_when_the_leader_stops_renewing(r: Redis) -> None:
    leader, standby = Lease(r, "d1", 0.3), Lease(r, "d2", 0.3)
    assert leader.hold() and not standby.hold()
    time.sleep(0.4)  # the leader stops renewing (as if killed)
    assert standby.hold()
    assert r.get(keyspace.dispatch_leader_key()) == b"d2"
    leader.held = False
    standby.release()
    assert leader.hold()


def test_a_leader_keeps_its_lease_through_a_rebuild_that_outlasts_it(
    r: Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a dispatcher whose rebuild from the database outlasts its lease (a million queued rows take
    # seconds to read; the slowness is injected)
    db = Database(f"sqlite:///{tmp_path / 'mm.db'}")
    db.create_all()
    rebuilds = []
    real = recovery.rebuild

    def slow_rebuild(*args: Any, **kwargs: Any) -> int:
        rebuilds.append(time.monotonic())
        time.sleep(1.0)
        return real(*args, **kwargs)

    monkeypatch.setattr(recovery, "rebuild", slow_rebuild)
    d = Dispatcher(r, RecordingBroker(), db, policy=Policy(dead_after=60.0), lease_seconds=0.3)
    stop = threading.Event()
    thread = threading.Thread(target=d.run, args=(stop,), kwargs={"idle_wait": 0.05})
    # When it takes the lead, rebuilds, and runs on for a while
    thread.start()
    try:
        time.sleep(3.0)
        holder = r.get(keyspace.dispatch_leader_key())
    finally:
        stop.set()
        thread.join(10)
        db.dispose()
    # Then it kept the lease throughout and rebuilt once (it used to lose the lease, lead again and rebuild
    # again, for ever, never dispatching)
    assert holder == d.id.encode()
    assert len(rebuilds) == 1


def test_calls_are_placed_by_best_fit_and_only_where_they_fit(r: Redis) -> None:
    # Given a 4-CPU worker and a 1-CPU worker
    broker = RecordingBroker()
    d = make_dispatcher(r, broker)
    add_worker(r, "large", slots=4, cpu=4)
    add_worker(r, "small", slots=4, cpu=1)
    d.pending.set_quota(1, 20)
    add_function(r, d, "one", cpu=1)
    add_function(r, d, "two", cpu=2)
    submit(d, 1, "one", 3)
    submit(d, 1, "two", 3)
    # When the dispatcher fills them
    d.dispatch_pass()
    placed = [(s.function_id, s.queue) for s in broker.sent]
    # Then the first 1-CPU call packs the small worker exactly, the rest go to the large one, and
    # 2-CPU calls never go to the small worker (whose cpu, as reserved, is never oversubscribed)
    assert placed[0] == ("one", keyspace.worker_queue("small"))
    assert placed[1:] == [("one", keyspace.worker_queue("large"))] * 2 + [("two", keyspace.worker_queue("large"))]
    used = registry.used(r)
    assert used["large"]["cpu"] == 4000 and used["small"]["cpu"] == 1000
    for task in list(broker.sent):
        finish(d, task)
    d.dispatch_pass()
    assert {s.queue for s in broker.sent if s.function_id == "two"} == {keyspace.worker_queue("large")}


def test_a_large_call_is_not_starved_by_a_stream_of_small_ones(r: Redis) -> None:
    # Given one 4-CPU worker kept full by Alice's stream of 1-CPU calls
    broker = RecordingBroker()
    d = make_dispatcher(r, broker)
    add_worker(r, "w1", slots=8, cpu=4)
    d.pending.set_quota(1, 8)
    add_function(r, d, "small", cpu=1, avg_us=100_000)
    add_function(r, d, "large", cpu=4, avg_us=100_000)
    submit(d, 1, "small", 200)
    d.dispatch_pass()
    # When Bob submits a call that needs the whole worker, and Alice's calls keep finishing one by one
    before = len(broker.sent)
    submit(d, 2, "large", 1)
    d.dispatch_pass()
    assert set(d.held) == {"w1"} and d.held["w1"].user_id == 2  # the worker is held for Bob's call
    finished: set[str] = set()
    while not any(s.user_id == 2 for s in broker.sent):
        finish_oldest(d, broker, finished, 100_000)
        d.dispatch_pass()
        assert len(finished) <= 10, "Bob's call was starved"
    # Then the worker drained (no small call was placed meanwhile) and Bob's call ran after 4 finishes
    assert [s.user_id for s in broker.sent[before:]] == [2]
    assert len(finished) == 4 and d.held == {}


def test_a_call_no_live_worker_can_ever_hold_is_refused_at_submit_naming_the_resource(r: Redis) -> None:
    broker = RecordingBroker()
    d = make_dispatcher(r, broker)
    entry = PendingEntry("fc-x", "greedy", 0, 1)
    add_function(r, d, "greedy", cpu=8)
    # With no live worker at all the call waits for one
    d.pending.enqueue(1, entry)
    add_worker(r, "large", cpu=4)
    add_worker(r, "small", cpu=1, gpus="T4:1")
    with pytest.raises(InsufficientResourcesError, match=r"cpu=8 cores \(the largest worker has 4\)"):
        d.pending.enqueue(1, PendingEntry("fc-y", "greedy", 0, 1))
    add_function(r, d, "a100", gpu="A100")
    with pytest.raises(InsufficientResourcesError, match=r"gpu=A100:1 \(workers offer T4:1\)"):
        d.pending.enqueue(1, PendingEntry("fc-z", "a100", 0, 1))
    add_function(r, d, "t4-and-lots-of-cpu", gpu="T4", cpu=2)
    with pytest.raises(InsufficientResourcesError, match="no single worker has all of these together"):
        d.pending.enqueue(1, PendingEntry("fc-w", "t4-and-lots-of-cpu", 0, 1))
    d.pending.set_needs("boxed", registry.needs_of({}, keyspace.QUEUE_CONTAINER))
    with pytest.raises(InsufficientResourcesError, match="Docker runtime"):
        d.pending.enqueue(1, PendingEntry("fc-v", "boxed", 0, 1))
    # Nothing refused was queued; a GPU call that fits goes to the GPU worker
    assert r.llen(keyspace.pending_key(1)) == 1
    add_function(r, d, "t4", gpu="any")
    d.pending.enqueue(2, PendingEntry("fc-u", "t4", 0, 1))
    d.dispatch_pass()
    assert [s.queue for s in broker.sent if s.user_id == 2] == [keyspace.worker_queue("small")]


def test_a_worker_whose_circuit_breaker_is_open_gets_no_work_but_calls_still_queue(r: Redis) -> None:
    broker = RecordingBroker()
    d = make_dispatcher(r, broker)
    add_worker(r, "w1", slots=4, offered=0)  # its breaker is open
    add_function(r, d, "fn")
    submit(d, 1, "fn", 3)  # not refused: the worker could hold them, just not now
    d.dispatch_pass()
    assert broker.sent == []
    add_worker(r, "w1", slots=4, offered=1)  # half-open: one probe
    d.dispatch_pass()
    assert len(broker.sent) == 1
    add_worker(r, "w1", slots=4)  # closed again
    d.dispatch_pass()
    assert len(broker.sent) == 3


def test_max_containers_caps_a_functions_tasks_in_flight(r: Redis) -> None:
    broker = RecordingBroker()
    d = make_dispatcher(r, broker)
    add_worker(r, "w1", slots=8)
    add_function(r, d, "capped")
    r.hset(keyspace.function_limit_key(), "capped", 2)
    submit(d, 1, "capped", 5)
    d.dispatch_pass()
    assert len(broker.sent) == 2
    finish(d, broker.sent[0])
    d.dispatch_pass()
    assert len(broker.sent) == 3


def test_tasks_of_a_dead_worker_go_back_to_the_head_of_their_queue(r: Redis) -> None:
    # Given a task of 4 inputs on a worker that published one output and then stopped beating
    broker = RecordingBroker()
    d = make_dispatcher(r, broker, dead_after=5.0)
    add_worker(r, "doomed", slots=2)
    add_function(r, d, "fn", avg_us=10_000)
    submit(d, 1, "fn", 1, inputs=4)
    submit(d, 1, "fn", 1, inputs=1)
    d.dispatch_pass()
    task = broker.sent[0]
    assert (task.start, task.end) == (0, 4)
    r.xadd(keyspace.outputs_key(task.call_id), {protocol.OUT_INDEX: 1, protocol.OUT_STATUS: "completed"})
    r.zadd(keyspace.workers_seen_key(), {"doomed": 0})  # last seen long ago
    # When the dispatcher sweeps for dead workers
    gone = recovery.reclaim_dead_workers(d.pending, 5.0)
    # Then its unfinished inputs are first in line again, and everything it held is released
    assert gone == ["doomed"]
    queue = [PendingEntry.decode(e) for e in r.lrange(keyspace.pending_key(1), 0, -1)]
    assert sorted(queue, key=lambda e: (e.call_id, e.start)) == [
        PendingEntry(task.call_id, "fn", 0, 1),
        PendingEntry(task.call_id, "fn", 2, 4),
        PendingEntry(broker.sent[1].call_id, "fn", 0, 1),
    ]
    assert r.hlen(keyspace.inflight_key()) == 0 and r.hlen(keyspace.worker_used_key()) == 0
    assert r.hget(keyspace.running_key(), 1) is None and r.hget(keyspace.workers_key(), "doomed") is None
    # And if the stalled worker does finish the task after all, nothing is released twice
    d.pending.set_quota(1, 5)
    add_worker(r, "fresh", slots=2)
    d.dispatch_pass()
    finish(d, task)
    assert int(r.hget(keyspace.running_key(), 1)) == 2


def test_a_task_taken_but_never_sent_is_requeued_after_the_lost_task_timeout(r: Redis) -> None:
    broker = RecordingBroker()
    d = make_dispatcher(r, broker)
    add_worker(r, "w1")
    r.set(keyspace.worker_key("w1"), '{"worker_id": "w1", "active": []}')
    add_function(r, d, "fn")
    submit(d, 1, "fn", 1)
    # A dispatcher took it and died before sending it
    take = d.pending.take(1, task_id="orphan")
    assert take.kind == "TAKEN"
    assert recovery.reclaim_lost_tasks(d.pending, lost_after=60) == 0  # too early to say
    assert recovery.reclaim_lost_tasks(d.pending, lost_after=0) == 1
    assert r.llen(keyspace.pending_key(1)) == 1 and r.hlen(keyspace.inflight_key()) == 0


def _seed_database(db: Database) -> None:
    old = utcnow() - timedelta(minutes=5)
    with db.write() as session:
        session.add(UserRecord(id=1, name="u1", token_hash="h1", quota=3, weight=2))
        session.flush()
        session.add(AppRecord(id="ap-1", user_id=1))
        session.flush()
        session.add(FunctionRecord(id="fn", app_id="ap-1", user_id=1, tag="f", code=b"x", code_hash="h", options={}))
        session.flush()
        for call_id in ("fc-a", "fc-b", "fc-c", "fc-d"):
            session.add(CallRecord(id=call_id, function_id="fn", user_id=1, num_inputs=3))
        session.flush()
        for call_id in ("fc-a", "fc-b", "fc-c", "fc-d"):
            for idx in range(3):
                session.add(InputRecord(call_id=call_id, idx=idx, status=CallStatus.QUEUED.value, created_at=old))
        session.add(InputRecord(call_id="fc-d", idx=3, status=CallStatus.QUEUED.value, created_at=utcnow()))


def test_pending_queues_are_rebuilt_from_the_database_without_duplicating_anything(r: Redis, tmp_path: Path) -> None:
    # Given queued inputs in the database: fc-a still in Redis's pending queue, fc-b[0] in flight,
    # fc-c with one output published (not yet recorded), fc-d lost with Redis, plus a brand new one
    db = Database(f"sqlite:///{tmp_path / 'mm.db'}")
    db.create_all()
    _seed_database(db)
    broker = RecordingBroker()
    d = Dispatcher(r, broker, db, policy=Policy(dead_after=60.0), rebuild_grace=10)
    add_worker(r, "w1")
    add_function(r, d, "fn")
    d.pending.enqueue(1, PendingEntry("fc-b", "fn", 0, 3))
    assert d.pending.take(1, task_id="t-b").kind == "TAKEN"
    d.pending.enqueue(1, PendingEntry("fc-a", "fn", 0, 3))
    r.xadd(keyspace.outputs_key("fc-c"), {protocol.OUT_INDEX: 1, protocol.OUT_STATUS: "completed"})
    # When the dispatcher rebuilds (as it does on taking the lead)
    d.take_lead()
    # Then exactly the lost inputs are back, at the head, and the user's limits are restored
    queue = [PendingEntry.decode(e) for e in r.lrange(keyspace.pending_key(1), 0, -1)]
    assert queue == [
        PendingEntry("fc-c", "fn", 0, 1),
        PendingEntry("fc-c", "fn", 2, 3),
        PendingEntry("fc-d", "fn", 0, 3),
        PendingEntry("fc-b", "fn", 1, 3),  # the rest of fc-b after the take of its first input
        PendingEntry("fc-a", "fn", 0, 3),
    ]
    assert int(r.hget(keyspace.quota_key(), 1)) == 3 and int(r.hget(keyspace.weight_key(), 1)) == 2
    # And a second rebuild finds nothing more to do
    assert d.rebuild() == 0
    db.dispose()


def test_the_autoscaler_grows_a_worker_when_calls_wait_and_shrinks_it_after_idle(r: Redis) -> None:
    # Given a worker scaled to zero (min 0 slots, cap 4)
    broker = RecordingBroker()
    d = make_dispatcher(r, broker, min_slots=0)
    add_worker(r, "w1", slots=4)
    add_function(r, d, "fn")
    submit(d, 1, "fn", 3)
    # When three calls wait
    d.dispatch_pass()
    # Then its concurrency grows to 3, one decision at a time, each recorded
    assert int(r.hget(keyspace.worker_target_key(), "w1")) == 3
    grown = [e for e in scaling_stats(r, dead_after=60)["events"] if e["kind"] == "worker"]
    assert [(e["from"], e["to"], e["reason"]) for e in reversed(grown)] == [
        (0, 1, "calls waiting"),
        (1, 2, "calls waiting"),
        (2, 3, "calls waiting"),
    ]
    # When the calls end and the worker stays idle for a whole window
    for task in broker.sent:
        finish(d, task)
    scaler = Autoscaler(r, min_slots=0, window=30, events_length=100)
    live, _ = registry.capacities(r, 60)
    assert scaler.tick(live, registry.used(r), now=1000.0) == 0
    assert scaler.tick(live, registry.used(r), now=1020.0) == 0  # not idle long enough yet
    assert scaler.tick(live, registry.used(r), now=1031.0) == 1
    # Then it scales back to its floor, and /stats can show all of it
    stats = scaling_stats(r, dead_after=60)
    assert stats["workers"][0]["target"] == 0 and stats["workers"][0]["slots"] == 4
    assert stats["events"][0] == {**stats["events"][0], "kind": "worker", "from": 3, "to": 0, "reason": "idle for 30 s"}
    assert stats["counters"]["grown"] == 3 and stats["counters"]["shrunk"] == 1


def enqueue_direct(d: Dispatcher, user: int, function_id: str) -> Any:
    """Queue one input as the API does (its shortcut on): the Take when the enqueue step sent it, else None."""
    call_id = f"fc-direct-{next(_call_numbers)}"
    template = TaskSender(d.redis).template(keyspace.TASK_EXECUTE, str(uuid.uuid4()))
    return d.pending.enqueue(
        user, PendingEntry(call_id, function_id, 0, 1), inputs={"0": b"N."}, ttl=60, direct=template
    )


def queued_tasks(r: Redis, worker_id: str) -> list[tuple[str, str, list[Any]]]:
    """The tasks on a worker's Celery queue, oldest first: (task id, task name, arguments)."""
    messages = [json.loads(raw) for raw in reversed(r.lrange(keyspace.worker_queue(worker_id), 0, -1))]
    return [(m["headers"]["id"], m["headers"]["task"], json.loads(m["body"])[0]) for m in messages]


def test_the_api_sends_a_lone_users_task_itself_and_leaves_everything_else_to_the_fair_pass(r: Redis) -> None:
    broker = RecordingBroker()
    d = make_dispatcher(r, broker)
    add_worker(r, "w1", slots=2)
    add_function(r, d, "fa")
    add_function(r, d, "fb")
    # No dispatcher leads: the enqueue step sends nothing (a stopped dispatcher means nothing is dispatched)
    assert enqueue_direct(d, 1, "fa") is None and queued_tasks(r, "w1") == []
    r.delete(keyspace.pending_key(1), keyspace.pending_users_key())
    # A dispatcher leads and user 1 is the only one waiting: the step takes and sends it, in the ledger
    r.set(keyspace.dispatch_leader_key(), "someone", px=60_000)
    sent = enqueue_direct(d, 1, "fa")
    assert sent is not None and sent.queue == keyspace.worker_queue("w1")
    [(task_id, name, args)] = queued_tasks(r, "w1")
    assert (name, args[1:3], args[0]) == (keyspace.TASK_EXECUTE, ["fa", 1], sent.entry.call_id)
    assert r.hexists(keyspace.inflight_key(), task_id) and r.llen(keyspace.pending_key(1)) == 0
    # Another user waits: the step takes nothing, the dispatcher's pass decides who goes first
    submit(d, 1, "fa", 1)  # user 1 waits (queued without the shortcut)
    assert enqueue_direct(d, 2, "fb") is None and len(queued_tasks(r, "w1")) == 1
    assert d.dispatch_pass() == 1 and len(broker.sent) == 1  # one slot left
    # Whoever is left is alone now, but no slot is free: the take refuses and its call stays queued
    (left,) = {int(u) for u in r.smembers(keyspace.pending_users_key())}
    assert enqueue_direct(d, left, "fa" if left == 1 else "fb") is None
    assert r.llen(keyspace.pending_key(left)) == 2 and len(queued_tasks(r, "w1")) == 1


def test_a_direct_enqueue_wakes_no_dispatcher_for_a_lone_user_and_a_refused_take_wakes_it(r: Redis) -> None:
    broker = RecordingBroker()
    d = make_dispatcher(r, broker)
    add_worker(r, "w1", slots=1)
    add_function(r, d, "fa")
    add_function(r, d, "fb")

    def woken() -> int:
        return int(r.delete(keyspace.wake_key()))

    woken()
    assert enqueue_direct(d, 1, "fa") is None and woken() == 1  # no dispatcher leads: it is woken, nothing taken
    r.delete(keyspace.pending_key(1), keyspace.pending_users_key())
    r.set(keyspace.dispatch_leader_key(), "someone", px=60_000)
    assert enqueue_direct(d, 1, "fa") is not None and woken() == 0  # alone, a dispatcher leads: sent, no wake-up
    assert len(queued_tasks(r, "w1")) == 1
    assert enqueue_direct(d, 1, "fa") is None  # the one slot is busy: the take refuses...
    assert woken() == 1 and r.llen(keyspace.pending_key(1)) == 1  # ...so the dispatcher is woken for its pass
    assert enqueue_direct(d, 2, "fb") is None and woken() == 1  # someone else waits: the fair pass decides
    # And a take that leaves work queued (a .map's next task) wakes the dispatcher to send the rest
    r.delete(keyspace.pending_key(2))
    r.srem(keyspace.pending_users_key(), 2)
    add_worker(r, "w2", slots=4)
    woken()  # a new worker wakes it: not what is measured here
    assert enqueue_direct(d, 1, "fa") is not None and woken() == 1  # the older one sent, the new one left
    assert r.llen(keyspace.pending_key(1)) == 1 and len(queued_tasks(r, "w2")) == 1


def test_a_lone_users_task_sent_by_the_api_holds_its_quota(r: Redis) -> None:
    broker = RecordingBroker()
    d = make_dispatcher(r, broker)
    r.set(keyspace.dispatch_leader_key(), "someone", px=60_000)
    add_worker(r, "w1", slots=8)
    add_function(r, d, "fa")
    d.pending.set_quota(1, 2)
    sent = [enqueue_direct(d, 1, "fa") for _ in range(4)]
    assert [t is not None for t in sent] == [True, True, False, False]
    assert len(queued_tasks(r, "w1")) == 2 and r.llen(keyspace.pending_key(1)) == 2


def test_deficit_round_robin_keeps_the_pointer_when_users_come_and_go() -> None:
    drr = DeficitRoundRobin(quantum=10)
    drr.sync([1, 2, 3])
    assert drr.current() == 1 and drr.arrive(weight=1) == 10
    drr.advance()
    drr.sync([1, 3, 4])  # 2 left: the pointer moves on to 3; 4 joins at the tail
    assert drr.ring == [1, 3, 4] and drr.current() == 3
    drr.remove(3)
    assert drr.current() == 4 and 3 not in drr.deficit
    assert jain_index([1, 1, 1]) == 1.0 and round(jain_index([1, 0, 0]), 3) == 0.333


# ---- end to end: real API, dispatchers and workers -------------------------------------------------


class Tenant:
    """One user of a stack, through the HTTP API (several users in one test process)."""

    def __init__(self, stack: Stack, name: str, **fields: int) -> None:
        self.stack = stack
        self.name = name
        self.token = stack.new_user(name, **fields)
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {self.token}"

    def deploy(self, fn: Callable[..., Any], tag: str | None = None, **options: Any) -> str:
        tag = tag or fn.__name__
        body = {
            "name": f"{self.name}-{tag}",
            "functions": [{"tag": tag, "code": protocol.b64(serialize_function(fn)), "options": options}],
        }
        reply = self.http.post(f"{self.stack.url}/v1/apps", json=body, timeout=30)
        assert reply.status_code == 201, reply.text
        return reply.json()["functions"][tag]

    def submit(self, function_id: str, *args: Any) -> requests.Response:
        """Submit one call; a 429 (the per-token rate limit) is waited out and sent again, as the SDK does."""
        body = {"inputs": [{"args": protocol.b64(serialize_args(args, {}))}]}
        while True:
            reply = self.http.post(f"{self.stack.url}/v1/functions/{function_id}/calls", json=body, timeout=30)
            if reply.status_code != 429:
                return reply
            time.sleep(float(reply.headers.get("Retry-After", "0.1")))

    def call(self, function_id: str, *args: Any) -> str:
        reply = self.submit(function_id, *args)
        assert reply.status_code == 201, reply.text
        return reply.json()["call_id"]

    def result(self, call_id: str, timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = self.http.get(f"{self.stack.url}/v1/calls/{call_id}/outputs", params={"timeout": 5}, timeout=30)
            assert reply.status_code == 200, reply.text
            for envelope in reply.json()["outputs"]:
                assert envelope[protocol.OUT_STATUS] == CallStatus.COMPLETED.value, envelope
                return deserialize(protocol.unb64(envelope[protocol.OUT_DATA]))
        raise AssertionError(f"no output for {call_id} within {timeout} s")

    def user_id(self) -> int:
        with database(self.stack) as db, db.read() as session:
            return session.scalar(select(UserRecord.id).where(UserRecord.name == self.name))


@contextlib.contextmanager
def database(stack: Stack) -> Iterator[Database]:
    db = Database(stack.env["MINIMODAL_DATABASE_URL"])
    try:
        yield db
    finally:
        db.dispose()


def inputs_of(stack: Stack, call_ids: list[str]) -> dict[str, InputRecord]:
    with database(stack) as db, db.read() as session:
        rows = session.scalars(select(InputRecord).where(InputRecord.call_id.in_(call_ids))).all()
        return {row.call_id: row for row in rows}


@pytest.fixture
def make_stack(
    redis_server: RedisServer, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Stack]]:
    """Start a stack of an API, ``dispatchers`` dispatchers and the named workers (each with its own env)."""
    stacks: list[Stack] = []

    def start(workers: dict[str, dict[str, str]], *, dispatchers: int = 1, env: dict[str, str] | None = None) -> Stack:
        home = tmp_path / f"home{len(stacks)}"
        home.mkdir()
        port = free_port()
        redis_url = redis_server.url.rsplit("/", 1)[0] + f"/{STACK_DB}"
        Redis.from_url(redis_url).flushdb()
        full_env = {
            **os.environ,
            "MINIMODAL_HOME": str(home),
            "MINIMODAL_REDIS_URL": redis_url,
            # PostgreSQL under `make test-postgres`
            "MINIMODAL_DATABASE_URL": stack_database_url(request, f"mm_sched_{len(stacks)}")
            or f"sqlite:///{home / 'mm.db'}",
            "MINIMODAL_API_PORT": str(port),
            "MINIMODAL_SERVER_URL": f"http://127.0.0.1:{port}",
            "MINIMODAL_WORKER_RUNTIME": "process",
            "MINIMODAL_HEARTBEAT_SECONDS": "0.5",
            "PYTHONPATH": str(ROOT),
            **(env or {}),
        }
        full_env.pop("MINIMODAL_TOKEN", None)
        stack = Stack(home, full_env, f"http://127.0.0.1:{port}", redis_server, bootstrap_admin(full_env))
        stack.redis_client = Redis.from_url(redis_url)
        stacks.append(stack)
        stack.spawn("api", "api")
        for i in range(dispatchers):
            stack.spawn(f"dispatcher{i}", "dispatcher")
        for name, worker_env in workers.items():
            stack.spawn(f"worker-{name}", "worker", extra_env={"MINIMODAL_WORKER_ID": name, **worker_env})

        def ready() -> bool:
            for name, process in stack.processes.items():
                if process.poll() is not None:
                    raise AssertionError(f"{name} exited at start:\n{stack.log(name)[-3000:]}")
            with contextlib.suppress(requests.RequestException):
                registered = {k.decode() for k in stack.redis_client.hkeys(keyspace.workers_key())}
                return requests.get(stack.url + "/health", timeout=1).ok and registered == set(workers)
            return False

        wait_for(ready, 60, "the API to answer and every worker to register")
        return stack

    yield start
    for stack in stacks:
        stack.stop()


@pytest.mark.timeout(180)
def test_bob_starts_before_alices_next_three_calls_on_two_worker_slots(make_stack: Callable[..., Stack]) -> None:
    # Given one worker with 2 slots, and Alice's 500 calls of 0.2 s queued
    stack = make_stack({"w": {"MINIMODAL_WORKER_CONCURRENCY": "2"}})
    alice, bob = Tenant(stack, "alice"), Tenant(stack, "bob")
    alice_fn, bob_fn = alice.deploy(sched.nap), bob.deploy(sched.nap)
    alice_calls = [alice.call(alice_fn, 0.2) for _ in range(500)]
    # When Bob submits one call
    bob_call = bob.call(bob_fn, 0.2)
    bob.result(bob_call)

    def alice_started_since_bob() -> list[Any]:
        rows = inputs_of(stack, [*alice_calls, bob_call])
        submitted = rows[bob_call].created_at
        return sorted(
            r.started_at for c, r in rows.items() if c != bob_call and r.started_at and r.started_at > submitted
        )

    wait_for(lambda: len(alice_started_since_bob()) >= 3, 30, "Alice's next three calls to start")
    # Then his call started before the third of Alice's calls that started after he submitted
    bob_started = inputs_of(stack, [bob_call])[bob_call].started_at
    assert bob_started < alice_started_since_bob()[2]
    # And her backlog waited in her pending queue: the broker never held more than the free slots.
    # (Pending is read first: what started after it only makes the right-hand side smaller. A slow machine
    # drains more of her calls before this line, so the count of started ones, not a fixed number, bounds it.)
    pending = int(stack.redis_client.hget(keyspace.pending_inputs_key(), alice.user_id()) or 0)
    in_broker = stack.redis_client.llen(keyspace.worker_queue("w"))
    started = sum(1 for r in inputs_of(stack, alice_calls).values() if r.started_at is not None)
    assert in_broker <= 2
    assert pending > 0 and pending + started + 2 >= len(alice_calls), (pending, started)


@pytest.mark.timeout(180)
def test_the_api_sends_a_lone_users_call_to_a_free_worker_without_the_dispatchers_pass(
    make_stack: Callable[..., Stack],
) -> None:
    # Given a stack whose dispatcher is stopped, though its lease says one leads (it died a moment ago)
    stack = make_stack({"w": {"MINIMODAL_WORKER_CONCURRENCY": "2"}}, env={"MINIMODAL_DIRECT_DISPATCH": "1"})
    stop_process(stack.processes.pop("dispatcher0"))
    stack.redis_client.set(keyspace.dispatch_leader_key(), "a-dispatcher-that-died", px=120_000)
    alice = Tenant(stack, "alice")
    fn = alice.deploy(sched.nap)
    # When Alice, the only user with work, submits a call: the API placed and sent it itself
    assert alice.result(alice.call(fn, 0.0))["worker"] == "w"
    # But while another user waits, the API sends nothing: what is queued waits for a dispatcher's pass
    bob = Tenant(stack, "bob")
    stack.redis_client.delete(keyspace.dispatch_leader_key())
    waiting = bob.call(bob.deploy(sched.nap), 0.0)
    stack.redis_client.set(keyspace.dispatch_leader_key(), "a-dispatcher-that-died", px=120_000)
    queued = alice.call(fn, 0.0)
    assert stack.redis_client.llen(keyspace.pending_key(alice.user_id())) == 1
    stack.redis_client.delete(keyspace.dispatch_leader_key())  # the lease of the dead one ends
    stack.spawn("dispatcher0", "dispatcher")
    assert alice.result(queued)["worker"] == bob.result(waiting)["worker"] == "w"


@pytest.mark.timeout(180)
def test_weighted_users_share_the_workers_and_never_pass_their_quota(make_stack: Callable[..., Stack]) -> None:
    # Given three users with weights 1, 1, 2 and quota 4, whose calls are all queued before dispatch
    # starts, and a 4-slot pool
    stack = make_stack({"w": {"MINIMODAL_WORKER_CONCURRENCY": "4"}})
    stop_process(stack.processes.pop("dispatcher0"))
    weights = {"ann": 1, "ben": 1, "cat": 2}
    tenants = {name: Tenant(stack, name, quota=4, weight=w) for name, w in weights.items()}
    calls = {}
    for name, tenant in tenants.items():
        fn = tenant.deploy(sched.nap)
        calls[name] = [tenant.call(fn, 0.05) for _ in range(120)]
    # When the dispatcher starts (its rebuild finds the queues intact: nothing is added twice)
    stack.spawn("dispatcher0", "dispatcher")
    everyone = [c for cs in calls.values() for c in cs]
    wait_for(lambda: sum(1 for r in inputs_of(stack, everyone).values() if r.started_at) >= 200, 90, "200 starts")
    # Then over the first 160 starts (everyone still has work) the shares follow the weights
    rows = inputs_of(stack, everyone)
    owner = {c: name for name, cs in calls.items() for c in cs}
    first = sorted((r.started_at, owner[c]) for c, r in rows.items() if r.started_at)[:160]
    counts = Counter(name for _, name in first)
    shares = {name: counts[name] / len(first) for name in weights}
    print(
        "\n"
        + share_table(
            "start shares of the first 160 calls",
            dict(enumerate(weights.values(), 1)),
            dict(enumerate(shares.values(), 1)),
        )
    )
    for name, weight in weights.items():
        expected = weight / sum(weights.values())
        assert abs(shares[name] - expected) <= 0.1 * expected, shares
    assert jain_index(shares[n] / weights[n] for n in weights) >= 0.95
    # And at every dispatch each user had at most their quota in flight
    log = stack.redis_client.xrange(keyspace.dispatch_log_key())
    assert len(log) >= 200
    assert all(int(f[b"running"]) <= int(f[b"quota"]) == 4 for _, f in log)
    assert stack.redis_client.hlen(keyspace.inflight_key()) <= 4


@pytest.mark.timeout(120)
def test_a_user_with_quota_two_never_runs_more_than_two_calls_at_once(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack({"w": {"MINIMODAL_WORKER_CONCURRENCY": "4"}})
    user = Tenant(stack, "quoted", quota=2)
    fn = user.deploy(sched.nap)
    results = [user.result(c) for c in [user.call(fn, 0.2) for _ in range(10)]]
    # The calls' own start and end times: never more than 2 overlap, and 2 do
    edges = sorted([(r["start"], 1) for r in results] + [(r["end"], -1) for r in results])
    running, most = 0, 0
    for _, step in edges:
        running += step
        most = max(most, running)
    assert most == 2


@pytest.mark.timeout(180)
def test_two_cpu_calls_run_only_on_the_large_worker_while_one_cpu_calls_use_both(
    make_stack: Callable[..., Stack], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a worker offering 4 CPUs and one offering 1 CPU
    stack = make_stack(
        {
            "large": {"MINIMODAL_WORKER_CPU": "4", "MINIMODAL_WORKER_CONCURRENCY": "4"},
            "small": {"MINIMODAL_WORKER_CPU": "1", "MINIMODAL_WORKER_CONCURRENCY": "4"},
        }
    )
    user = Tenant(stack, "placed", quota=10)
    one, two = user.deploy(sched.nap, tag="one", cpu=1), user.deploy(sched.nap, tag="two", cpu=2)
    # When 1-CPU and 2-CPU calls are submitted together
    ones = [user.call(one, 0.3) for _ in range(10)]
    twos = [user.call(two, 0.3) for _ in range(6)]
    # Then 2-CPU calls ran on the large worker only, and 1-CPU calls on both
    assert {user.result(c)["worker"] for c in twos} == {"large"}
    assert {user.result(c)["worker"] for c in ones} == {"large", "small"}
    # And a call that no worker can hold fails at submit with a typed error naming the resource
    greedy = user.deploy(sched.nap, tag="greedy", cpu=8)
    reply = user.submit(greedy, 0)
    assert reply.status_code == 400
    assert reply.json()["error"]["type"] == "InsufficientResourcesError"
    assert "cpu=8 cores (the largest worker has 4)" in reply.json()["error"]["message"]
    gpu = user.deploy(sched.nap, tag="gpu", gpu="T4")
    assert "gpu=T4:1" in user.submit(gpu, 0).json()["error"]["message"]
    # And through the SDK it is raised as InsufficientResourcesError
    for key in ("MINIMODAL_HOME", "MINIMODAL_SERVER_URL"):
        monkeypatch.setenv(key, stack.env[key])
    monkeypatch.setenv("MINIMODAL_TOKEN", user.token)
    with sched.app.run(), pytest.raises(InsufficientResourcesError, match="cpu=64"):
        sched.greedy.remote()
    # When a worker with a T4 joins, the GPU call is accepted and runs there
    stack.spawn("worker-gpu", "worker", extra_env={"MINIMODAL_WORKER_ID": "gpu", "MINIMODAL_WORKER_GPU": "T4:1"})
    wait_for(lambda: stack.redis_client.hexists(keyspace.workers_key(), "gpu"), 30, "the GPU worker to register")
    assert user.result(user.call(gpu, 0))["worker"] == "gpu"


@pytest.mark.timeout(180)
@pytest.mark.chaos
def test_calls_survive_a_dispatcher_restart_after_redis_lost_the_pending_queues(
    make_stack: Callable[..., Stack],
) -> None:
    # Given calls accepted while no dispatcher ran, whose pending queues Redis then lost
    stack = make_stack({"w": {}}, env={"MINIMODAL_REBUILD_GRACE_SECONDS": "0.5"})
    stop_process(stack.processes.pop("dispatcher0"))
    user = Tenant(stack, "survivor")
    fn = user.deploy(sched.nap)
    calls = [user.call(fn, 0.01) for _ in range(30)]
    r = stack.redis_client
    r.delete(keyspace.pending_key(user.user_id()), keyspace.pending_users_key(), keyspace.pending_inputs_key())
    time.sleep(0.6)  # older than the rebuild grace
    # When a dispatcher starts
    stack.spawn("dispatcher0", "dispatcher")
    # Then every call runs, exactly once
    assert len([user.result(c) for c in calls]) == 30
    assert all(r.xlen(keyspace.outputs_key(c)) == 1 for c in calls)
    wait_for(
        lambda: all(i.status == CallStatus.COMPLETED.value for i in inputs_of(stack, calls).values()), 30, "statuses"
    )
    assert {i.attempts for i in inputs_of(stack, calls).values()} == {1}
    assert int(r.hget(keyspace.dispatch_stats_key(), "rebuilt")) == 30


@pytest.mark.timeout(180)
@pytest.mark.chaos
def test_a_standby_dispatcher_finishes_the_work_when_the_leader_is_killed(make_stack: Callable[..., Stack]) -> None:
    # Given two dispatchers (one leads) and a stream of calls
    stack = make_stack(
        {"w": {}}, dispatchers=2, env={"MINIMODAL_DISPATCHER_LEASE_SECONDS": "1.5", "MINIMODAL_LOST_TASK_SECONDS": "3"}
    )
    user = Tenant(stack, "steady", quota=4)
    fn = user.deploy(sched.nap)
    calls = [user.call(fn, 0.05) for _ in range(80)]
    user.result(calls[10])
    # When the leader is killed outright
    r = stack.redis_client
    leader = r.get(keyspace.dispatch_leader_key()).decode()
    pid = int(leader.split("-")[-2])
    name = next(n for n, p in stack.processes.items() if p.pid == pid)
    os.killpg(pid, signal.SIGKILL)
    stack.processes.pop(name).wait()
    # Then the standby takes the lease and every call still runs exactly once
    assert len([user.result(c) for c in calls]) == 80
    assert r.get(keyspace.dispatch_leader_key()).decode() != leader
    assert all(r.xlen(keyspace.outputs_key(c)) == 1 for c in calls)


@pytest.mark.timeout(120)
def test_workers_and_pools_scale_up_for_waiting_calls_and_down_after_idle(make_stack: Callable[..., Stack]) -> None:
    # Given a worker that scales its concurrency down after 1 s idle, and a function that keeps one
    # runner warm, may run at most 3 at once and stops idle runners after 2 s
    stack = make_stack({"w": {"MINIMODAL_WORKER_CONCURRENCY": "4"}}, env={"MINIMODAL_WORKER_SCALEDOWN_WINDOW": "1"})
    user = Tenant(stack, "scaled", quota=4)
    fn = user.deploy(sched.nap, min_containers=1, max_containers=3, scaledown_window=2)
    # When 6 calls wait at once
    calls = [user.call(fn, 0.5) for _ in range(6)]
    assert len({user.result(c)["pid"] for c in calls}) == 3  # three runners served them, never a fourth
    r = stack.redis_client
    log = r.xrange(keyspace.dispatch_log_key())
    assert max(int(f[b"fn_running"]) for _, f in log) == 3
    # Then the worker's concurrency grew to 3 and, once idle, shrank; the pool went back to its floor of 1

    def settled() -> dict[str, Any] | None:
        stats = scaling_stats(r, dead_after=2.5)
        function = next((f for f in stats["functions"] if f["id"] == fn), None)
        kinds = Counter((e["kind"], e.get("change") or e["reason"]) for e in stats["events"])
        done = (
            function
            and function["runners"] == 1
            and kinds[("runners", "stop")] >= 2
            and stats["workers"][0]["target"] == 0
        )
        return stats if done else None

    stats = wait_for(settled, 30, "the pool and the worker to scale down")
    events = stats["events"]
    worker_steps = [(e["from"], e["to"]) for e in reversed(events) if e["kind"] == "worker"]
    assert worker_steps[:3] == [(0, 1), (1, 2), (2, 3)] and worker_steps[-1][1] == 0
    # (a runner for the floor may start while the calls start theirs: at least 3 starts, then back to 1)
    assert sum(1 for e in events if e["kind"] == "runners" and e["change"] == "start") >= 3
    assert stats["counters"]["dispatched"] == 6


def test_minimodal_user_set_writes_quota_and_weight_where_the_dispatcher_reads_them(stack: Stack) -> None:
    # Given a user created with the default quota and weight
    stack.new_user("weighty")
    with database(stack) as db, db.read() as session:
        user_id = session.scalar(select(UserRecord.id).where(UserRecord.name == "weighty"))
    client = stack.redis_client or stack.redis.client
    assert client.hget(keyspace.weight_key(), user_id) == b"1"
    # When an admin changes both with the CLI
    result = subprocess.run(
        [sys.executable, "-m", "minimodal", "user", "set", "weighty", "--quota", "7", "--weight", "3"],
        env={**stack.env, "MINIMODAL_TOKEN": stack.admin_token},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Then the hashes the dispatcher reads every pass hold the new values (no restart needed; the
    # in-process test of a weight change shows the next pass uses them)
    assert result.returncode == 0, result.stderr
    assert client.hget(keyspace.quota_key(), user_id) == b"7"
    assert client.hget(keyspace.weight_key(), user_id) == b"3"


@pytest.mark.timeout(600)
def test_the_fairness_bench_runs_end_to_end_at_a_tiny_size(tmp_path: Path) -> None:
    # The full run (30 s of shares, 500-call starvation, 100 x 100 against 1 x 10,000) is
    # `python -m bench.fairness`; here every scenario runs small, and only its outcome is checked.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINIMODAL_")}
    result = subprocess.run(
        [PYTHON, "-m", "bench.fairness", "--seconds", "3", "--users", "3", "--calls", "4", "--backlog", "30"]
        + ["--name", "fairness-tiny-test"],
        env={**env, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    figures = json.loads((ROOT / "bench" / "results" / "fairness-tiny-test.json").read_text())
    assert set(figures) == {"shares", "starvation", "many_users", "one_user", "scale_ratio"}
    assert figures["shares"]["within_10_percent"] and figures["shares"]["jain_index"] >= 0.95
    assert figures["starvation"]["alice_starts_before_bob"] <= 2
    assert figures["many_users"]["inputs"] == figures["one_user"]["inputs"] == 12
    assert "Jain's index" in result.stdout and "calls/s" in result.stdout
