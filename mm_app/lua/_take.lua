-- The take step, shared by take.lua (the dispatcher's) and enqueue.lua (the API's shortcut, which takes
-- in the same step as it queues). Needs _sched.lua before it.

-- What is free on worker w for a task of another user than the one it is held for (r: its hold, or nil).
local function free_on(k, w, r)
  local id = w.id
  local u = redis.call('HMGET', k.worker_used, id .. '|slots', id .. '|cpu', id .. '|memory')
  local slots_used = tonumber(u[1] or '0')
  local free_cpu = w.cpu - tonumber(u[2] or '0')
  local free_mem = w.memory - tonumber(u[3] or '0')
  if r ~= nil then  -- held for another user's call: lend only what it leaves
    slots_used = slots_used + 1
    free_cpu = free_cpu - r.cpu
    free_mem = free_mem - r.memory
  end
  return slots_used, free_cpu, free_mem
end

-- The GPU model of worker w to reserve for the task: of those with enough free devices, the one with the
-- fewest ('' if none; r as in free_on).
local function gpu_for(k, w, need, r)
  local least, gpu_label = nil, ''
  for label, n in pairs(w.gpus) do
    if gpu_matches(need.gpu, label) then
      local free_g = n - tonumber(redis.call('HGET', k.worker_used, w.id .. '|gpu:' .. label) or '0')
      if r ~= nil and r.gpu ~= '' and gpu_matches(r.gpu, label) then free_g = free_g - r.gpu_count end
      if free_g >= need.gpu_count and (least == nil or free_g < least) then least, gpu_label = free_g, label end
    end
  end
  return gpu_label
end

-- Best fit: of the live workers that can hold the task now, the one left with the least free capacity.
-- Returns the placement {worker, gpu, grow (only a bigger target places it), used (its slots in use)} or
-- nil, and whether any live worker could hold the task when idle.
local function place(k, a, need, workers)
  local best, best_score, ever = nil, 0, false
  for _, w in ipairs(workers) do
    if can_ever_hold(w, need) then
      ever = true
      local r = a.held[w.id]
      local mine = r ~= nil and r.user_id == a.user_id
      if mine then r = nil end
      local slots_used, free_cpu, free_mem = free_on(k, w, r)
      local open_slots = w.slots
      if w.offered ~= nil and w.offered < open_slots then open_slots = w.offered end  -- its circuit breaker
      local gpu = ''
      local fits = slots_used < open_slots and free_cpu >= need.cpu and free_mem >= need.memory
      if fits and need.gpu ~= '' then
        gpu = gpu_for(k, w, need, r)
        fits = gpu ~= ''
      end
      if fits then
        local grow = slots_used >= tonumber(redis.call('HGET', k.worker_target, w.id) or a.min_slots)
        -- Least left over after placing, each resource as a fraction of the worker's totals.
        local score = (free_cpu - need.cpu) / w.cpu + (free_mem - need.memory) / w.memory
          + (w.slots - slots_used - 1) / w.slots
        if need.gpu == '' and next(w.gpus) ~= nil then score = score + 3 end  -- keep GPU workers for GPU calls
        if grow then score = score + 10 end  -- use concurrency already scaled up before scaling up more
        if mine then score = -1 end  -- the worker held for this user's call
        if best == nil or score < best_score or (score == best_score and w.id < best.worker.id) then
          best, best_score = {worker = w, gpu = gpu, grow = grow, used = slots_used}, score
        end
      end
    end
  end
  return best, ever
end

-- Raise the worker's concurrency target by one (a call waits and only that places it), and log why.
local function grow_target(k, a, id, used, now)
  local from = tonumber(redis.call('HGET', k.worker_target, id) or a.min_slots)
  local to = used + 1
  redis.call('HSET', k.worker_target, id, to)
  redis.call('LPUSH', k.scale_events, cjson.encode({at = now, kind = 'worker', worker = id, from = from, to = to,
    reason = 'calls waiting'}))
  redis.call('LTRIM', k.scale_events, 0, a.events_length - 1)
  redis.call('HINCRBY', k.dispatch_stats, 'grown', 1)
end

-- The take step (see take.lua): its reply as a table. k: take.lua's KEYS by name; a: its arguments.
local function take_step(k, a)
  local user = a.user_id

  -- 1. May the user have a task now, and which one?
  local running = tonumber(redis.call('HGET', k.running, user) or '0')
  local quota = tonumber(redis.call('HGET', k.quota, user) or a.default_quota)
  -- A parent waiting on its children lends them its slot (mm_app/tasks/forward.py): nesting never deadlocks.
  -- Each waiting request is a member scored by when it expires, so a worker that dies mid-wait lends nothing.
  local lent = redis.call('ZCOUNT', k.lent, tonumber(redis.call('TIME')[1]), '+inf')
  if running - lent >= quota then return {kind = 'QUOTA'} end
  local raw = redis.call('LINDEX', k.pending, 0)
  if not raw then
    redis.call('SREM', k.pending_users, user)
    redis.call('HDEL', k.pending_inputs, user)
    return {kind = 'EMPTY'}
  end
  local e = decode_record('take', 'pending entry', raw, ENTRY)
  local fn, first, stop = e.function_id, e.start, e['end']
  local cut, cost = task_of(e, a.target_us, a.max_inputs, a.function_stats_prefix, a.overhead_us)
  local limit = tonumber(redis.call('HGET', k.function_limit, fn) or '0')
  local fn_running = tonumber(redis.call('HGET', k.function_running, fn) or '0')
  if limit > 0 and fn_running >= limit then return {kind = 'FNLIMIT', function_id = fn} end
  if a.budget >= 0 and cost > a.budget then return {kind = 'SHORT', cost = cost} end
  local need_raw = redis.call('HGET', k.function_needs, fn)
  if not need_raw then return {kind = 'NONEED', function_id = fn} end
  local need = cjson.decode(need_raw)

  -- 2. Where?
  local workers, now = live_workers(k.workers, k.workers_seen, a.dead_after)
  local best, ever = place(k, a, need, workers)
  if best == nil then return {kind = 'NOFIT', never = not ever, need = need, cost = cost} end

  -- 3. Take it: cut the entry, reserve, record in the ledger, log.
  redis.call('LPOP', k.pending)
  if cut < stop then
    redis.call('LPUSH', k.pending, entry_record(e.call_id, fn, cut, stop))
  elseif redis.call('LLEN', k.pending) == 0 then
    redis.call('SREM', k.pending_users, user)
  end
  local id = best.worker.id
  local gpu_count = 0
  if best.gpu ~= '' then gpu_count = need.gpu_count end
  local task = {
    user_id = user, function_id = fn, call_id = e.call_id, start = first, ['end'] = cut, worker_id = id,
    cpu = need.cpu, memory = need.memory, gpu = best.gpu, gpu_count = gpu_count, cost = cost, at = now,
    dispatcher = a.dispatcher_id,
  }
  running, fn_running = reserve(k, task)
  redis.call('HSET', k.inflight, a.task_id, cjson.encode(task))
  if redis.call('HINCRBY', k.pending_inputs, user, first - cut) <= 0 then redis.call('HDEL', k.pending_inputs, user) end
  if best.grow then grow_target(k, a, id, best.used, now) end
  redis.call('XADD', k.dispatch_log, 'MAXLEN', '~', a.log_length, '*', 'user', user, 'function', fn,
    'call', e.call_id, 'start', first, 'end', cut, 'worker', id, 'running', running, 'quota', quota,
    'fn_running', fn_running, 'limit', limit, 'task', a.task_id)
  redis.call('HINCRBY', k.dispatch_stats, 'dispatched', 1)
  local next_cost = -1
  local next_raw = redis.call('LINDEX', k.pending, 0)
  if next_raw then
    local _, c = task_of(decode_record('take', 'pending entry', next_raw, ENTRY), a.target_us, a.max_inputs,
      a.function_stats_prefix, a.overhead_us)
    next_cost = c
  end
  return {
    kind = 'TAKEN', worker_id = id, queue = best.worker.queue, cost = cost, need = need, next_cost = next_cost,
    entry = {call_id = e.call_id, function_id = fn, start = first, ['end'] = cut},
  }
end
