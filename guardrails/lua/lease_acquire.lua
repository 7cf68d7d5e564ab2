-- lease_acquire: take the account's lease if it is free, with a fresh fencing token,
-- unless the fence's history is gone or the caller saw a later one (fencing epochs).
--
-- KEYS[1]  lease key   (STRING "<token>:<holder_id>", PX ttl)
-- KEYS[2]  fence key   (STRING integer, only ever INCR'd)
-- KEYS[3]  epoch key   (STRING: the id of this fence's history, created with it;
--                       "<id>@<floor>" after `guardrails fence recover` re-seeded it)
-- KEYS[4]  alarm key   (HASH reason/seen_epoch/seen_token/epoch/fence/by/at_ms: set when
--                       lost history was detected; while it exists no lease is given)
-- ARGV[1]  holder_id   (who asks)
-- ARGV[2]  ttl_ms      (positive integer)
-- ARGV[3]  seen_epoch  (the highest (epoch, token) the caller has seen: epoch id, or "")
-- ARGV[4]  seen_token  (... and token, 0 if none)
-- ARGV[5]  new_epoch   (an id to use if this call creates the fence's history)
-- ARGV[6]  now_ms      (caller's clock, for the alarm record only)
--
-- Returns {1, token, ttl_ms, epoch}         acquired: the lease now holds "<token>:<holder_id>"
--         {2, current_value, pttl, epoch}   held: someone holds it; pttl as PTTL (-1: no expiry)
--         {3, reason, seen, epoch}          refused: 'alarm' (an earlier refusal stands),
--                                           'history_lost' (fence/epoch gone though the
--                                           caller saw a token), 'epoch_changed' (another
--                                           history than the caller saw, not re-seeded
--                                           above its seen_token); the alarm is set
-- Within the caller's epoch, a fence behind the caller's seen_token (a failover to a replica
-- that missed the last INCRs) is first raised to seen_token: the next token is above it.
local lease_key, fence_key, epoch_key, alarm_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local holder_id = ARGV[1]
local ttl_ms = tonumber(ARGV[2])
local seen_epoch = ARGV[3]
local seen_token = tonumber(ARGV[4])
local new_epoch = ARGV[5]

--!include lib/int.lua

if ttl_ms == nil or ttl_ms <= 0 then
  return redis.error_reply('lease_acquire: ttl_ms must be a positive integer')
end
if seen_token == nil or seen_token < 0 or new_epoch == '' then
  return redis.error_reply('lease_acquire: seen_token must be >= 0 and new_epoch non-empty')
end

-- a stored integer field (lib/int's one rule; absent = 0), or nil and why: the script
-- then answers an error naming the key, before any write
local function stored(v, what)
  local ok, n = pcall(stored_nat, v, what)
  if ok then return n end
  return nil, failure_detail(n) or tostring(n)
end

local seen = seen_epoch .. ':' .. string.format('%d', seen_token)
if redis.call('EXISTS', alarm_key) == 1 then
  local alarm_seen, why = stored(redis.call('HGET', alarm_key, 'seen_token'),
    'alarm ' .. alarm_key .. ' seen_token')
  if not alarm_seen then return redis.error_reply('lease_acquire: ' .. why) end
  -- keep the highest token any refused instance saw: recovery re-seeds above it
  if seen_token > alarm_seen then
    redis.call('HSET', alarm_key, 'seen_token', string.format('%d', seen_token),
      'seen_epoch', seen_epoch)
  end
  return {3, 'alarm', seen, redis.call('GET', epoch_key) or ''}
end

local epoch = redis.call('GET', epoch_key)
local fence_now = redis.call('GET', fence_key)
-- the fence is read as a stored integer before anything is written (INCR below would
-- refuse ' 100' or '0x64' too, but only after the epoch may have been set)
local fence_n, fence_why = stored(fence_now, 'fence ' .. fence_key)
if not fence_n then return redis.error_reply('lease_acquire: ' .. fence_why) end
local refused = nil
if not epoch then
  if seen_token > 0 or seen_epoch ~= '' then
    refused = 'history_lost'
  elseif fence_now then
    epoch = new_epoch  -- a fence from before epochs existed: this history gets its id now
    redis.call('SET', epoch_key, epoch)
  end
elseif seen_epoch ~= '' and epoch ~= seen_epoch then
  -- Another history. Accepted only if it was re-seeded above everything the caller saw:
  -- `guardrails fence recover` writes the epoch as "<id>@<floor>", floor = the new fence.
  local floor = tonumber(string.match(epoch, '@(%d+)$') or '')
  if floor == nil or floor < seen_token then
    refused = 'epoch_changed'
  end
end
if refused then
  redis.call('HSET', alarm_key, 'reason', refused, 'seen_epoch', seen_epoch,
    'seen_token', string.format('%d', seen_token), 'epoch', epoch or '', 'fence', fence_now or '',
    'by', holder_id, 'at_ms', ARGV[6])
  return {3, refused, seen, epoch or ''}
end

local current = redis.call('GET', lease_key)
if current then
  return {2, current, redis.call('PTTL', lease_key), epoch or ''}
end

if not epoch then
  epoch = new_epoch  -- a new account: its history starts here
  redis.call('SET', epoch_key, epoch)
end
if seen_token > 0 and fence_n < seen_token then
  redis.call('SET', fence_key, string.format('%d', seen_token))
end
local token = redis.call('INCR', fence_key)
if token >= MAXI then
  -- beyond 2^53 a Lua number is no longer an exact integer: fail closed
  return redis.error_reply('lease_acquire: fencing counter beyond 2^53')
end
redis.call('SET', lease_key, string.format('%d', token) .. ':' .. holder_id, 'PX', ttl_ms)
return {1, token, ttl_ms, epoch}
