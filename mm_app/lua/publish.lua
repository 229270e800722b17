-- publish (worker): append outputs to a call's output stream, each input's once (a duplicate run's is dropped).
--
-- KEYS by name: outputs (the call's output stream); done (set of the input indexes published)
-- ARGV[1] JSON: ttl (integer, s, of both keys); outputs (list, in order: {index (integer), size (integer,
--   how many of ARGV[2...] are its stream fields and values)})
-- ARGV[2...]: each output's stream fields and values in turn (field, value, field, value, ...)
-- Returns each output's stream entry id, or false for a duplicate.

local k, a = inputs('publish', {'outputs', 'done'}, {ttl = 'integer', outputs = 'table'})
local total = 0
for i, o in ipairs(a.outputs) do
  check_fields('publish', 'outputs[' .. i .. ']', o, {index = 'integer', size = 'integer'}, true)
  if o.size < 2 or o.size % 2 ~= 0 then
    fail('publish', 'outputs[' .. i .. ']: size must be an even number of at least 2, got ' .. o.size)
  end
  total = total + o.size
end
if total ~= #ARGV - 1 then
  fail('publish', 'the outputs\' sizes add up to ' .. total .. ' but ARGV[2...] holds ' .. (#ARGV - 1))
end
local ids = {}
local at = 2
for _, o in ipairs(a.outputs) do
  if redis.call('SADD', k.done, o.index) == 1 then
    ids[#ids + 1] = redis.call('XADD', k.outputs, '*', unpack(ARGV, at, at + o.size - 1))
  else
    ids[#ids + 1] = false
  end
  at = at + o.size
end
redis.call('EXPIRE', k.outputs, a.ttl)
redis.call('EXPIRE', k.done, a.ttl)
return ids
