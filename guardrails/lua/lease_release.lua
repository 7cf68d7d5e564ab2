-- lease_release: delete the lease only if it is still the caller's, and wake standbys.
--
-- KEYS[1]  lease key  (STRING "<token>:<holder_id>", PX ttl)
-- ARGV[1]  expected   (the exact value "<token>:<holder_id>" the holder was given)
-- ARGV[2]  channel    (the account's lease pub/sub channel; a channel, not a key)
-- ARGV[3]  token      (the holder's token, decimal string)
--
-- Returns {1}  released: deleted, and "released <token>" published on the channel
--         {2}  missing: nothing to release (expired or already released)
--         {3}  other holder: the lease is someone else's; left untouched
local lease_key = KEYS[1]
local expected = ARGV[1]
local channel = ARGV[2]
local token = ARGV[3]

local current = redis.call('GET', lease_key)
if not current then
  return {2}
end
if current ~= expected then
  return {3}
end
redis.call('DEL', lease_key)
redis.call('PUBLISH', channel, 'released ' .. token)
return {1}
