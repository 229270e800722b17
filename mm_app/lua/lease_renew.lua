-- lease_renew (dispatcher): extend the leadership lease, only if this dispatcher still holds it.
--
-- KEYS by name: lease (the leader key, its value the holder's id)
-- ARGV[1] JSON: holder (string); ttl_ms (integer, > 0)
-- Returns 1 when renewed, 0 when another dispatcher holds it (or nobody does).

local k, a = inputs('lease_renew', {'lease'}, {holder = 'string', ttl_ms = 'integer'})
if a.ttl_ms <= 0 then fail('lease_renew', 'ttl_ms must be > 0, got ' .. a.ttl_ms) end
if redis.call('GET', k.lease) == a.holder then return redis.call('PEXPIRE', k.lease, a.ttl_ms) end
return 0
