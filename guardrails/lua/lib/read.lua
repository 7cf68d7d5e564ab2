-- lib/read: reads that fail closed (needs lib/int.lua for bad()).
--
-- rd(cmd, key, ...) is redis.pcall that turns an error (WRONGTYPE...) into
-- {bad = 'key <key>: <error>'}; type_is(key, want) refuses a key of another type
-- (absent is fine); hash_of turns an HGETALL reply into a table.
local function rd(...)
  local r = redis.pcall(...)
  if type(r) == 'table' and r.err then bad('key ' .. tostring(select(2, ...)) .. ': ' .. r.err) end
  return r
end

local function type_is(key, want)
  local t = redis.call('TYPE', key)
  t = t.ok or t
  if t ~= want and t ~= 'none' then bad('key ' .. key .. ' is a ' .. t .. ', not a ' .. want) end
end

local function hash_of(flat)
  local h = {}
  for i = 1, #flat, 2 do h[flat[i]] = flat[i + 1] end
  return h
end
