-- lease_renew: reset the holder's lease TTL to ttl_ms; never re-create, never add time.
--
-- KEYS[1]  lease key  (STRING "<token>:<holder_id>", PX ttl)
-- KEYS[2]  fence key  (STRING integer, only ever INCR'd)
-- ARGV[1]  expected   (the exact value "<token>:<holder_id>" the holder was given)
-- ARGV[2]  token      (the holder's token, decimal string)
-- ARGV[3]  ttl_ms     (positive integer)
--
-- Returns {1}  renewed: the TTL is now exactly ttl_ms (PEXPIRE sets, it does not add)
--         {2}  missing: the lease expired or was released; it is NOT re-created
--         {3}  other holder: the lease holds another token/holder
--         {4}  superseded: the fence counter moved past this token (revoked); not renewed
local lease_key = KEYS[1]
local fence_key = KEYS[2]
local expected = ARGV[1]
local token = ARGV[2]
local ttl_ms = tonumber(ARGV[3])

if ttl_ms == nil or ttl_ms <= 0 then
  return redis.error_reply('lease_renew: ttl_ms must be a positive integer')
end

local current = redis.call('GET', lease_key)
if not current then
  return {2}
end
if current ~= expected then
  return {3}
end
if redis.call('GET', fence_key) ~= token then
  return {4}
end
redis.call('PEXPIRE', lease_key, ttl_ms)
return {1}
