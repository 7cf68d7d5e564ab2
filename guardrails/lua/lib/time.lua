-- lib/time: Redis server time in Unix milliseconds.
--
-- A script that writes after TIME needs effects replication on Redis < 5 defaults;
-- redis.replicate_commands is a no-op on 7 and called once here for 6.2.
if redis.replicate_commands then redis.replicate_commands() end

local function now_ms()
  local t = redis.call('TIME')
  -- (TIME's two fields are digit strings: + 0 converts each once, tonumber twice)
  return (t[1] + 0) * 1000 + math.floor((t[2] + 0) / 1000)
end
