-- shrink (autoscaler): lower a worker's concurrency target, only if it is still what the autoscaler read.
--
-- KEYS by name: worker_target (worker id -> slots filled first); scale_events (capped list of decisions);
--   dispatch_stats (counters)
-- ARGV[1] JSON: worker_id (string); expected (integer, the target read); target (integer, the new one);
--   event (string, the decision's JSON for scale_events); length (integer, > 0: scale_events' cap)
-- Returns 1 when lowered, 0 when the target changed meanwhile (nothing is written then).

local k, a = inputs('shrink', {'worker_target', 'scale_events', 'dispatch_stats'},
  {worker_id = 'string', expected = 'integer', target = 'integer', event = 'string', length = 'integer'})
if a.length <= 0 then fail('shrink', 'length must be > 0, got ' .. a.length) end
if tonumber(redis.call('HGET', k.worker_target, a.worker_id) or '-1') ~= a.expected then return 0 end
redis.call('HSET', k.worker_target, a.worker_id, a.target)
redis.call('LPUSH', k.scale_events, a.event)
redis.call('LTRIM', k.scale_events, 0, a.length - 1)
redis.call('HINCRBY', k.dispatch_stats, 'shrunk', 1)
return 1
