-- rate_limit (API): one request against a user's call rate limit, by the generic cell rate algorithm.
--
-- KEYS by name: limit (the user's key: the theoretical arrival time of its next request, us of Redis time)
-- ARGV[1] JSON: interval_us (number, > 0: us per request); burst_us (number, >= 0: the burst allowance)
-- Returns the us to wait before retrying, 0 when the request is allowed (and counted).

local k, a = inputs('rate_limit', {'limit'}, {interval_us = 'number', burst_us = 'number'})
if a.interval_us <= 0 then fail('rate_limit', 'interval_us must be > 0, got ' .. a.interval_us) end
if a.burst_us < 0 then fail('rate_limit', 'burst_us must be >= 0, got ' .. a.burst_us) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval, allowance = a.interval_us, a.burst_us
local tat = tonumber(redis.call('GET', k.limit) or now)
if tat < now then tat = now end
local wait = tat + interval - allowance - now
if wait > 0 then return wait end
redis.call('SET', k.limit, tat + interval, 'PX', math.ceil((tat + interval - now) / 1000) + 1000)
return 0
