"""Per-user pending queues in Redis, and the atomic step the dispatcher takes from them.

Each user has a list of :class:`~minimodal.protocol.PendingEntry` (runs of inputs). The dispatcher
takes at most one task's worth of inputs at a time from a user that is under their concurrency
quota; the take, the split of a long run and the ``running`` count change in one Lua script, so
several dispatchers never hand out the same input twice.
"""

from __future__ import annotations

from redis import Redis

from minimodal import protocol
from minimodal.protocol import PendingEntry

# KEYS: pending list, running hash, quota hash, pending-users set, function limits, function running
# ARGV: user id, default quota, target task time (us), max inputs per task, function-stats key prefix
_TAKE = """
local running = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
local quota = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or ARGV[2])
if running >= quota then return false end
local raw = redis.call('LPOP', KEYS[1])
if not raw then
  redis.call('SREM', KEYS[4], ARGV[1])
  return false
end
local call_id, function_id, first, stop = string.match(raw, '([^|]+)|([^|]+)|(%d+)|(%d+)')
local limit = tonumber(redis.call('HGET', KEYS[5], function_id) or '0')
if limit > 0 and tonumber(redis.call('HGET', KEYS[6], function_id) or '0') >= limit then
  redis.call('LPUSH', KEYS[1], raw)  -- at its max_containers: wait for one of its tasks to end
  return false
end
first = tonumber(first); stop = tonumber(stop)
local per_task = 1
local avg = tonumber(redis.call('HGET', ARGV[5] .. function_id, 'avg_us') or '0')
if avg > 0 then per_task = math.max(1, math.min(tonumber(ARGV[4]), math.floor(tonumber(ARGV[3]) / avg))) end
local cut = math.min(stop, first + per_task)
if cut < stop then
  redis.call('LPUSH', KEYS[1], call_id .. '|' .. function_id .. '|' .. cut .. '|' .. stop)
elseif redis.call('LLEN', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[4], ARGV[1])
end
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
redis.call('HINCRBY', KEYS[6], function_id, 1)
return call_id .. '|' .. function_id .. '|' .. first .. '|' .. cut
"""

# KEYS: running hash, wake list, function running, function stats.
# ARGV: user id, function id, mean run time of the task's inputs in us (0: none succeeded), EWMA weight
_FINISH = """
if redis.call('HINCRBY', KEYS[1], ARGV[1], -1) < 0 then redis.call('HSET', KEYS[1], ARGV[1], 0) end
if redis.call('HINCRBY', KEYS[3], ARGV[2], -1) <= 0 then redis.call('HDEL', KEYS[3], ARGV[2]) end
local newest = tonumber(ARGV[3])
if newest > 0 then
  local old = tonumber(redis.call('HGET', KEYS[4], 'avg_us') or '0')
  local avg = newest
  if old > 0 then avg = (1 - tonumber(ARGV[4])) * old + tonumber(ARGV[4]) * newest end
  redis.call('HSET', KEYS[4], 'avg_us', math.max(1, math.floor(avg)))
  redis.call('EXPIRE', KEYS[4], 604800)
end
redis.call('RPUSH', KEYS[2], '1')
return 1
"""
EWMA_WEIGHT = 0.2  # weight of a task's newest run time in its function's average


class PendingQueues:
    """The Redis side of scheduling: enqueue (API), take (dispatcher), finish (worker)."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._take = redis.register_script(_TAKE)
        self._finish = redis.register_script(_FINISH)

    def enqueue(
        self, user_id: int, entry: PendingEntry, *, inputs: dict[str, bytes] | None = None, ttl: int = 0
    ) -> None:
        """Queue a run of inputs (storing their payloads first, in the same round trip) and wake the dispatcher."""
        pipe = self.redis.pipeline(transaction=False)
        if inputs:
            pipe.hset(protocol.inputs_key(entry.call_id), mapping=inputs)
            pipe.expire(protocol.inputs_key(entry.call_id), ttl)
        pipe.rpush(protocol.pending_key(user_id), entry.encode())
        pipe.sadd(protocol.pending_users_key(), user_id)
        pipe.rpush(protocol.wake_key(), "1")
        pipe.execute()

    def take(self, user_id: int, *, default_quota: int, target_us: int, max_inputs: int) -> PendingEntry | None:
        """One task's worth of this user's inputs, or None (nothing pending, or at quota)."""
        raw = self._take(
            keys=[
                protocol.pending_key(user_id),
                protocol.running_key(),
                protocol.quota_key(),
                protocol.pending_users_key(),
                protocol.function_limit_key(),
                protocol.function_running_key(),
            ],
            args=[user_id, default_quota, target_us, max_inputs, protocol.function_stats_key("")],
        )
        return PendingEntry.decode(raw) if raw else None

    def finish(self, user_id: int, function_id: str, mean_run_us: int = 0) -> None:
        """A task ended: free its user's and function's slots, record its speed, wake the dispatcher."""
        self._finish(
            keys=[
                protocol.running_key(),
                protocol.wake_key(),
                protocol.function_running_key(),
                protocol.function_stats_key(function_id),
            ],
            args=[user_id, function_id, mean_run_us, EWMA_WEIGHT],
        )

    def put_back(self, user_id: int, entry: PendingEntry) -> None:
        """Undo a take whose task could not be sent: the entry goes back to the head, the slot is freed."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.lpush(protocol.pending_key(user_id), entry.encode())
        pipe.sadd(protocol.pending_users_key(), user_id)
        pipe.hincrby(protocol.running_key(), str(user_id), -1)
        pipe.hincrby(protocol.function_running_key(), entry.function_id, -1)
        pipe.execute()

    def register_functions(self, queues: dict[str, str], *, limits: dict[str, int], warm: dict[str, int]) -> None:
        """At deploy: each function's Celery queue, its max_containers and its min_containers."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(protocol.function_queue_key(), mapping=queues)
        if limits:
            pipe.hset(protocol.function_limit_key(), mapping=limits)
        if warm:
            pipe.hset(protocol.warm_key(), mapping=warm)
        pipe.execute()

    def forget_warm(self, function_ids: list[str]) -> None:
        """An app stopped: its functions no longer keep runners warm."""
        if function_ids:
            self.redis.hdel(protocol.warm_key(), *function_ids)

    def warm_functions(self) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in self.redis.hgetall(protocol.warm_key()).items()}

    def users_with_work(self) -> list[int]:
        return sorted(int(u) for u in self.redis.smembers(protocol.pending_users_key()))

    def set_quota(self, user_id: int, quota: int) -> None:
        self.redis.hset(protocol.quota_key(), str(user_id), quota)
        self.redis.rpush(protocol.wake_key(), "1")

    def wait_for_wake(self, timeout: float) -> None:
        """Block until someone pushes a wake-up (or ``timeout``), then drain the wake list."""
        if self.redis.blpop([protocol.wake_key()], timeout=timeout):
            self.redis.delete(protocol.wake_key())
