"""The dispatcher: moves work from per-user pending queues to the workers, fairly and only where it fits.

Each pass goes round the users with pending work by weighted deficit round robin
(:mod:`.fairshare`): a user is served while its deficit covers its next task's estimated run time,
skipping users at their concurrency quota or whose next call fits nowhere yet. Every take is one atomic
Lua step (:mod:`.pending`) that also picks the worker (best fit on free slots, cpu, memory, GPUs and
runtime) and reserves the capacity there; the task is then sent to that worker's own Celery queue.
Nothing is sent without a free slot for it, so a user's backlog stays in its pending queue, where
the next pass can still put another user first; the broker never holds more than the free slots.

A call that fits no worker now although one could hold it when idle (a 4-CPU call while 1-CPU calls
keep a worker busy) gets that worker *held*: other users may use only what the held call leaves free,
so the worker drains until the large call fits instead of being refilled by small ones.

Several dispatchers may run. One holds a lease in Redis and dispatches; the others wait to take over
when it stops renewing. The take step is atomic regardless, so even two active dispatchers never hand
out an input twice or overfill a worker (``dispatcher_lease_seconds=0`` runs without a lease). The
leader also runs the periodic work: the autoscaler (:mod:`.scaler`), reclaiming tasks of dead workers
and tasks never started, and rebuilding pending queues from the database (:mod:`.recovery`) when it
takes the lead and every few minutes.

One Celery queue per worker, never per user: kombu's Redis transport slows down with the number of
queues it polls (../shared/reference/celery_notes.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from redis import Redis

from minimodal import config, protocol
from mm_app import keyspace
from mm_app.keyspace import WorkerCapacity

from . import lua, recovery, registry
from .broker import TaskSender
from .database import Database
from .fairshare import DeficitRoundRobin
from .pending import Hold, PendingQueues, Policy
from .scaler import Autoscaler

logger = logging.getLogger("minimodal.dispatcher")

REBUILD_EVERY = 300.0  # seconds between rebuilds from the database while leading (also on taking the lead)
LOST_EVERY = 5.0  # seconds between sweeps for tasks that were dispatched and never started
MAX_STEPS = 100_000  # ring visits in one pass, a guard: a pass ends long before in practice


def send_take(sender: Any, take: Any, user: int, task_id: str, producer: Any = None) -> None:
    """Send a taken task to the queue of the worker it was placed on, with its ledger key as task id."""
    entry = take.entry
    if protocol.is_sandbox(entry.call_id):  # a sandbox: placed like a call, its task is its whole life
        sender.send_task(
            keyspace.TASK_SANDBOX, args=[entry.call_id, user], queue=take.queue, task_id=task_id, producer=producer
        )
        return
    sender.send_task(
        keyspace.TASK_EXECUTE,
        args=[entry.call_id, entry.function_id, user, entry.start, entry.end],
        queue=take.queue,
        task_id=task_id,
        producer=producer,
    )


class Lease:
    """Leadership among dispatchers: a Redis key with an expiry, renewed by its holder (no lease when ttl <= 0)."""

    def __init__(self, redis: Redis, holder: str, ttl: float) -> None:
        self.redis = redis
        self.holder = holder
        self.ttl = ttl
        self.held = False
        self._renewed = 0.0
        self._renew = lua.Script(redis, "lease_renew")
        self._release = lua.Script(redis, "lease_release")

    def hold(self) -> bool:
        """Keep or take the lease; True while this dispatcher leads."""
        if self.ttl <= 0:
            return True
        now = time.monotonic()
        if self.held and now - self._renewed < self.ttl / 3:
            return True
        ms = int(self.ttl * 1000)
        if self.held:
            self.held = bool(
                self._renew({"lease": keyspace.dispatch_leader_key()}, {"holder": self.holder, "ttl_ms": ms})
            )
        else:
            self.held = bool(self.redis.set(keyspace.dispatch_leader_key(), self.holder, nx=True, px=ms))
        if self.held:
            self._renewed = now
        return self.held

    def release(self) -> None:
        if self.ttl > 0 and self.held:
            with contextlib.suppress(Exception):
                self._release({"lease": keyspace.dispatch_leader_key()}, {"holder": self.holder})
        self.held = False


class Dispatcher:
    def __init__(
        self,
        redis: Redis,
        sender: Any,
        db: Database | None = None,
        *,
        policy: Policy | None = None,
        default_weight: int = 1,
        lease_seconds: float = 0.0,
        lost_after: float = 60.0,
        rebuild_grace: float = 10.0,
        scaledown_window: float = 60.0,
        dispatcher_id: str | None = None,
    ) -> None:
        self.redis = redis
        self.sender = sender
        self.db = db
        self.policy = policy or Policy()
        self.pending = PendingQueues(redis, self.policy)
        self.default_weight = default_weight
        self.id = dispatcher_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.lease = Lease(redis, self.id, lease_seconds)
        self.lost_after = lost_after
        self.rebuild_grace = rebuild_grace
        self.drr = DeficitRoundRobin(quantum=self.policy.quantum_us)
        self.head_cost: dict[int, int] = {}  # user -> estimated cost of its next task, as the take step said
        self.held: dict[str, Hold] = {}  # worker id -> the large call it is drained for
        self.scaler = Autoscaler(
            redis, min_slots=self.policy.min_slots, window=scaledown_window, events_length=self.policy.events_length
        )
        self.dispatched = 0
        self.leading = False
        self._last_tick = 0.0
        self._last_lost = 0.0
        self._last_rebuild = 0.0
        self._warned: dict[str, float] = {}

    @classmethod
    def from_config(cls, redis: Redis, sender: Any, db: Database | None = None) -> Dispatcher:
        return cls(
            redis,
            sender,
            db,
            policy=Policy.from_config(),
            default_weight=config.get("default_weight"),
            lease_seconds=config.get("dispatcher_lease_seconds"),
            lost_after=config.get("lost_task_seconds"),
            rebuild_grace=config.get("rebuild_grace_seconds"),
            scaledown_window=config.get("worker_scaledown_window"),
        )

    # ---- one pass ----

    def _lent(self, users: set[int], now: int) -> dict[int, int]:
        """Per user, the inputs now waiting on their children (mm_app/tasks/forward.py), unexpired."""
        if not users:
            return {}
        ordered = sorted(users)
        with self.redis.pipeline(transaction=False) as pipe:
            for user in ordered:
                pipe.zcount(keyspace.lent_key(user), now, "+inf")
            counts = pipe.execute()
        return {u: int(c) for u, c in zip(ordered, counts, strict=True) if c}

    def dispatch_pass(self) -> int:
        """Dispatch until every free slot is used or no waiting user can take one; return tasks sent."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.smembers(keyspace.pending_users_key())
        pipe.hgetall(keyspace.running_key())
        pipe.hgetall(keyspace.quota_key())
        pipe.hgetall(keyspace.weight_key())
        pipe.time()
        pipe.zrange(keyspace.workers_seen_key(), 0, -1, withscores=True)
        pipe.hgetall(keyspace.workers_key())
        pipe.hgetall(keyspace.worker_used_key())
        users_raw, running_raw, quota_raw, weight_raw, now, seen, registered, used_raw = pipe.execute()
        users = {int(u) for u in users_raw}
        self.drr.sync(users)
        live, _ = registry.split_live(now, seen, registered, dead_after=self.policy.dead_after)
        used = registry.parse_used(used_raw)
        self.held = {w: h for w, h in self.held.items() if w in live and h.user_id in users}
        free = sum(max(0, c.open_slots - used.get(w, {}).get("slots", 0)) for w, c in live.items())
        if not users or free <= 0:
            return 0
        quota = {int(k): int(v) for k, v in quota_raw.items()}
        running = {int(k): int(v) for k, v in running_raw.items()}
        # Slots lent by parents waiting on their children do not count (as in the take script). They can
        # matter only to a user this pass could bring to its quota (at most `free` takes): asking every
        # waiting user cost one ZCOUNT each per pass, the most of a pass with 1,000 users (bench.curves).
        near = {u for u in users if running.get(u, 0) + free >= quota.get(u, self.policy.default_quota)}
        for lender, n in self._lent(near, int(now[0])).items():
            if lender in running:
                running[lender] -= n
        weight = {int(k): int(v) for k, v in weight_raw.items()}
        blocked = {u for u in users if running.get(u, 0) >= quota.get(u, self.policy.default_quota)}
        waiting = users - blocked  # users in the ring that may still be served in this pass
        self.head_cost = {u: c for u, c in self.head_cost.items() if u in users}
        idle = 0  # visits in a row where nobody could be served for lack of budget
        sent = 0
        with contextlib.ExitStack() as stack:
            producer = None
            for _ in range(MAX_STEPS):
                if free <= 0 or not waiting:
                    break
                user = self.drr.current()
                assert user is not None
                if user not in waiting:
                    self.drr.advance()
                    continue
                deficit = self.drr.arrive(weight.get(user, self.default_weight))
                if deficit < self.head_cost.get(user, 0):
                    self.drr.advance()
                    idle += 1
                    if idle >= len(waiting):
                        self._skip_rounds(waiting, weight)  # nobody can be served until more rounds pass
                        idle = 0
                    continue
                task_id = str(uuid.uuid4())
                take = self.pending.take(
                    user, task_id=task_id, budget=max(0, deficit), held=self.held, dispatcher_id=self.id
                )
                if take.kind == "TAKEN":
                    assert take.entry is not None
                    if producer is None:
                        producer = stack.enter_context(self.sender.producer_or_acquire())
                    self.drr.charge(user, take.cost)
                    # No saving up beyond one round's grant: a cost estimate that drops (the first call of
                    # a function is costed at the target run time) must not turn into a burst.
                    self.drr.cap(user, self.drr.quantum * weight.get(user, self.default_weight))
                    idle = 0
                    if take.next_cost < 0:  # its queue is empty now: it leaves the ring (and its budget)
                        self.drr.remove(user)
                        self.head_cost.pop(user, None)
                        waiting.discard(user)
                    else:
                        self.head_cost[user] = take.next_cost
                    self.held = {w: h for w, h in self.held.items() if h.user_id != user}
                    try:
                        self._send(take, user, task_id, producer)
                    except Exception:
                        self.pending.put_back(task_id, user, take.entry)  # the broker refused it: nothing is lost
                        self.drr.refund(user, take.cost)
                        raise
                    sent += 1
                    free -= 1
                    assert take.need is not None
                    mine = used.setdefault(take.worker_id, {})
                    for resource, amount in (("slots", 1), ("cpu", take.need.cpu), ("memory", take.need.memory)):
                        mine[resource] = mine.get(resource, 0) + amount
                    running[user] = running.get(user, 0) + 1
                    if running[user] >= quota.get(user, self.policy.default_quota):
                        blocked.add(user)
                        waiting.discard(user)
                elif take.kind == "SHORT":
                    self.head_cost[user] = take.cost  # the next visit that can afford it asks again
                elif take.kind == "EMPTY":
                    self.drr.remove(user)
                    self.head_cost.pop(user, None)
                    waiting.discard(user)
                elif take.kind == "NONEED":
                    self._load_needs(take.function_id)  # then try this user again
                elif take.kind == "NOFIT":
                    blocked.add(user)
                    waiting.discard(user)
                    self._cannot_fit(user, take, live, used)
                    self.drr.cap(user, max(take.cost, self.drr.quantum * weight.get(user, self.default_weight)))
                    self.drr.advance()
                else:  # QUOTA, FNLIMIT
                    blocked.add(user)
                    waiting.discard(user)
                    self.drr.advance()
        self.dispatched += sent
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "pass: sent %d, %d slot(s) left, %d user(s) waiting, %d blocked", sent, free, len(users), len(blocked)
            )
        return sent

    def _skip_rounds(self, candidates: set[int], weight: dict[int, int]) -> None:
        """Grant at once the rounds in which no waiting user could afford its next task (plain DRR would
        go round and round granting until one could). The pointer's order still decides who goes first."""
        waiting = [u for u in self.drr.ring if u in candidates]
        if not waiting or any(u not in self.head_cost for u in waiting):
            return
        rounds = min(
            -(
                -(self.head_cost[u] - self.drr.deficit.get(u, 0))
                // (self.drr.quantum * weight.get(u, self.default_weight))
            )
            for u in waiting
        )
        if rounds > 1:
            for u in waiting:
                self.drr.refund(u, (rounds - 1) * self.drr.quantum * weight.get(u, self.default_weight))

    def _send(self, take: Any, user: int, task_id: str, producer: Any) -> None:
        send_take(self.sender, take, user, task_id, producer)

    def _load_needs(self, function_id: str) -> None:
        if self.db is not None:
            recovery.load_needs(self.db, self.pending, function_id)
        else:
            self.pending.set_needs(function_id, registry.needs_of({}, keyspace.QUEUE_CPU))

    def _cannot_fit(
        self, user: int, take: Any, live: dict[str, WorkerCapacity], used: dict[str, dict[str, int]]
    ) -> None:
        """A user's next call fits nowhere now: hold the worker that will fit it soonest (or warn if none can)."""
        need = take.need
        if take.never:
            key = f"{user}:{need}"
            if time.monotonic() - self._warned.get(key, 0) > 60:
                self._warned[key] = time.monotonic()
                logger.warning(
                    "user %s's next call needs %s, which no live worker offers: it waits", user, need.describe()
                )
            return
        if any(h.user_id == user for h in self.held.values()):
            return

        def progress(worker_id: str) -> float:
            cap, u = live[worker_id], used.get(worker_id, {})
            return min((cap.cpu - u.get("cpu", 0)) / need.cpu, (cap.memory - u.get("memory", 0)) / need.memory)

        def next_release_fits(worker_id: str) -> bool:
            """Would the call fit once one task of average size ends there? Then it is not at risk of starving."""
            cap, u = live[worker_id], used.get(worker_id, {})
            tasks = u.get("slots", 0)
            if not tasks or need.gpu:
                return False
            return (
                cap.cpu - u.get("cpu", 0) + u.get("cpu", 0) / tasks >= need.cpu
                and cap.memory - u.get("memory", 0) + u.get("memory", 0) / tasks >= need.memory
            )

        candidates = [w for w in live if w not in self.held and not registry.shortfall(need, live[w])]
        if candidates and not any(next_release_fits(w) for w in candidates):
            worker_id = max(candidates, key=lambda w: (progress(w), w))
            self.held[worker_id] = Hold(user, need)
            logger.info("holding worker %s for user %s's call (%s) until it fits", worker_id, user, need.describe())

    # ---- leading ----

    def take_lead(self) -> None:
        """Just became the leader: continue the previous leader's fair-share state, rebuild from the database."""
        self.leading = True
        raw = self.redis.hget(keyspace.dispatch_state_key(), "drr")
        if raw:
            with contextlib.suppress(ValueError, TypeError, KeyError):
                self.drr.restore(json.loads(raw))
        self.held = {}
        self.rebuild()
        logger.info("dispatcher %s leads", self.id)

    def rebuild(self) -> int:
        """Re-queue from the database what Redis lost (one dispatcher at a time)."""
        self._last_rebuild = time.monotonic()
        if self.db is None:
            return 0
        if not self.redis.set(keyspace.rebuild_lock_key(), self.id, nx=True, ex=120):
            return 0
        try:
            with self._keeping_lease():
                return recovery.rebuild(self.db, self.pending, grace=self.rebuild_grace)
        finally:
            self.redis.delete(keyspace.rebuild_lock_key())

    @contextlib.contextmanager
    def _keeping_lease(self) -> Iterator[None]:
        """Renew the lease from a thread while a long step runs. A rebuild reads every queued input row (with
        a million queued, longer than the 5 s lease on a busy machine): without this the lease expired during
        it, the dispatcher took it again, led again, rebuilt again, and never dispatched (bench.curves)."""
        if self.lease.ttl <= 0:
            yield
            return
        done = threading.Event()

        def renew() -> None:
            while not done.wait(self.lease.ttl / 3) and self.lease.held:
                with contextlib.suppress(Exception):  # Redis may restart; the main loop notices a lost lease
                    self.lease.hold()

        thread = threading.Thread(target=renew, name="lease-renewal", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def tick(self) -> None:
        """Once a second while leading: heartbeat, dead workers, lost tasks, autoscaler, state for failover."""
        now = time.monotonic()
        self._last_tick = now
        self.redis.set(keyspace.dispatcher_heartbeat_key(), str(time.time()), ex=10)
        live, dead = registry.capacities(self.redis, self.policy.dead_after)
        if dead:
            recovery.reclaim_dead_workers(self.pending, self.policy.dead_after, self.db)
        if now - self._last_lost >= LOST_EVERY:
            self._last_lost = now
            recovery.reclaim_lost_tasks(self.pending, self.lost_after)
        self.scaler.tick(live, registry.used(self.redis))
        self.redis.hset(
            keyspace.dispatch_state_key(),
            mapping={
                "drr": json.dumps(self.drr.state()),
                "held": json.dumps({w: h.user_id for w, h in self.held.items()}),
                "leader": self.id,
            },
        )
        if now - self._last_rebuild >= REBUILD_EVERY:
            self.rebuild()

    def run(self, stop: threading.Event, idle_wait: float = 1.0) -> None:
        logger.info("dispatcher %s running", self.id)
        while not stop.is_set():
            try:
                if not self.lease.hold():
                    if self.leading:
                        logger.warning("dispatcher %s lost the lease", self.id)
                        self.leading = False
                    stop.wait(self.lease.ttl / 3)  # a standby must not drain the leader's wake-ups
                    continue
                if not self.leading:
                    self.take_lead()
                if time.monotonic() - self._last_tick >= 1.0:
                    self.tick()
                self.dispatch_pass()
                wait = idle_wait if self.lease.ttl <= 0 else min(idle_wait, self.lease.ttl / 3)
                self.pending.wait_for_wake(wait)
            except Exception:  # noqa: BLE001 - Redis may restart; keep trying
                logger.exception("dispatch pass failed; retrying in 1 s")
                stop.wait(1.0)
        self.lease.release()


def main() -> None:
    redis_url = config.get("redis_url")
    if not redis_url:
        raise SystemExit("minimodal dispatcher: set MINIMODAL_REDIS_URL or run `minimodal up`")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    db = Database(config.database_url())
    db.create_all()
    try:
        redis = Redis.from_url(redis_url, health_check_interval=30)
        Dispatcher.from_config(redis, TaskSender(redis), db).run(stop)
    finally:
        db.dispose()
