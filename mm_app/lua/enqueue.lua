-- uses: _sched
-- enqueue (API): refuse a call no live worker could ever hold; else store its payloads and queue its entry.
--
-- KEYS by name:
--   pending         the user's pending list              function_needs  function id -> FunctionNeeds JSON
--   pending_users   users with pending work (set)        workers         worker id -> WorkerCapacity JSON
--   pending_inputs  user -> inputs pending               workers_seen    worker id -> Redis time of its beat
--   wake            the dispatcher's wake-up list        inputs          the call's inputs hash
--   leader          the dispatchers' lease
-- ARGV[1] JSON:
--   user_id (integer); entry (object, a pending entry); ttl (integer, s, of the inputs hash);
--   dead_after (number, s: a worker not seen this long is dead); front (boolean: a nested call, queued
--   before the user's other entries); direct (boolean: the caller will take the entry itself if it may)
-- ARGV[2...]: input index, payload, input index, payload, ... (stored in the inputs hash)
-- Returns {"OK"} (the dispatcher is woken), {"DIRECT"} when ``direct`` and a dispatcher leads and this
-- user is the only one with pending work (the dispatcher is not woken: the caller takes, or wakes it),
-- or {"NOFIT", needs JSON, each live worker's capacity JSON...} when no live worker could ever hold one
-- task of the function (nothing is stored then). With no live worker at all it queues.

local k, a = inputs('enqueue', {
  'pending', 'pending_users', 'pending_inputs', 'wake', 'function_needs', 'workers', 'workers_seen', 'inputs',
  'leader',
}, {user_id = 'integer', entry = 'table', ttl = 'integer', dead_after = 'number', front = 'boolean',
    direct = 'boolean'})
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
if a.direct and redis.call('EXISTS', k.leader) == 1 and redis.call('SCARD', k.pending_users) == 1 then
  return {'DIRECT'}  -- nobody else waits: fair share has nobody to weigh this user against
end
redis.call('RPUSH', k.wake, '1')
return {'OK'}
