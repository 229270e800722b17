"""The autoscaler: how much each worker runs at once, and how many runners each function keeps.

Two levels, each bounded, each decision logged and kept in the capped list ``mm:scale:events``:

- **Worker concurrency.** Each worker has a target (``mm:wtarget``): the slots the dispatcher fills
  first, and so the runners that stay warm there. The take step raises a worker's target by one the
  moment a call waits and only growing a worker would place it (``calls waiting``), never above the
  worker's own slot count (the per-worker cap, its Celery concurrency) nor its cpu, memory and GPUs.
  :class:`Autoscaler` (in the leading dispatcher) lowers a target to the peak use of the last window
  once it has gone unused for ``worker_scaledown_window`` seconds, never below ``worker_min_slots``.
  Best fit places work on the busiest workers that fit, so the spare ones go idle and shrink.
- **Container pools.** Per function and worker (``workers/pool.py``): a task that finds no idle
  runner starts one; idle runners stop after the function's ``scaledown_window``, down to its
  ``min_containers`` (+ ``buffer_containers`` while busy); ``max_containers`` caps the function's
  tasks in flight across all workers (the take step). Workers forward each start and stop as a
  ``runners`` event with every heartbeat.

:func:`scaling_stats` gathers the figures for ``/stats``.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from redis import Redis

from minimodal import defaults, protocol
from minimodal.protocol import WorkerCapacity

from . import lua, registry

logger = logging.getLogger("minimodal.scaler")


def record(redis: Redis, event: dict[str, Any], length: int = defaults.DEFAULT_SCALE_EVENTS_LENGTH) -> None:
    """Keep one scale decision in the capped events list (newest first)."""
    pipe = redis.pipeline(transaction=False)
    pipe.lpush(protocol.scale_events_key(), json.dumps(event))
    pipe.ltrim(protocol.scale_events_key(), 0, length - 1)
    pipe.execute()


def events(redis: Redis, count: int = 100) -> list[dict[str, Any]]:
    """The newest ``count`` scale decisions, newest first."""
    return [json.loads(raw) for raw in redis.lrange(protocol.scale_events_key(), 0, count - 1)]


class Autoscaler:
    """Scales idle workers' concurrency down; the take step scales it up (see the module docstring)."""

    def __init__(self, redis: Redis, *, min_slots: int, window: float, events_length: int) -> None:
        self.redis = redis
        self.min_slots = min_slots
        self.window = window
        self.events_length = events_length
        self._since: dict[str, float] = {}  # worker -> when its target last was fully used (or changed)
        self._peak: dict[str, int] = {}  # worker -> most slots in use seen since then
        self._shrink = lua.Script(redis, "shrink")

    def tick(self, live: dict[str, WorkerCapacity], used: dict[str, dict[str, int]], now: float | None = None) -> int:
        """Lower the target of each worker idle below it for a whole window; return how many changed."""
        now = time.monotonic() if now is None else now
        targets = {k.decode(): int(v) for k, v in self.redis.hgetall(protocol.worker_target_key()).items()}
        changed = 0
        for worker_id in live:
            target = targets.get(worker_id, self.min_slots)
            in_use = used.get(worker_id, {}).get("slots", 0)
            if in_use >= target or target <= self.min_slots:
                self._since[worker_id], self._peak[worker_id] = now, in_use
                continue
            self._peak[worker_id] = max(self._peak.get(worker_id, 0), in_use)
            if now - self._since.setdefault(worker_id, now) < self.window:
                continue
            new = max(self.min_slots, self._peak[worker_id])
            event = {
                "at": time.time(),
                "kind": "worker",
                "worker": worker_id,
                "from": target,
                "to": new,
                "reason": f"idle for {self.window:g} s",
            }
            keys = {
                "worker_target": protocol.worker_target_key(),
                "scale_events": protocol.scale_events_key(),
                "dispatch_stats": protocol.dispatch_stats_key(),
            }
            args = {
                "worker_id": worker_id,
                "expected": target,
                "target": new,
                "event": json.dumps(event),
                "length": self.events_length,
            }
            if self._shrink(keys, args):
                logger.info(
                    "scale down: worker %s concurrency %d -> %d (idle %g s)", worker_id, target, new, self.window
                )
                changed += 1
            self._since[worker_id], self._peak[worker_id] = now, in_use
        for gone in set(self._since) - set(live):
            self._since.pop(gone, None)
            self._peak.pop(gone, None)
        return changed


def _ints(raw: dict[bytes, bytes]) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in raw.items()}


def scaling_stats(redis: Redis, *, dead_after: float | None = None, recent_events: int = 50) -> dict[str, Any]:
    """Everything the scheduler and the autoscaler know, for ``GET /stats`` (JSON-ready).

    Keys: ``leader`` (dispatcher id), ``counters`` (dispatched, reclaimed, lost, rebuilt, grown,
    shrunk), ``workers`` (per live worker: cap, scaled target, totals, reserved, runners per function),
    ``users`` (pending inputs, running tasks, quota, weight, fair-share deficit), ``functions`` (tasks
    running, max/min containers, runners across workers), ``held`` (worker -> user whose large call it
    is drained for) and ``events`` (newest scale decisions first).
    """
    dead_after = defaults.DEFAULT_HEARTBEAT_SECONDS * 5 if dead_after is None else dead_after
    live, _ = registry.capacities(redis, dead_after)
    used = registry.used(redis)
    pipe = redis.pipeline(transaction=False)
    pipe.get(protocol.dispatch_leader_key())
    pipe.hgetall(protocol.dispatch_stats_key())
    pipe.hgetall(protocol.worker_target_key())
    pipe.hgetall(protocol.pending_inputs_key())
    pipe.hgetall(protocol.running_key())
    pipe.hgetall(protocol.quota_key())
    pipe.hgetall(protocol.weight_key())
    pipe.hgetall(protocol.function_running_key())
    pipe.hgetall(protocol.function_limit_key())
    pipe.hgetall(protocol.warm_key())
    pipe.hget(protocol.dispatch_state_key(), "drr")
    pipe.hget(protocol.dispatch_state_key(), "held")
    for worker_id in live:
        pipe.get(protocol.worker_key(worker_id))
    leader, counters, targets, waiting, running, quota, weight, fn_running, fn_limit, warm, drr, held, *beats = (
        pipe.execute()
    )
    targets, waiting, running = _ints(targets), _ints(waiting), _ints(running)
    quota, weight, fn_running, fn_limit, warm = (
        _ints(quota),
        _ints(weight),
        _ints(fn_running),
        _ints(fn_limit),
        _ints(warm),
    )
    deficit = json.loads(drr).get("deficit", {}) if drr else {}
    runners_by_fn: dict[str, int] = {}
    workers = []
    for (worker_id, cap), beat in zip(live.items(), beats, strict=True):
        info = json.loads(beat) if beat else {}
        runners = info.get("runners", {})
        for function_id, n in runners.items():
            runners_by_fn[function_id] = runners_by_fn.get(function_id, 0) + int(n)
        workers.append(
            {
                "id": worker_id,
                "queue": cap.queue,
                "slots": cap.slots,
                "offered": cap.open_slots,
                "target": targets.get(worker_id, 0),
                "cpu": cap.cpu / 1000,
                "memory": cap.memory,
                "gpus": cap.gpus,
                "docker": cap.docker,
                "used": used.get(worker_id, {}),
                "runners": runners,
            }
        )
    user_ids = sorted({int(u) for u in (*waiting, *running)})
    return {
        "leader": leader.decode() if leader else None,
        "counters": _ints(counters),
        "workers": workers,
        "users": [
            {
                "id": u,
                "pending_inputs": waiting.get(str(u), 0),
                "running": running.get(str(u), 0),
                "quota": quota.get(str(u)),
                "weight": weight.get(str(u)),
                "deficit": deficit.get(str(u)),
            }
            for u in user_ids
        ],
        "functions": [
            {
                "id": f,
                "running": fn_running.get(f, 0),
                "max_containers": fn_limit.get(f),
                "min_containers": warm.get(f),
                "runners": runners_by_fn.get(f, 0),
            }
            for f in sorted({*fn_running, *runners_by_fn, *warm})
        ],
        "held": json.loads(held) if held else {},
        "events": events(redis, recent_events),
    }
