-- uses: _sched
-- finish (worker): a task ended. Remove it from the ledger, release exactly what it reserved, fold its
-- inputs' mean run time into its function's average, and wake the dispatcher.
--
-- KEYS by name:
--   inflight          task id -> ledger record JSON     worker_used     "<worker>|<resource>" -> reserved
--   running           user -> tasks in flight           function_stats  the function's stats hash (avg_us)
--   function_running  function -> tasks in flight       wake            the dispatcher's wake-up list
-- ARGV[1] JSON:
--   task_id (string, its ledger key; '': none); mean_run_us (integer, 0: no input succeeded);
--   ewma_weight (number in [0, 1], of the newest run time in the average)
-- Returns 1 when it released the task, 0 when the ledger no longer held it: reclaimed already (and
-- released then), or lost with Redis's state (nothing left to release).

local k, a = inputs('finish', {'inflight', 'running', 'function_running', 'worker_used', 'function_stats', 'wake'},
  {task_id = 'string', mean_run_us = 'integer', ewma_weight = 'number'})
if a.ewma_weight < 0 or a.ewma_weight > 1 then fail('finish', 'ewma_weight must be in [0, 1], got ' .. a.ewma_weight) end
local released = 0
local raw = false
if a.task_id ~= '' then raw = redis.call('HGET', k.inflight, a.task_id) end
if raw then
  local task = decode_record('finish', 'ledger record ' .. a.task_id, raw, TASK)
  redis.call('HDEL', k.inflight, a.task_id)
  release(k, task)
  released = 1
end
local newest = a.mean_run_us
if newest > 0 then
  local old = tonumber(redis.call('HGET', k.function_stats, 'avg_us') or '0')
  local avg = newest
  if old > 0 then avg = (1 - a.ewma_weight) * old + a.ewma_weight * newest end
  redis.call('HSET', k.function_stats, 'avg_us', math.max(1, math.floor(avg)))
  redis.call('EXPIRE', k.function_stats, 604800)
end
redis.call('RPUSH', k.wake, '1')
return released
