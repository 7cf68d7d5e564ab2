-- registry_heartbeat: record one instance's heartbeat, stamped with Redis server time.
--
-- KEYS[1]  instance key   (HASH, one instance's record, PX heartbeat_ttl)
-- KEYS[2]  instances key  (ZSET id -> last heartbeat, ms since epoch, server time)
-- ARGV[1]  instance id
-- ARGV[2]  heartbeat_ttl_ms (positive integer): the record expires unless refreshed
-- ARGV[3]  keep_rows_ms (integer >= 0): ZSET rows silent for longer are pruned;
--          0 skips pruning (the caller prunes now and then, not on every beat)
-- ARGV[4..] field, value, field, value, ... (the record; last_seen_ms is added here)
--
-- Returns {1, now_ms}: recorded; now_ms is the server time written as last_seen_ms.
local instance_key = KEYS[1]
local instances_key = KEYS[2]
local instance_id = ARGV[1]
local ttl_ms = tonumber(ARGV[2])
local keep_rows_ms = tonumber(ARGV[3])

if ttl_ms == nil or ttl_ms <= 0 or keep_rows_ms == nil or keep_rows_ms < 0 then
  return redis.error_reply('registry_heartbeat: ttl must be positive, keep_rows_ms >= 0')
end
if (#ARGV - 3) % 2 ~= 0 then
  return redis.error_reply('registry_heartbeat: fields must come in field/value pairs')
end

--!include lib/time.lua

local now_ms = now_ms()

local fields = {'last_seen_ms', string.format('%d', now_ms)}
for i = 4, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
redis.call('HSET', instance_key, unpack(fields))
redis.call('PEXPIRE', instance_key, ttl_ms)
redis.call('ZADD', instances_key, now_ms, instance_id)
if keep_rows_ms > 0 then
  redis.call('ZREMRANGEBYSCORE', instances_key, '-inf',
    '(' .. string.format('%d', now_ms - keep_rows_ms))
end
return {1, now_ms}
