-- uses: _sched, _take
-- enqueue (API): refuse a call no live worker could ever hold; else store its payloads and queue its entry.
--
-- KEYS by name: take.lua's (pending, pending_users, pending_inputs, function_needs, workers, workers_seen
-- and the others the take step uses), and
--   wake            the dispatcher's wake-up list        inputs          the call's inputs hash
--   leader          the dispatchers' lease
-- ARGV[1] JSON:
--   user_id (integer); entry (object, a pending entry); ttl (integer, s, of the inputs hash);
--   dead_after (number, s: a worker not seen this long is dead); front (boolean: a nested call, queued
--   before the user's other entries); direct (object: {} or, for the API's shortcut, take.lua's arguments
--   but user_id and dead_after, with message (a Celery task message without body: see mm_app/broker.py),
--   sandbox_prefix and sandbox_task (the task of an entry whose call id starts with it))
-- ARGV[2...]: input index, payload, input index, payload, ... (stored in the inputs hash)
-- Returns {"OK"} (the dispatcher is woken), {"SENT", take.lua's TAKEN reply} when ``direct`` is given,
-- a dispatcher leads and this user is the only one with pending work: then the same step took the head
-- of the user's queue and pushed its task on the worker's Celery queue (the dispatcher is woken only
-- when the take leaves work queued; a refused take wakes it and returns {"OK"}),
-- or {"NOFIT", needs JSON, each live worker's capacity JSON...} when no live worker could ever hold one
-- task of the function (nothing is stored then). With no live worker at all it queues.

local k, a = inputs('enqueue', {
  'pending', 'pending_users', 'pending_inputs', 'running', 'quota', 'lent', 'function_limit', 'function_running',
  'function_needs', 'workers', 'workers_seen', 'worker_used', 'worker_target', 'inflight', 'scale_events',
  'dispatch_log', 'dispatch_stats', 'wake', 'inputs', 'leader',
}, {user_id = 'integer', entry = 'table', ttl = 'integer', dead_after = 'number', front = 'boolean',
    direct = 'table'})
local DIRECT = {
  task_id = 'string', dispatcher_id = 'string', budget = 'integer', held = 'table', default_quota = 'integer',
  target_us = 'integer', max_inputs = 'integer', overhead_us = 'integer', min_slots = 'integer',
  log_length = 'integer', events_length = 'integer', function_stats_prefix = 'string', message = 'table',
  sandbox_prefix = 'string', sandbox_task = 'string',
}
local direct = next(a.direct) ~= nil and check_fields('enqueue', 'direct', a.direct, DIRECT, true)
local e = check_fields('enqueue', 'entry', a.entry, ENTRY, true)
if e['end'] <= e.start then fail('enqueue', 'entry: an empty run [' .. e.start .. ', ' .. e['end'] .. ')') end
if #ARGV % 2 ~= 1 then fail('enqueue', 'ARGV[2...] must be pairs of input index and payload') end

local need_raw = redis.call('HGET', k.function_needs, e.function_id)
if need_raw then
  local need = cjson.decode(need_raw)
  local workers = live_workers(k.workers, k.workers_seen, a.dead_after)
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
for i = 2, #ARGV, 1000 do
  redis.call('HSET', k.inputs, unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
if #ARGV >= 2 then redis.call('EXPIRE', k.inputs, a.ttl) end
local record = entry_record(e.call_id, e.function_id, e.start, e['end'])
if a.front then redis.call('LPUSH', k.pending, record) else redis.call('RPUSH', k.pending, record) end
redis.call('SADD', k.pending_users, a.user_id)
redis.call('HINCRBY', k.pending_inputs, a.user_id, e['end'] - e.start)
if direct and redis.call('EXISTS', k.leader) == 1 and redis.call('SCARD', k.pending_users) == 1 then
  -- Nobody else waits: fair share has nobody to weigh this user against, so take and send it here.
  direct.user_id, direct.dead_after = a.user_id, a.dead_after
  local t = take_step(k, direct)
  if t.kind == 'TAKEN' then
    local m, e = direct.message, t.entry
    local args = {e.call_id, e.function_id, a.user_id, e.start, e['end']}
    if string.sub(e.call_id, 1, #direct.sandbox_prefix) == direct.sandbox_prefix then
      m.headers.task, args = direct.sandbox_task, {e.call_id, a.user_id}
    end
    local embed = {callbacks = cjson.null, errbacks = cjson.null, chain = cjson.null, chord = cjson.null}
    m.body = cjson.encode({args, {}, embed})
    m.headers.argsrepr = cjson.encode(args)
    m.properties.delivery_info.routing_key = t.queue
    redis.call('LPUSH', t.queue, cjson.encode(m))
    if t.next_cost >= 0 then redis.call('RPUSH', k.wake, '1') end  -- the rest: the pass spreads it over free slots
    return {'SENT', cjson.encode(t)}
  end
end
redis.call('RPUSH', k.wake, '1')
return {'OK'}
