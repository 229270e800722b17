-- What the scheduler's scripts share (enqueue, take, hold, finish, reclaim): the records they read
-- and write, and the one place where a task's capacity is reserved and released.
--
-- Records are JSON objects with the field names of their Python classes in sdk/protocol.py:
--   pending entry (PendingEntry): call_id, function_id, start, end (a run of inputs [start, end))
--   ledger record (InflightTask): user_id, function_id, call_id, start, end, worker_id, cpu, memory, gpu,
--     gpu_count, cost, at, dispatcher
--   function needs (FunctionNeeds), worker capacity (WorkerCapacity): written by Python only.

local ENTRY = {call_id = 'string', function_id = 'string', start = 'integer', ['end'] = 'integer'}
local TASK = {
  user_id = 'integer', function_id = 'string', call_id = 'string', start = 'integer', ['end'] = 'integer',
  worker_id = 'string', cpu = 'integer', memory = 'integer', gpu = 'string', gpu_count = 'integer',
  cost = 'integer', at = 'number', dispatcher = 'string',
}

local function entry_record(call_id, function_id, start, stop)
  return cjson.encode({call_id = call_id, function_id = function_id, start = start, ['end'] = stop})
end

local function decr(key, field, by)
  if redis.call('HINCRBY', key, field, -by) <= 0 then redis.call('HDEL', key, field) end
end

-- Reserve what a ledger record holds: one of its user's and its function's slots, and the worker's slot,
-- cpu, memory and GPUs (fields "<worker>|<resource>" of the worker used hash). Returns the user's and
-- the function's tasks in flight after it. k: running, function_running, worker_used keys.
local function reserve(k, rec)
  local running = redis.call('HINCRBY', k.running, rec.user_id, 1)
  local fn_running = redis.call('HINCRBY', k.function_running, rec.function_id, 1)
  local w = rec.worker_id
  redis.call('HINCRBY', k.worker_used, w .. '|slots', 1)
  redis.call('HINCRBY', k.worker_used, w .. '|cpu', rec.cpu)
  redis.call('HINCRBY', k.worker_used, w .. '|memory', rec.memory)
  if rec.gpu ~= '' then redis.call('HINCRBY', k.worker_used, w .. '|gpu:' .. rec.gpu, rec.gpu_count) end
  return running, fn_running
end

-- Free exactly what reserve took for the same record.
local function release(k, rec)
  decr(k.running, rec.user_id, 1)
  decr(k.function_running, rec.function_id, 1)
  local w = rec.worker_id
  decr(k.worker_used, w .. '|slots', 1)
  decr(k.worker_used, w .. '|cpu', rec.cpu)
  decr(k.worker_used, w .. '|memory', rec.memory)
  if rec.gpu ~= '' then decr(k.worker_used, w .. '|gpu:' .. rec.gpu, rec.gpu_count) end
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

-- One task's worth of a pending entry (decoded): where to cut it, and its estimated cost in us.
local function task_of(e, target_us, max_inputs, stats_prefix, overhead_us)
  local first, stop = e.start, e['end']
  local avg = tonumber(redis.call('HGET', stats_prefix .. e.function_id, 'avg_us') or '0')
  local per_task = 1
  if avg > 0 then per_task = math.max(1, math.min(max_inputs, math.floor(target_us / avg))) end
  local cut = math.min(stop, first + per_task)
  local cost = overhead_us + target_us
  if avg > 0 then cost = overhead_us + (cut - first) * avg end
  return cut, math.floor(cost)
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
