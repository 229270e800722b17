-- uses: _sched
-- hold (worker): put a task sent outside the dispatcher (a retry) in the in-flight ledger, reserving what
-- its record holds, as take does for the tasks it places. finish releases it like any task.
--
-- KEYS by name:
--   inflight          task id -> ledger record JSON     function_running  function -> tasks in flight
--   running           user -> tasks in flight           worker_used       "<worker>|<resource>" -> reserved
-- ARGV[1] JSON: task_id (string, the ledger key); task (object, the ledger record)
-- Returns 1, or 0 when the ledger holds that task id already (nothing is reserved twice).

local k, a = inputs('hold', {'inflight', 'running', 'function_running', 'worker_used'},
  {task_id = 'string', task = 'table'})
local task = check_fields('hold', 'task', a.task, TASK, true)
if a.task_id == '' then fail('hold', 'task_id is empty') end
if redis.call('HSETNX', k.inflight, a.task_id, cjson.encode(task)) == 0 then return 0 end
reserve(k, task)
return 1
