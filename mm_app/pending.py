"""Per-user pending queues in Redis, and the atomic steps that move work between them and the workers.

Each user has a list of :class:`~minimodal.keyspace.PendingEntry` (runs of inputs). Five Lua scripts
(``mm_app/lua/{enqueue,take,hold,finish,reclaim}.lua``, sharing ``_sched.lua``) change scheduling state,
each in one atomic step, so that any number of API processes, dispatchers and workers may run at once
without handing out an input twice or overfilling a worker:

- **enqueue** (API): refuses a call no live worker could ever hold, then stores the payloads and
  appends the entry.
- **take** (dispatcher): checks the user's quota, the function's ``max_containers`` and the fair-share
  budget, cuts one task's worth off the head of the user's queue, places it on the best-fitting live
  worker (reserving its slot, cpu, memory and GPUs), and records it in the in-flight ledger.
- **hold** (worker): records a task sent outside the dispatcher (a retry) in the ledger, reserving the same.
- **finish** (worker): removes the task from the ledger and releases exactly what it reserved.
- **reclaim** (dispatcher, worker at shutdown): the same release for a task that will not finish (its
  worker died, its message was lost, the broker refused it), with its unfinished inputs put back at the
  head of the user's queue.

Placement is best fit: of the workers that can hold the task now, the one left with the least free
capacity (cpu, memory and slots as fractions of its totals), preferring a worker whose concurrency the
autoscaler has already scaled up, and keeping GPU workers for GPU calls. A worker held for another
user's large call (see :mod:`.dispatcher`) lends only what that call leaves free.

Capacity is reserved and released in one place, the Lua functions ``reserve`` and ``release`` of
``_sched.lua``, both driven by the task's ledger record: take must reserve in the same atomic step in
which it reads what is free (else two dispatchers could fill one slot twice), and release has to undo
exactly that record, so the retry path (:meth:`PendingQueues.hold`) goes through Lua too.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from redis import Redis

from minimodal import config, defaults, protocol
from mm_app import keyspace
from mm_app.keyspace import FunctionNeeds, InflightTask, PendingEntry, WorkerCapacity

from . import lua
from .registry import unschedulable

EWMA_WEIGHT = 0.2  # weight of a task's newest run time in its function's average


@dataclass(frozen=True)
class Policy:
    """The dispatcher's constants the take step needs (settings, read once)."""

    default_quota: int = defaults.DEFAULT_QUOTA
    target_us: int = defaults.DEFAULT_TASK_TARGET_MS * 1000
    max_inputs: int = defaults.DEFAULT_MAX_INPUTS_PER_TASK
    overhead_us: int = defaults.DEFAULT_TASK_OVERHEAD_US
    quantum_us: int = defaults.DEFAULT_DRR_QUANTUM_US
    min_slots: int = defaults.DEFAULT_WORKER_MIN_SLOTS
    dead_after: float = defaults.DEFAULT_HEARTBEAT_SECONDS * 5  # a worker not seen this long is dead
    log_length: int = defaults.DEFAULT_DISPATCH_LOG_LENGTH
    events_length: int = defaults.DEFAULT_SCALE_EVENTS_LENGTH

    @classmethod
    def from_config(cls) -> Policy:
        return cls(
            default_quota=config.get("default_quota"),
            target_us=config.get("task_target_ms") * 1000,
            max_inputs=config.get("max_inputs_per_task"),
            min_slots=config.get("worker_min_slots"),
            dead_after=config.get("heartbeat_seconds") * 5,
        )


@dataclass(frozen=True)
class Hold:
    """Capacity held on a worker for one user's call that fits nowhere yet (so small calls cannot starve it)."""

    user_id: int
    need: FunctionNeeds

    def to_json(self) -> dict[str, Any]:
        n = self.need
        return {"user_id": self.user_id, "cpu": n.cpu, "memory": n.memory, "gpu": n.gpu, "gpu_count": n.gpu_count}


@dataclass(frozen=True)
class Take:
    """What one take step did. ``kind``: TAKEN, SHORT, QUOTA, EMPTY, FNLIMIT, NOFIT or NONEED."""

    kind: str
    entry: PendingEntry | None = None
    worker_id: str = ""
    queue: str = ""
    cost: int = 0  # estimated run time of the task (us), the fair-share charge
    need: FunctionNeeds | None = None
    never: bool = False  # NOFIT: no live worker could hold it even idle
    function_id: str = ""
    next_cost: int = -1  # TAKEN: the cost of the user's next task (-1: its queue is empty now)

    @classmethod
    def from_reply(cls, raw: str | bytes) -> Take:
        """The take script's JSON reply (its fields are documented at the top of ``take.lua``)."""
        d = json.loads(raw)
        kind = d["kind"]
        need = FunctionNeeds.from_dict(d["need"]) if "need" in d else None
        if kind == "TAKEN":
            e = d["entry"]
            return cls(
                kind,
                PendingEntry(e["call_id"], e["function_id"], int(e["start"]), int(e["end"])),
                worker_id=d["worker_id"],
                queue=d["queue"],
                cost=int(d["cost"]),
                need=need,
                next_cost=int(d["next_cost"]),
            )
        if kind == "NOFIT":
            return cls(kind, never=bool(d["never"]), need=need, cost=int(d["cost"]))
        return cls(kind, cost=int(d.get("cost", 0)), function_id=d.get("function_id", ""))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class PendingQueues:
    """The Redis side of scheduling: enqueue (API), take (dispatcher), hold and finish (worker), reclaim."""

    def __init__(self, redis: Redis, policy: Policy | None = None) -> None:
        self.redis = redis
        self.policy = policy or Policy.from_config()
        self._enqueue = lua.Script(redis, "enqueue")
        self._take = lua.Script(redis, "take")
        self._hold = lua.Script(redis, "hold")
        self._finish = lua.Script(redis, "finish")
        self._reclaim = lua.Script(redis, "reclaim")

    def enqueue(
        self,
        user_id: int,
        entry: PendingEntry,
        *,
        inputs: dict[str, bytes] | None = None,
        ttl: int = 0,
        front: bool = False,
        direct: dict[str, Any] | None = None,
    ) -> Take | None:
        """Queue a run of inputs (storing their payloads in the same step) and wake the dispatcher.

        ``front``: the inputs of a call made by a running call (its parent waits on them) go before the
        user's other queued work, so that parents finish before new top-level calls start.

        ``direct`` (the API's shortcut): the Celery message of a task without its arguments
        (:meth:`mm_app.broker.TaskSender.template`). When a dispatcher leads and this user is the only
        one with pending work, the same step then takes the head of the user's queue (the take step,
        quota and placement included) and pushes the task on its worker's queue, waking the dispatcher
        only if the take refuses or leaves work queued. Returns the Take then (kind TAKEN, sent), else None.

        Raises:
            InsufficientResourcesError: no live worker could ever hold one task of the function
                (nothing is stored). With no live worker at all the call is queued.
        """
        keys = {
            **self._take_keys(user_id),
            "wake": keyspace.wake_key(),
            "inputs": keyspace.inputs_key(entry.call_id),
            "leader": keyspace.dispatch_leader_key(),
        }
        taking: dict[str, Any] = {}
        if direct is not None:
            task_id = direct["headers"]["id"]
            taking = {
                **self._take_args(user_id, task_id, -1, None, "api"),
                "message": direct,
                "sandbox_prefix": protocol.SANDBOX_PREFIX,
                "sandbox_task": keyspace.TASK_SANDBOX,
            }
            del taking["user_id"], taking["dead_after"]  # the enqueue's own
        reply = self._enqueue(
            keys,
            {
                "user_id": user_id,
                "entry": asdict(entry),
                "ttl": ttl,
                "dead_after": self.policy.dead_after,
                "front": front,
                "direct": taking,
            },
            [part for name, payload in (inputs or {}).items() for part in (name, payload)],
        )
        kind = _text(reply[0])
        if kind == "NOFIT":
            need = FunctionNeeds.from_json(reply[1])
            workers = [WorkerCapacity.from_json(raw) for raw in reply[2:]]
            raise unschedulable(f"function {entry.function_id}", need, workers)
        return Take.from_reply(reply[1]) if kind == "SENT" else None

    def wake(self) -> None:
        """Wake the dispatcher for a pass."""
        self.redis.rpush(keyspace.wake_key(), "1")

    def take(
        self,
        user_id: int,
        *,
        task_id: str,
        budget: int = -1,
        held: dict[str, Hold] | None = None,
        dispatcher_id: str = "",
    ) -> Take:
        """One task's worth of this user's inputs, placed on a worker, if the user may have it now."""
        reply = self._take(self._take_keys(user_id), self._take_args(user_id, task_id, budget, held, dispatcher_id))
        return Take.from_reply(reply)

    def _take_keys(self, user_id: int) -> dict[str, str]:
        """The KEYS of the take step (take.lua, and enqueue.lua when it takes), by name."""
        return {
            "pending": keyspace.pending_key(user_id),
            "pending_users": keyspace.pending_users_key(),
            "pending_inputs": keyspace.pending_inputs_key(),
            "running": keyspace.running_key(),
            "quota": keyspace.quota_key(),
            "lent": keyspace.lent_key(user_id),
            "function_limit": keyspace.function_limit_key(),
            "function_running": keyspace.function_running_key(),
            "function_needs": keyspace.function_needs_key(),
            "workers": keyspace.workers_key(),
            "workers_seen": keyspace.workers_seen_key(),
            "worker_used": keyspace.worker_used_key(),
            "worker_target": keyspace.worker_target_key(),
            "inflight": keyspace.inflight_key(),
            "scale_events": keyspace.scale_events_key(),
            "dispatch_log": keyspace.dispatch_log_key(),
            "dispatch_stats": keyspace.dispatch_stats_key(),
        }

    def _take_args(
        self, user_id: int, task_id: str, budget: int, held: dict[str, Hold] | None, dispatcher_id: str
    ) -> dict[str, Any]:
        p = self.policy
        return {
            "user_id": user_id,
            "task_id": task_id,
            "dispatcher_id": dispatcher_id,
            "budget": budget,
            "held": {w: h.to_json() for w, h in (held or {}).items()},
            "default_quota": p.default_quota,
            "target_us": p.target_us,
            "max_inputs": p.max_inputs,
            "overhead_us": p.overhead_us,
            "min_slots": p.min_slots,
            "log_length": p.log_length,
            "events_length": p.events_length,
            "dead_after": p.dead_after,
            "function_stats_prefix": keyspace.function_stats_key(""),
        }

    def hold(self, task_id: str, task: InflightTask) -> None:
        """Put a task sent outside the dispatcher (a retry) in the ledger, reserving what it needs.

        Then it is released by :meth:`finish` like any task, and reclaimed like any task if its worker dies
        before running it (a retry waits out its backoff on the worker that scheduled it).
        """
        self._hold(
            {
                "inflight": keyspace.inflight_key(),
                "running": keyspace.running_key(),
                "function_running": keyspace.function_running_key(),
                "worker_used": keyspace.worker_used_key(),
            },
            {"task_id": task_id, "task": asdict(task)},
        )

    def finish(self, user_id: int, function_id: str, mean_run_us: int = 0, task_id: str | None = None) -> None:
        """A task ended: release what it reserved, record its speed, wake the dispatcher.

        ``task_id`` is the task's Celery id, its ledger key (the dispatcher's, or :meth:`hold`'s for a
        retry); a task no longer in the ledger was reclaimed, and released then.
        """
        self._finish(
            {
                "inflight": keyspace.inflight_key(),
                "running": keyspace.running_key(),
                "function_running": keyspace.function_running_key(),
                "worker_used": keyspace.worker_used_key(),
                "function_stats": keyspace.function_stats_key(function_id),
                "wake": keyspace.wake_key(),
            },
            {"task_id": task_id or "", "mean_run_us": int(mean_run_us), "ewma_weight": EWMA_WEIGHT},
        )

    def reclaim(self, task_id: str, user_id: int, runs: Sequence[tuple[int, int]], *, counter: str = "") -> bool:
        """Release a task that will not finish and put ``runs`` back at the head of its user's queue.

        False when the task is not in the ledger any more (it finished, or was reclaimed already).
        """
        return bool(
            self._reclaim(
                {
                    "inflight": keyspace.inflight_key(),
                    "running": keyspace.running_key(),
                    "function_running": keyspace.function_running_key(),
                    "worker_used": keyspace.worker_used_key(),
                    "pending": keyspace.pending_key(user_id),
                    "pending_users": keyspace.pending_users_key(),
                    "pending_inputs": keyspace.pending_inputs_key(),
                    "wake": keyspace.wake_key(),
                    "dispatch_stats": keyspace.dispatch_stats_key(),
                },
                {
                    "task_id": task_id,
                    "user_id": user_id,
                    "counter": counter,
                    "runs": [[s, e] for s, e in runs if e > s],
                },
            )
        )

    def put_back(self, task_id: str, user_id: int, entry: PendingEntry) -> None:
        """Undo a take whose task could not be sent: the entry goes back to the head, the reservation is freed."""
        self.reclaim(task_id, user_id, [(entry.start, entry.end)])

    def requeue(self, user_id: int, entries: Sequence[PendingEntry], *, counter: str = "rebuilt") -> None:
        """Put entries (oldest first) at the head of a user's queue: the rebuild from the database."""
        if not entries:
            return
        pipe = self.redis.pipeline(transaction=True)
        pipe.lpush(keyspace.pending_key(user_id), *(e.encode() for e in reversed(entries)))
        pipe.sadd(keyspace.pending_users_key(), user_id)
        pipe.hincrby(keyspace.pending_inputs_key(), str(user_id), sum(e.end - e.start for e in entries))
        pipe.hincrby(keyspace.dispatch_stats_key(), counter, len(entries))
        pipe.rpush(keyspace.wake_key(), "1")
        pipe.execute()

    def register_functions(
        self,
        queues: dict[str, str],
        *,
        limits: dict[str, int],
        warm: dict[str, int],
        needs: dict[str, FunctionNeeds] | None = None,
    ) -> None:
        """At deploy: each function's Celery queue, max_containers, min_containers and resource needs."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(keyspace.function_queue_key(), mapping=queues)  # type: ignore[arg-type]  # types-redis: Mapping keys are invariant
        if limits:
            pipe.hset(keyspace.function_limit_key(), mapping=limits)  # type: ignore[arg-type]  # types-redis: Mapping keys are invariant
        if warm:
            pipe.hset(keyspace.warm_key(), mapping=warm)  # type: ignore[arg-type]  # types-redis: Mapping keys are invariant
        if needs:
            pipe.hset(keyspace.function_needs_key(), mapping={f: n.to_json() for f, n in needs.items()})
        pipe.execute()

    def set_needs(self, function_id: str, need: FunctionNeeds) -> None:
        self.redis.hset(keyspace.function_needs_key(), function_id, need.to_json())

    def forget_warm(self, function_ids: list[str]) -> None:
        """An app stopped: its functions no longer keep runners warm."""
        if function_ids:
            self.redis.hdel(keyspace.warm_key(), *function_ids)

    def warm_functions(self) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in self.redis.hgetall(keyspace.warm_key()).items()}

    def users_with_work(self) -> list[int]:
        return sorted(int(u) for u in self.redis.smembers(keyspace.pending_users_key()))

    def set_quota(self, user_id: int, quota: int, *, weight: int | None = None) -> None:
        """A user's quota (and weight) changed: the dispatcher uses them from its next pass."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(keyspace.quota_key(), str(user_id), quota)
        if weight is not None:
            pipe.hset(keyspace.weight_key(), str(user_id), weight)
        pipe.rpush(keyspace.wake_key(), "1")
        pipe.execute()

    def wait_for_wake(self, timeout: float) -> None:
        """Block until someone pushes a wake-up (or ``timeout``), then drain the wake list."""
        if self.redis.blpop([keyspace.wake_key()], timeout=timeout):
            self.redis.delete(keyspace.wake_key())
