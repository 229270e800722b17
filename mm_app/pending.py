"""Per-user pending queues in Redis, and the atomic steps that move work between them and the workers.

Each user has a list of :class:`~minimodal.protocol.PendingEntry` (runs of inputs). Four Lua scripts
change scheduling state, each in one atomic step, so that any number of API processes, dispatchers and
workers may run at once without handing out an input twice or overfilling a worker:

- **enqueue** (API): refuses a call no live worker could ever hold, then stores the payloads and
  appends the entry.
- **take** (dispatcher): checks the user's quota, the function's ``max_containers`` and the fair-share
  budget, cuts one task's worth off the head of the user's queue, places it on the best-fitting live
  worker (reserving its slot, cpu, memory and GPUs), and records it in the in-flight ledger.
- **finish** (worker): removes the task from the ledger and releases exactly what it reserved.
- **reclaim** (dispatcher, worker at shutdown): the same release for a task that will not finish (its
  worker died, its message was lost, the broker refused it), with its unfinished inputs put back at the
  head of the user's queue.

Placement is best fit: of the workers that can hold the task now, the one left with the least free
capacity (cpu, memory and slots as fractions of its totals), preferring a worker whose concurrency the
autoscaler has already scaled up, and keeping GPU workers for GPU calls. A worker held for another
user's large call (see :mod:`.dispatcher`) lends only what that call leaves free.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis import Redis

from minimodal import config, defaults, protocol
from minimodal.protocol import FunctionNeeds, InflightTask, PendingEntry, WorkerCapacity

from .registry import unschedulable

_LUA_LIB = """
local function split(s)
  local out = {}
  for part in string.gmatch(s .. '|', '([^|]*)|') do table.insert(out, part) end
  return out
end

local function decr(key, field, by)
  if redis.call('HINCRBY', key, field, -by) <= 0 then redis.call('HDEL', key, field) end
end

-- Free what a ledger record (split) reserved: user and function slots, worker resources.
local function release(f, running_key, fnrunning_key, used_key)
  decr(running_key, f[1], 1)
  decr(fnrunning_key, f[2], 1)
  decr(used_key, f[6] .. '|slots', 1)
  decr(used_key, f[6] .. '|cpu', tonumber(f[7]))
  decr(used_key, f[6] .. '|memory', tonumber(f[8]))
  if f[9] ~= '' then decr(used_key, f[6] .. '|gpu:' .. f[9], tonumber(f[10])) end
end

-- Workers seen within dead_after seconds of Redis time, decoded; and Redis time now.
local function live_workers(workers_key, seen_key, dead_after)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  local out = {}
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', seen_key, tonumber(t[1]) - dead_after, '+inf')) do
    local raw = redis.call('HGET', workers_key, id)
    if raw then table.insert(out, cjson.decode(raw)) end
  end
  return out, now
end

-- One task's worth of a pending entry: its parts, where to cut it, and its estimated cost in us.
local function task_of(raw, target_us, max_inputs, stats_prefix, overhead_us)
  local call_id, fn, first, stop = string.match(raw, '([^|]+)|([^|]+)|(%d+)|(%d+)')
  first = tonumber(first); stop = tonumber(stop)
  local avg = tonumber(redis.call('HGET', stats_prefix .. fn, 'avg_us') or '0')
  local per_task = 1
  if avg > 0 then per_task = math.max(1, math.min(max_inputs, math.floor(target_us / avg))) end
  local cut = math.min(stop, first + per_task)
  local cost = overhead_us + target_us
  if avg > 0 then cost = overhead_us + (cut - first) * avg end
  return call_id, fn, first, stop, cut, math.floor(cost)
end

local function gpu_matches(want, label)
  return want == 'ANY' or want == label
end

-- Could this worker run the task when idle?
local function can_ever_hold(w, need)
  if need.runtime == 'docker' and not w.docker then return false end
  if need.sandbox ~= nil and need.sandbox ~= '' and w.sandbox ~= need.sandbox then return false end
  if w.cpu < need.cpu or w.memory < need.memory or w.slots < 1 then return false end
  if need.gpu == '' then return true end
  for label, n in pairs(w.gpus) do
    if gpu_matches(need.gpu, label) and n >= need.gpu_count then return true end
  end
  return false
end
"""

# KEYS: pending list, pending users, wake, function needs, workers, workers seen, pending inputs, inputs hash
# ARGV: user, entry, function id, input count, ttl, dead after, front (1: a nested call, taken before the
#   queue's other entries), then field/value pairs of payloads
_ENQUEUE = (
    _LUA_LIB
    + """
local need_raw = redis.call('HGET', KEYS[4], ARGV[3])
if need_raw then
  local need = cjson.decode(need_raw)
  local workers = live_workers(KEYS[5], KEYS[6], tonumber(ARGV[6]))
  if #workers > 0 then
    local ok = false
    for _, w in ipairs(workers) do
      if can_ever_hold(w, need) then ok = true; break end
    end
    if not ok then
      local out = {'NOFIT', need_raw}
      for _, w in ipairs(workers) do table.insert(out, cjson.encode(w)) end
      return out
    end
  end
end
for i = 8, #ARGV, 1000 do
  redis.call('HSET', KEYS[8], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
if #ARGV >= 8 then redis.call('EXPIRE', KEYS[8], ARGV[5]) end
if ARGV[7] == '1' then redis.call('LPUSH', KEYS[1], ARGV[2]) else redis.call('RPUSH', KEYS[1], ARGV[2]) end
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('HINCRBY', KEYS[7], ARGV[1], tonumber(ARGV[4]))
redis.call('RPUSH', KEYS[3], '1')
return {'OK'}
"""
)

# KEYS: 1 pending list, 2 running, 3 quota, 4 pending users, 5 function limits, 6 function running,
#   7 function needs, 8 workers, 9 workers seen, 10 worker used, 11 worker target, 12 inflight,
#   13 pending inputs, 14 scale events, 15 dispatch log, 16 dispatch stats, 17 the user's lent slots
# ARGV: 1 user, 2 default quota, 3 target task us, 4 max inputs per task, 5 function stats key prefix,
#   6 budget us (-1: none), 7 dead after s, 8 held workers JSON, 9 task id, 10 task overhead us,
#   11 min slots, 12 dispatcher id, 13 dispatch log length, 14 scale events length
_TAKE = (
    _LUA_LIB
    + """
local user = ARGV[1]
local running = tonumber(redis.call('HGET', KEYS[2], user) or '0')
local quota = tonumber(redis.call('HGET', KEYS[3], user) or ARGV[2])
-- A parent waiting on its children lends them its slot (mm_app/tasks/forward.py): nesting never deadlocks.
-- Each waiting request is a member scored by when it expires, so a worker that dies mid-wait lends nothing.
local lent = redis.call('ZCOUNT', KEYS[17], tonumber(redis.call('TIME')[1]), '+inf')
if running - lent >= quota then return {'QUOTA'} end
local raw = redis.call('LINDEX', KEYS[1], 0)
if not raw then
  redis.call('SREM', KEYS[4], user)
  redis.call('HDEL', KEYS[13], user)
  return {'EMPTY'}
end
local target_us, max_inputs, overhead_us = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[10])
local call_id, fn, first, stop, cut, cost = task_of(raw, target_us, max_inputs, ARGV[5], overhead_us)
local limit = tonumber(redis.call('HGET', KEYS[5], fn) or '0')
local fn_running = tonumber(redis.call('HGET', KEYS[6], fn) or '0')
if limit > 0 and fn_running >= limit then return {'FNLIMIT', fn} end
local budget = tonumber(ARGV[6])
if budget >= 0 and cost > budget then return {'SHORT', tostring(cost)} end
local need_raw = redis.call('HGET', KEYS[7], fn)
if not need_raw then return {'NONEED', fn} end
local need = cjson.decode(need_raw)
local workers, now = live_workers(KEYS[8], KEYS[9], tonumber(ARGV[7]))
local held = cjson.decode(ARGV[8])
local min_slots = tonumber(ARGV[11])
local best, best_score, best_gpu, best_grow, best_used = nil, 0, '', false, 0
local ever = false
for _, w in ipairs(workers) do
  if can_ever_hold(w, need) then
    ever = true
    local id = w.id
    local u = redis.call('HMGET', KEYS[10], id .. '|slots', id .. '|cpu', id .. '|memory')
    local slots_used = tonumber(u[1] or '0')
    local free_cpu = w.cpu - tonumber(u[2] or '0')
    local free_mem = w.memory - tonumber(u[3] or '0')
    local r = held[id]
    local mine = r ~= nil and tostring(r.user) == user
    if r ~= nil and not mine then  -- held for another user's call: lend only what it leaves
      slots_used = slots_used + 1
      free_cpu = free_cpu - r.cpu
      free_mem = free_mem - r.memory
    end
    local gpu_label = ''
    local open_slots = w.slots
    if w.offered ~= nil and w.offered < open_slots then open_slots = w.offered end  -- its circuit breaker
    local fits = slots_used < open_slots and free_cpu >= need.cpu and free_mem >= need.memory
    if fits and need.gpu ~= '' then
      local least = nil
      for label, n in pairs(w.gpus) do
        if gpu_matches(need.gpu, label) then
          local free_g = n - tonumber(redis.call('HGET', KEYS[10], id .. '|gpu:' .. label) or '0')
          if r ~= nil and not mine and r.gpu ~= '' and gpu_matches(r.gpu, label) then
            free_g = free_g - r.gpu_count
          end
          if free_g >= need.gpu_count and (least == nil or free_g < least) then
            least = free_g
            gpu_label = label
          end
        end
      end
      fits = gpu_label ~= ''
    end
    if fits then
      local target = tonumber(redis.call('HGET', KEYS[11], id) or tostring(min_slots))
      local grow = slots_used >= target
      -- Best fit: least left over after placing, each resource as a fraction of the worker's totals.
      local score = (free_cpu - need.cpu) / w.cpu + (free_mem - need.memory) / w.memory
        + (w.slots - slots_used - 1) / w.slots
      if need.gpu == '' and next(w.gpus) ~= nil then score = score + 3 end  -- keep GPU workers for GPU calls
      if grow then score = score + 10 end  -- use concurrency already scaled up before scaling up more
      if mine then score = -1 end  -- the worker held for this user's call
      if best == nil or score < best_score or (score == best_score and id < best.id) then
        best, best_score, best_gpu, best_grow, best_used = w, score, gpu_label, grow, slots_used
      end
    end
  end
end
if best == nil then
  local why = 'never'
  if ever then why = 'busy' end
  return {'NOFIT', why, need_raw, tostring(cost)}
end
redis.call('LPOP', KEYS[1])
if cut < stop then
  redis.call('LPUSH', KEYS[1], call_id .. '|' .. fn .. '|' .. cut .. '|' .. stop)
elseif redis.call('LLEN', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[4], user)
end
local id = best.id
running = redis.call('HINCRBY', KEYS[2], user, 1)
fn_running = redis.call('HINCRBY', KEYS[6], fn, 1)
redis.call('HINCRBY', KEYS[10], id .. '|slots', 1)
redis.call('HINCRBY', KEYS[10], id .. '|cpu', need.cpu)
redis.call('HINCRBY', KEYS[10], id .. '|memory', need.memory)
local gpu_count = 0
if best_gpu ~= '' then
  gpu_count = need.gpu_count
  redis.call('HINCRBY', KEYS[10], id .. '|gpu:' .. best_gpu, gpu_count)
end
if redis.call('HINCRBY', KEYS[13], user, first - cut) <= 0 then redis.call('HDEL', KEYS[13], user) end
redis.call('HSET', KEYS[12], ARGV[9], table.concat({user, fn, call_id, first, cut, id, need.cpu, need.memory,
  best_gpu, gpu_count, cost, string.format('%.6f', now), ARGV[12]}, '|'))
if best_grow then
  local from = tonumber(redis.call('HGET', KEYS[11], id) or tostring(min_slots))
  local to = best_used + 1
  redis.call('HSET', KEYS[11], id, to)
  redis.call('LPUSH', KEYS[14], cjson.encode({at = now, kind = 'worker', worker = id, from = from, to = to,
    reason = 'calls waiting'}))
  redis.call('LTRIM', KEYS[14], 0, tonumber(ARGV[14]) - 1)
  redis.call('HINCRBY', KEYS[16], 'grown', 1)
end
redis.call('XADD', KEYS[15], 'MAXLEN', '~', ARGV[13], '*', 'user', user, 'function', fn, 'call', call_id,
  'start', first, 'end', cut, 'worker', id, 'running', running, 'quota', quota, 'fn_running', fn_running,
  'limit', limit, 'task', ARGV[9])
redis.call('HINCRBY', KEYS[16], 'dispatched', 1)
local next_cost = -1  -- the cost of the user's next task, so the dispatcher need not ask (-1: nothing left)
local next_raw = redis.call('LINDEX', KEYS[1], 0)
if next_raw then
  local _, _, _, _, _, c = task_of(next_raw, target_us, max_inputs, ARGV[5], overhead_us)
  next_cost = c
end
return {'TAKEN', id, best.queue, call_id, fn, tostring(first), tostring(cut), tostring(cost), need_raw,
  tostring(next_cost)}
"""
)

# KEYS: running, wake, function running, function stats, inflight, worker used
# ARGV: user id, function id, mean run time of the task's inputs in us (0: none succeeded), EWMA weight, task id
_FINISH = (
    _LUA_LIB
    + """
local released = 0
local rec = false
if ARGV[5] ~= '' then rec = redis.call('HGET', KEYS[5], ARGV[5]) end
if rec then
  redis.call('HDEL', KEYS[5], ARGV[5])
  release(split(rec), KEYS[1], KEYS[3], KEYS[6])
  released = 1
end  -- else reclaimed already (released then), or lost with Redis's state (nothing left to release)
local newest = tonumber(ARGV[3])
if newest > 0 then
  local old = tonumber(redis.call('HGET', KEYS[4], 'avg_us') or '0')
  local avg = newest
  if old > 0 then avg = (1 - tonumber(ARGV[4])) * old + tonumber(ARGV[4]) * newest end
  redis.call('HSET', KEYS[4], 'avg_us', math.max(1, math.floor(avg)))
  redis.call('EXPIRE', KEYS[4], 604800)
end
redis.call('RPUSH', KEYS[2], '1')
return released
"""
)

# KEYS: inflight, running, function running, worker used, pending list, pending users, pending inputs, wake,
#   dispatch stats
# ARGV: task id, user id, counter to bump ('' none), then "start|end" runs to put back, in order
_RECLAIM = (
    _LUA_LIB
    + """
local rec = redis.call('HGET', KEYS[1], ARGV[1])
if not rec then return 0 end
local f = split(rec)
if f[1] ~= ARGV[2] then return redis.error_reply('task ' .. ARGV[1] .. ' is not of user ' .. ARGV[2]) end
redis.call('HDEL', KEYS[1], ARGV[1])
release(f, KEYS[2], KEYS[3], KEYS[4])
local n = 0
for i = #ARGV, 4, -1 do
  local s, e = string.match(ARGV[i], '(%d+)|(%d+)')
  redis.call('LPUSH', KEYS[5], f[3] .. '|' .. f[2] .. '|' .. s .. '|' .. e)
  n = n + tonumber(e) - tonumber(s)
end
if n > 0 then
  redis.call('SADD', KEYS[6], f[1])
  redis.call('HINCRBY', KEYS[7], f[1], n)
end
if ARGV[3] ~= '' then redis.call('HINCRBY', KEYS[9], ARGV[3], 1) end
redis.call('RPUSH', KEYS[8], '1')
return 1
"""
)

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
        return {"user": self.user_id, "cpu": n.cpu, "memory": n.memory, "gpu": n.gpu, "gpu_count": n.gpu_count}


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


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class PendingQueues:
    """The Redis side of scheduling: enqueue (API), take (dispatcher), finish (worker), reclaim."""

    def __init__(self, redis: Redis, policy: Policy | None = None) -> None:
        self.redis = redis
        self.policy = policy or Policy.from_config()
        self._enqueue = redis.register_script(_ENQUEUE)
        self._take = redis.register_script(_TAKE)
        self._finish = redis.register_script(_FINISH)
        self._reclaim = redis.register_script(_RECLAIM)

    def enqueue(
        self,
        user_id: int,
        entry: PendingEntry,
        *,
        inputs: dict[str, bytes] | None = None,
        ttl: int = 0,
        front: bool = False,
    ) -> None:
        """Queue a run of inputs (storing their payloads in the same step) and wake the dispatcher.

        ``front``: the inputs of a call made by a running call (its parent waits on them) go before the
        user's other queued work, so that parents finish before new top-level calls start.

        Raises:
            InsufficientResourcesError: no live worker could ever hold one task of the function
                (nothing is stored). With no live worker at all the call is queued.
        """
        args: list[Any] = [
            user_id,
            entry.encode(),
            entry.function_id,
            entry.end - entry.start,
            ttl,
            self.policy.dead_after,
            1 if front else 0,
        ]
        for name, payload in (inputs or {}).items():
            args += [name, payload]
        reply = self._enqueue(
            keys=[
                protocol.pending_key(user_id),
                protocol.pending_users_key(),
                protocol.wake_key(),
                protocol.function_needs_key(),
                protocol.workers_key(),
                protocol.workers_seen_key(),
                protocol.pending_inputs_key(),
                protocol.inputs_key(entry.call_id),
            ],
            args=args,
        )
        if _text(reply[0]) == "NOFIT":
            need = FunctionNeeds.from_json(reply[1])
            workers = [WorkerCapacity.from_json(raw) for raw in reply[2:]]
            raise unschedulable(f"function {entry.function_id}", need, workers)

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
        p = self.policy
        reply = self._take(
            keys=[
                protocol.pending_key(user_id),
                protocol.running_key(),
                protocol.quota_key(),
                protocol.pending_users_key(),
                protocol.function_limit_key(),
                protocol.function_running_key(),
                protocol.function_needs_key(),
                protocol.workers_key(),
                protocol.workers_seen_key(),
                protocol.worker_used_key(),
                protocol.worker_target_key(),
                protocol.inflight_key(),
                protocol.pending_inputs_key(),
                protocol.scale_events_key(),
                protocol.dispatch_log_key(),
                protocol.dispatch_stats_key(),
                protocol.lent_key(user_id),
            ],
            args=[
                user_id,
                p.default_quota,
                p.target_us,
                p.max_inputs,
                protocol.function_stats_key(""),
                budget,
                p.dead_after,
                json.dumps({w: h.to_json() for w, h in (held or {}).items()}) if held else "{}",
                task_id,
                p.overhead_us,
                p.min_slots,
                dispatcher_id,
                p.log_length,
                p.events_length,
            ],
        )
        kind = _text(reply[0])
        if kind == "TAKEN":
            _, worker_id, queue, call_id, function_id, start, end, cost, need, next_cost = (_text(v) for v in reply)
            return Take(
                kind,
                PendingEntry(call_id, function_id, int(start), int(end)),
                worker_id=worker_id,
                queue=queue,
                cost=int(cost),
                need=FunctionNeeds.from_json(need),
                next_cost=int(next_cost),
            )
        if kind == "SHORT":
            return Take(kind, cost=int(_text(reply[1])))
        if kind == "NOFIT":
            return Take(
                kind,
                never=_text(reply[1]) == "never",
                need=FunctionNeeds.from_json(reply[2]),
                cost=int(_text(reply[3])),
            )
        if kind in ("NONEED", "FNLIMIT"):
            return Take(kind, function_id=_text(reply[1]))
        return Take(kind)

    def finish(self, user_id: int, function_id: str, mean_run_us: int = 0, task_id: str | None = None) -> None:
        """A task ended: release what it reserved, record its speed, wake the dispatcher.

        ``task_id`` is the task's Celery id, its ledger key (the dispatcher's, or :meth:`hold`'s for a
        retry); a task no longer in the ledger was reclaimed, and released then.
        """
        self._finish(
            keys=[
                protocol.running_key(),
                protocol.wake_key(),
                protocol.function_running_key(),
                protocol.function_stats_key(function_id),
                protocol.inflight_key(),
                protocol.worker_used_key(),
            ],
            args=[user_id, function_id, mean_run_us, EWMA_WEIGHT, task_id or ""],
        )

    def reclaim(self, task_id: str, user_id: int, runs: Sequence[tuple[int, int]], *, counter: str = "") -> bool:
        """Release a task that will not finish and put ``runs`` back at the head of its user's queue.

        False when the task is not in the ledger any more (it finished, or was reclaimed already).
        """
        return bool(
            self._reclaim(
                keys=[
                    protocol.inflight_key(),
                    protocol.running_key(),
                    protocol.function_running_key(),
                    protocol.worker_used_key(),
                    protocol.pending_key(user_id),
                    protocol.pending_users_key(),
                    protocol.pending_inputs_key(),
                    protocol.wake_key(),
                    protocol.dispatch_stats_key(),
                ],
                args=[task_id, user_id, counter, *(f"{s}|{e}" for s, e in runs if e > s)],
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
        pipe.lpush(protocol.pending_key(user_id), *(e.encode() for e in reversed(entries)))
        pipe.sadd(protocol.pending_users_key(), user_id)
        pipe.hincrby(protocol.pending_inputs_key(), str(user_id), sum(e.end - e.start for e in entries))
        pipe.hincrby(protocol.dispatch_stats_key(), counter, len(entries))
        pipe.rpush(protocol.wake_key(), "1")
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
        pipe.hset(protocol.function_queue_key(), mapping=queues)  # type: ignore[arg-type]  # types-redis: Mapping keys are invariant
        if limits:
            pipe.hset(protocol.function_limit_key(), mapping=limits)  # type: ignore[arg-type]  # types-redis: Mapping keys are invariant
        if warm:
            pipe.hset(protocol.warm_key(), mapping=warm)  # type: ignore[arg-type]  # types-redis: Mapping keys are invariant
        if needs:
            pipe.hset(protocol.function_needs_key(), mapping={f: n.to_json() for f, n in needs.items()})
        pipe.execute()

    def set_needs(self, function_id: str, need: FunctionNeeds) -> None:
        self.redis.hset(protocol.function_needs_key(), function_id, need.to_json())

    def forget_warm(self, function_ids: list[str]) -> None:
        """An app stopped: its functions no longer keep runners warm."""
        if function_ids:
            self.redis.hdel(protocol.warm_key(), *function_ids)

    def warm_functions(self) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in self.redis.hgetall(protocol.warm_key()).items()}

    def users_with_work(self) -> list[int]:
        return sorted(int(u) for u in self.redis.smembers(protocol.pending_users_key()))

    def set_quota(self, user_id: int, quota: int, *, weight: int | None = None) -> None:
        """A user's quota (and weight) changed: the dispatcher uses them from its next pass."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(protocol.quota_key(), str(user_id), quota)
        if weight is not None:
            pipe.hset(protocol.weight_key(), str(user_id), weight)
        pipe.rpush(protocol.wake_key(), "1")
        pipe.execute()

    def wait_for_wake(self, timeout: float) -> None:
        """Block until someone pushes a wake-up (or ``timeout``), then drain the wake list."""
        if self.redis.blpop([protocol.wake_key()], timeout=timeout):
            self.redis.delete(protocol.wake_key())

    def hold(self, task_id: str, task: InflightTask) -> None:
        """Put a task sent outside the dispatcher (a retry) in the ledger, reserving what it needs.

        Then it is released by :meth:`finish` like any task, and reclaimed like any task if its worker dies
        before running it (a retry waits out its backoff on the worker that scheduled it).
        """
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(protocol.inflight_key(), task_id, task.encode())
        pipe.hincrby(protocol.running_key(), str(task.user_id), 1)
        pipe.hincrby(protocol.function_running_key(), task.function_id, 1)
        used = protocol.worker_used_key()
        pipe.hincrby(used, f"{task.worker_id}|slots", 1)
        pipe.hincrby(used, f"{task.worker_id}|cpu", task.cpu)
        pipe.hincrby(used, f"{task.worker_id}|memory", task.memory)
        if task.gpu:
            pipe.hincrby(used, f"{task.worker_id}|gpu:{task.gpu}", task.gpu_count)
        pipe.execute()
