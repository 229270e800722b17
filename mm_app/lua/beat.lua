-- beat (worker): one heartbeat. Register the worker's totals, mark it seen at Redis time now, refresh its
-- info key, and wake the dispatcher when its capacity changed.
--
-- KEYS by name:
--   workers       worker id -> WorkerCapacity JSON      heartbeat  the worker's info key (mm:worker:<id>)
--   workers_seen  worker id -> Redis time of its beat   wake       the dispatcher's wake-up list
-- ARGV[1] JSON: worker_id (string); capacity (string, its WorkerCapacity JSON); info (string, JSON for
--   operators and /stats); ttl (integer, s, of the info key)
-- Returns 1.

local k, a = inputs('beat', {'workers', 'workers_seen', 'heartbeat', 'wake'},
  {worker_id = 'string', capacity = 'string', info = 'string', ttl = 'integer'})
if a.ttl <= 0 then fail('beat', 'ttl must be > 0, got ' .. a.ttl) end
local t = redis.call('TIME')
local old = redis.call('HGET', k.workers, a.worker_id)
redis.call('HSET', k.workers, a.worker_id, a.capacity)
redis.call('ZADD', k.workers_seen, t[1], a.worker_id)
redis.call('SET', k.heartbeat, a.info, 'EX', a.ttl)
if old ~= a.capacity then redis.call('RPUSH', k.wake, '1') end  -- new capacity: dispatch now
return 1
