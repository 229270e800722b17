-- uses: _sched
-- reclaim (dispatcher, worker at shutdown): release a task that will not finish (its worker died, its
-- message was lost, the broker refused it) and put its unfinished runs back at the head of its user's queue.
--
-- KEYS by name:
--   inflight          task id -> ledger record JSON     pending         the task's user's pending list
--   running           user -> tasks in flight           pending_users   users with pending work (set)
--   function_running  function -> tasks in flight       pending_inputs  user -> inputs pending
--   worker_used       "<worker>|<resource>" -> reserved  wake            the dispatcher's wake-up list
--   dispatch_stats    counters
-- ARGV[1] JSON:
--   task_id (string); user_id (integer: the task's user, whose pending list KEYS name);
--   counter (string, a dispatch_stats counter to bump, '': none); runs (list of [start, end] to put back,
--   in order, each within the task's inputs)
-- Returns 1, or 0 when the task is not in the ledger any more (it finished, or was reclaimed already).

local k, a = inputs('reclaim', {
  'inflight', 'running', 'function_running', 'worker_used', 'pending', 'pending_users', 'pending_inputs', 'wake',
  'dispatch_stats',
}, {task_id = 'string', user_id = 'integer', counter = 'string', runs = 'table'})
for i, run in ipairs(a.runs) do
  if type(run) ~= 'table' or #run ~= 2 or type_of(run[1]) ~= 'integer' or type_of(run[2]) ~= 'integer'
    or run[2] <= run[1] then
    fail('reclaim', 'runs[' .. i .. '] must be [start, end] with start < end, got ' .. cjson.encode(run))
  end
end
local raw = redis.call('HGET', k.inflight, a.task_id)
if not raw then return 0 end
local task = decode_record('reclaim', 'ledger record ' .. a.task_id, raw, TASK)
if task.user_id ~= a.user_id then fail('reclaim', 'task ' .. a.task_id .. ' is not of user ' .. a.user_id) end
for i, run in ipairs(a.runs) do
  if run[1] < task.start or run[2] > task['end'] then
    fail('reclaim', 'runs[' .. i .. '] ' .. cjson.encode(run) .. ' is outside the task\'s inputs ['
      .. task.start .. ', ' .. task['end'] .. ')')
  end
end
redis.call('HDEL', k.inflight, a.task_id)
release(k, task)
local n = 0
for i = #a.runs, 1, -1 do
  local s, e = a.runs[i][1], a.runs[i][2]
  redis.call('LPUSH', k.pending, entry_record(task.call_id, task.function_id, s, e))
  n = n + e - s
end
if n > 0 then
  redis.call('SADD', k.pending_users, task.user_id)
  redis.call('HINCRBY', k.pending_inputs, task.user_id, n)
end
if a.counter ~= '' then redis.call('HINCRBY', k.dispatch_stats, a.counter, 1) end
redis.call('RPUSH', k.wake, '1')
return 1
