-- The inputs of every script by name (mm_app/lua/__init__.py puts this file before each script).
--
-- ARGV[1] is a JSON object: the script's arguments by name, and "keys", the names of KEYS in their
-- order (so neither side counts positions). ARGV[2], ARGV[3], ... carry bytes that JSON cannot (the
-- payloads of enqueue, the outputs of publish), where a script says so. A missing, unknown or mistyped
-- key or argument is an error reply naming the script and the culprit, never a silent wrong result.

-- Raise an error reply "<script>: <message>".
local function fail(script, message)
  error({err = script .. ': ' .. message})
end

local type, floor, pairs = type, math.floor, pairs

local function type_of(v)
  if v == cjson.null then return 'null' end
  if type(v) == 'number' and v == floor(v) then return 'integer' end
  return type(v)
end

local function has_type(v, t)
  local lt = type(v)
  if t == 'integer' then return lt == 'number' and v == floor(v) end
  return lt == t
end

-- Check the fields of a decoded JSON object against types ('integer', 'number', 'string', 'table',
-- 'boolean'); with exact, a field not in types is an error too. `what` names the object in errors.
-- One pass over the object; the slow pass that names a missing field runs only when one is missing.
local function check_fields(script, what, obj, types, exact)
  if type(obj) ~= 'table' then fail(script, what .. ' must be a JSON object, got ' .. type_of(obj)) end
  local matched, expected = 0, 0
  for _ in pairs(types) do expected = expected + 1 end
  for name, v in pairs(obj) do
    local t = types[name]
    if t == nil then
      if exact then fail(script, what .. ': unknown "' .. tostring(name) .. '"') end
    else
      if not has_type(v, t) then
        local shown = type_of(v)
        if type(v) ~= 'table' and v ~= cjson.null then shown = shown .. ' ' .. tostring(v) end
        fail(script, what .. ': "' .. name .. '" must be ' .. t .. ', got ' .. shown)
      end
      matched = matched + 1
    end
  end
  if matched ~= expected then
    for name, t in pairs(types) do
      if obj[name] == nil then fail(script, what .. ': missing "' .. name .. '" (' .. t .. ')') end
    end
  end
  return obj
end

-- Decode a JSON record (from ARGV or from Redis) and check its fields, or raise a clear error.
local function decode_record(script, what, raw, types)
  local ok, obj = pcall(cjson.decode, raw)
  if not ok then fail(script, what .. ' is not JSON: ' .. string.sub(tostring(raw), 1, 120)) end
  return check_fields(script, what, obj, types, false)
end

-- The script's keys and arguments by name: `key_names` lists the keys it needs, `arg_types` maps each
-- argument it needs to its type. Returns (keys by name, arguments by name).
local function inputs(script, key_names, arg_types)
  if ARGV[1] == nil then fail(script, 'ARGV[1] must be a JSON object of named arguments; got no ARGV') end
  local ok, a = pcall(cjson.decode, ARGV[1])
  if not ok or type(a) ~= 'table' then
    fail(script, 'ARGV[1] must be a JSON object of named arguments, got ' .. string.sub(ARGV[1], 1, 120))
  end
  if type(a.keys) ~= 'table' then fail(script, 'ARGV[1] has no "keys" list naming KEYS') end
  if #a.keys ~= #KEYS then
    fail(script, 'got ' .. #KEYS .. ' KEYS but "keys" names ' .. #a.keys)
  end
  local wanted = {}
  for _, name in ipairs(key_names) do wanted[name] = true end
  local k = {}
  for i, name in ipairs(a.keys) do
    if not wanted[name] then fail(script, 'unknown key "' .. tostring(name) .. '"') end
    k[name] = KEYS[i]
  end
  for _, name in ipairs(key_names) do
    if k[name] == nil then fail(script, 'missing key "' .. name .. '"') end
  end
  a.keys = nil
  check_fields(script, 'arguments', a, arg_types, true)
  return k, a
end
