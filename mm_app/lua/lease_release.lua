-- lease_release (dispatcher): give the leadership lease up, only if this dispatcher holds it.
--
-- KEYS by name: lease (the leader key, its value the holder's id)
-- ARGV[1] JSON: holder (string)
-- Returns 1 when released, 0 when this dispatcher did not hold it.

local k, a = inputs('lease_release', {'lease'}, {holder = 'string'})
if redis.call('GET', k.lease) == a.holder then return redis.call('DEL', k.lease) end
return 0
