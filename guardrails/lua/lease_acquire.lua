-- lease_acquire: take the account's lease if it is free, with a fresh fencing token.
--
-- KEYS[1]  lease key  (STRING "<token>:<holder_id>", PX ttl)
-- KEYS[2]  fence key  (STRING integer, only ever INCR'd)
-- ARGV[1]  holder_id  (who asks)
-- ARGV[2]  ttl_ms     (positive integer)
--
-- Returns {1, token, ttl_ms}        acquired: the lease now holds "<token>:<holder_id>"
--         {2, current_value, pttl}  held: someone holds it; pttl is its remaining TTL
--                                   in ms (-1 if it has no expiry)
-- The fence counter is INCR'd only when the lease is taken, inside this one script, so
-- a token is never handed out twice and never reused after a release or an expiry.
local lease_key = KEYS[1]
local fence_key = KEYS[2]
local holder_id = ARGV[1]
local ttl_ms = tonumber(ARGV[2])

--!include lib/int.lua

if ttl_ms == nil or ttl_ms <= 0 then
  return redis.error_reply('lease_acquire: ttl_ms must be a positive integer')
end

local current = redis.call('GET', lease_key)
if current then
  return {2, current, redis.call('PTTL', lease_key)}
end

local token = redis.call('INCR', fence_key)
if token >= MAXI then
  -- beyond 2^53 a Lua number is no longer an exact integer: fail closed
  return redis.error_reply('lease_acquire: fencing counter beyond 2^53')
end
redis.call('SET', lease_key, string.format('%d', token) .. ':' .. holder_id, 'PX', ttl_ms)
return {1, token, ttl_ms}
