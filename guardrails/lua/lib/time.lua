-- lib/time: Redis server time in Unix milliseconds.
--
-- A script that writes after TIME needs effects replication on Redis < 5 defaults;
-- redis.replicate_commands is a no-op on 7 and called once here for 6.2.
if redis.replicate_commands then redis.replicate_commands() end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
