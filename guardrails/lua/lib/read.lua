-- lib/read: reads that fail closed (needs lib/int.lua for bad()).
--
-- rd(cmd, key, ...) is redis.pcall that turns an error (WRONGTYPE...) into
-- {bad = 'key <key>: <error>'}, for commands that answer a string, nil or an array
-- (GET, HGET, HMGET, HGETALL, SMISMEMBER); rd_int is the same for commands that answer
-- an integer (EXISTS, HLEN). type_is(key, want) refuses a key of another type (absent is
-- fine); hash_of turns an HGETALL reply into a table.
--
-- (rd tests `r and r.err`, not type(r): a string's .err is the string library's, nil,
-- and Redis's nil reply is false. type() is a C call that interns its answer — about
-- 700 instructions, on every read of every decision: bench/README.md)
local function rd(...)
  local r = redis.pcall(...)
  if r and r.err then bad('key ' .. tostring(select(2, ...)) .. ': ' .. r.err) end
  return r
end

local function rd_int(...)
  local r = redis.pcall(...)
  if type(r) == 'table' then bad('key ' .. tostring(select(2, ...)) .. ': ' .. tostring(r.err)) end
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
