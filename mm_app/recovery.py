"""Putting scheduling state right: rebuild pending queues from the database, reclaim tasks that will not end.

The database is the source of truth for what was accepted: an input row with status ``queued`` or
``dispatched`` (new, or waiting to be tried again) is work to do. In Redis such an input is, at every
instant, in one of four places: on its way in (the API wrote the row, not yet the entry: the
``rebuild_grace_seconds`` window), in its user's pending queue, in the in-flight ledger (a retry waiting
out its backoff too), or already in its call's output stream (the worker
publishes the output before it removes the task from the ledger, and the recorder writes the
terminal status a little later). Anything else was lost with Redis state, and :func:`rebuild` puts it
back at the head of its user's queue. It reads the pending queues and the ledger in one transaction
and the output streams after, so an input moving along that path is never missed.

A task in the ledger whose worker stopped beating, or that its live worker does not hold (running or
received) ``lost_task_seconds`` after dispatch while its message is not waiting in that worker's
queue (a dispatcher killed between the take and the send, a message lost with a broker connection),
is reclaimed: its reservation is released and its inputs without an
output go back to the head of the queue. That is at-least-once: a worker that was only stalled may
still run an input again (the worker publishes one output per input, so the caller sees one result).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from datetime import timedelta

from redis import Redis
from sqlalchemy import select

from minimodal import protocol
from minimodal.protocol import CallStatus
from mm_app import keyspace
from mm_app.keyspace import InflightTask, PendingEntry

from . import registry, sandboxes
from .database import Database
from .models import CallRecord, FunctionRecord, InputRecord, SandboxRecord, UserRecord, utcnow
from .pending import PendingQueues

logger = logging.getLogger("minimodal.dispatcher")


def output_indexes(redis: Redis, call_id: str) -> set[int]:
    """Indexes of a call's inputs that have an output in its stream."""
    done = set()
    for _, fields in redis.xrange(keyspace.outputs_key(call_id)):
        raw = fields.get(protocol.OUT_INDEX.encode())
        if raw is not None:
            done.add(int(raw))
    return done


def runs(indexes: list[int]) -> list[tuple[int, int]]:
    """Sorted indexes as half-open runs: [1, 2, 3, 7] -> [(1, 4), (7, 8)]."""
    out: list[tuple[int, int]] = []
    for i in sorted(indexes):
        if out and out[-1][1] == i:
            out[-1] = (out[-1][0], i + 1)
        else:
            out.append((i, i + 1))
    return out


def unfinished_runs(redis: Redis, task: InflightTask) -> list[tuple[int, int]]:
    done = output_indexes(redis, task.call_id)
    return runs([i for i in range(task.start, task.end) if i not in done])


def ledger(redis: Redis) -> dict[str, InflightTask]:
    return {k.decode(): InflightTask.decode(v) for k, v in redis.hgetall(keyspace.inflight_key()).items()}


def restore_limits(db: Database, pending: PendingQueues) -> int:
    """Write every user's quota and weight from the database to Redis (they may have been flushed)."""
    with db.read() as session:
        users = session.execute(select(UserRecord.id, UserRecord.quota, UserRecord.weight)).all()
    if users:
        pipe = pending.redis.pipeline(transaction=False)
        pipe.hset(keyspace.quota_key(), mapping={str(u.id): u.quota for u in users})
        pipe.hset(keyspace.weight_key(), mapping={str(u.id): u.weight for u in users})
        pipe.execute()
    return len(users)


def load_needs(db: Database, pending: PendingQueues, function_id: str) -> None:
    """A function's needs from its database row, for one deployed before Redis knew them (or a sandbox's)."""
    if protocol.is_sandbox(function_id):
        with db.read() as session:
            record = session.get(SandboxRecord, function_id)
            spec = dict(record.spec) if record is not None else {}
        pending.set_needs(function_id, sandboxes.needs(spec))  # an ended one's task does nothing and drops it
        return
    with db.read() as session:
        found = session.execute(
            select(FunctionRecord.options, FunctionRecord.queue).where(FunctionRecord.id == function_id)
        ).first()
    options, queue = (found.options, found.queue) if found else ({}, keyspace.QUEUE_CPU)
    try:
        need = registry.needs_of(options or {}, queue)
    except ValueError:  # a bad gpu option stored before it was checked: run it without one
        need = registry.needs_of({k: v for k, v in (options or {}).items() if k != "gpu"}, queue)
    pending.set_needs(function_id, need)


def rebuild(db: Database, pending: PendingQueues, *, grace: float) -> int:
    """Re-queue accepted inputs that Redis lost; return how many inputs were put back."""
    redis = pending.redis
    restore_limits(db, pending)
    cutoff = utcnow() - timedelta(seconds=grace)
    with db.read() as session:
        rows = session.execute(
            select(InputRecord.call_id, InputRecord.idx, CallRecord.function_id, CallRecord.user_id)
            .join(CallRecord, CallRecord.id == InputRecord.call_id)
            .where(
                InputRecord.status.in_([CallStatus.QUEUED.value, CallStatus.DISPATCHED.value]),
                InputRecord.created_at < cutoff,
            )
        ).all()
    if not rows:
        return 0
    users = sorted({r.user_id for r in rows})
    with redis.pipeline(transaction=True) as pipe:  # queues and ledger at one instant
        for user_id in users:
            pipe.lrange(keyspace.pending_key(user_id), 0, -1)
        pipe.hgetall(keyspace.inflight_key())
        snapshot = pipe.execute()
    covered: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for raw_list in snapshot[:-1]:
        for raw in raw_list:
            entry = PendingEntry.decode(raw)
            covered[entry.call_id].append((entry.start, entry.end))
    for raw in snapshot[-1].values():
        task = InflightTask.decode(raw)
        covered[task.call_id].append((task.start, task.end))
    lost: dict[str, list[tuple[int, str, int]]] = defaultdict(list)  # call -> (idx, function, user)
    for r in rows:
        if not any(s <= r.idx < e for s, e in covered.get(r.call_id, ())):
            lost[r.call_id].append((r.idx, r.function_id, r.user_id))
    put_back = 0
    by_user: dict[int, list[PendingEntry]] = defaultdict(list)
    for call_id, items in sorted(lost.items()):
        done = output_indexes(redis, call_id)
        todo = [idx for idx, _, _ in items if idx not in done]
        function_id, user_id = items[0][1], items[0][2]
        for start, end in runs(todo):
            by_user[user_id].append(PendingEntry(call_id, function_id, start, end))
            put_back += end - start
    for user_id, entries in by_user.items():
        pending.requeue(user_id, entries)
    if put_back:
        logger.warning("rebuilt %d queued input(s) missing from Redis from the database", put_back)
    return put_back


def reclaim_dead_workers(pending: PendingQueues, dead_after: float, db: Database | None = None) -> list[str]:
    """Reclaim every task of workers that stopped beating, then forget those workers; return their ids.

    A sandbox that had started there ended with its worker (its container with the worker's socket): it is
    recorded as terminated and not queued again; one that never started is queued again like any input.
    """
    redis = pending.redis
    _, dead = registry.capacities(redis, dead_after)
    if not dead:
        return []
    for task_id, task in ledger(redis).items():
        if task.worker_id in dead:
            todo = unfinished_runs(redis, task)
            if protocol.is_sandbox(task.call_id) and sandboxes.lost(db, redis, task.call_id, task.worker_id):
                todo = []
            if pending.reclaim(task_id, task.user_id, todo, counter="reclaimed"):
                logger.warning(
                    "worker %s is gone: re-queued %d input(s) of %s",
                    task.worker_id,
                    sum(e - s for s, e in todo),
                    task_id,
                )
    for worker_id in dead:
        registry.forget(redis, worker_id)
        logger.warning("worker %s stopped beating; forgotten", worker_id)
    return dead


# kombu's Redis transport keeps delivered, unacknowledged messages in this hash (delivery tag -> message)
# and zset; they are kombu's keys, not ours. A worker whose broker connection broke leaves its messages
# there, to be redelivered only after the visibility timeout (25 h).
KOMBU_UNACKED = "unacked"
KOMBU_UNACKED_INDEX = "unacked_index"


def _waiting_in_queue(redis: Redis, task_id: str, queue: str) -> bool:
    """Is the task's message still in its worker's queue (sent, not yet fetched)?"""
    needle = task_id.encode()
    return any(needle in raw for raw in redis.lrange(queue, 0, -1))


def _drop_orphan(redis: Redis, task_id: str) -> None:
    """Remove a reclaimed task's message from kombu's unacked set, so that it is not redelivered in 25 h."""
    needle = task_id.encode()
    for tag, raw in redis.hgetall(KOMBU_UNACKED).items():
        if needle in raw:
            pipe = redis.pipeline(transaction=True)
            pipe.hdel(KOMBU_UNACKED, tag)
            pipe.zrem(KOMBU_UNACKED_INDEX, tag)
            pipe.execute()


def reclaim_lost_tasks(pending: PendingQueues, lost_after: float) -> int:
    """Reclaim tasks that a live worker has not started ``lost_after`` s after dispatch (never sent)."""
    redis = pending.redis
    tasks = ledger(redis)
    if not tasks:
        return 0
    seconds, micros = redis.time()
    now = seconds + micros / 1e6
    old = {t: task for t, task in tasks.items() if now - task.at > lost_after}
    if not old:
        return 0
    reclaimed = 0
    beats: dict[str, dict | None] = {}
    for task_id, task in old.items():
        if task.worker_id not in beats:
            raw = redis.get(keyspace.worker_key(task.worker_id))
            beats[task.worker_id] = json.loads(raw) if raw else None
        info = beats[task.worker_id]
        if info is None or task_id in info.get("active", []):
            continue  # no word from the worker (the dead-worker sweep decides it), or it holds the task
        if _waiting_in_queue(redis, task_id, keyspace.worker_queue(task.worker_id)):
            continue  # sent, not fetched yet: late, not lost
        if pending.reclaim(task_id, task.user_id, unfinished_runs(redis, task), counter="lost"):
            _drop_orphan(redis, task_id)
            reclaimed += 1
            logger.warning("task %s on %s was never started; re-queued", task_id, task.worker_id)
    return reclaimed
