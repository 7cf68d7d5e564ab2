-- nonce_sync: at takeover, set the wallet's next nonce to the chain's pending nonce — fenced.
--
-- KEYS[1]  lease key  (STRING "<token>:<holder_id>", PX ttl)
-- KEYS[2]  fence key  (STRING integer, only ever INCR'd)
-- KEYS[3]  nonce key  (STRING integer: the next nonce the gate allocates)
-- ARGV[1]  expected   (the exact lease value "<token>:<holder_id>" the caller was given)
-- ARGV[2]  token      (the caller's token, decimal string)
-- ARGV[3]  nonce      (the chain's pending transaction count, decimal string, 0 <= n < 2^53)
--
-- Returns {1, previous}  synced: the nonce key now holds ARGV[3]; previous is the old
--                        value as a string, or "" when the key did not exist
--         {2, ""}        not the holder: the lease is missing, holds another value or has
--                        no expiry (lib/fence.lua)
--         {3, ""}        superseded: the fence counter moved past this token
--         {4, ""}        bad argument: ARGV[3] is not a non-negative integer below 2^53
--
-- The value may move backwards: nonces the gate allocated to orders that never reached
-- the chain are handed out again, so the wallet has no gap and any such unsent order is
-- dead once the reused nonce is mined (the chain accepts one transaction per nonce).
local lease_key = KEYS[1]
local fence_key = KEYS[2]
local nonce_key = KEYS[3]
local expected = ARGV[1]
local token = ARGV[2]
local nonce = ARGV[3]

--!include lib/fence.lua

if not string.match(nonce, '^%d+$') or string.len(nonce) > 15 then
  return {4, ''}
end
-- the one fence (lib/fence): exactly "<token>:<holder_id>", with a live expiry
local prefix = token .. ':'
if string.sub(expected, 1, #prefix) ~= prefix then
  return {2, ''}
end
if fence(lease_key, token, string.sub(expected, #prefix + 1)) ~= 'ok' then
  return {2, ''}
end
if redis.call('GET', fence_key) ~= token then
  return {3, ''}
end
local previous = redis.call('GET', nonce_key)
redis.call('SET', nonce_key, nonce)
return {1, previous or ''}
