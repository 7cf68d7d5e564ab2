-- lib/fence: the ONE definition of "fenced" for every script that writes under a lease.
--
-- The caller is fenced in when the lease key holds exactly "<token>:<holder_id>" AND has
-- a live expiry (PTTL > 0). fence(lease_key, token, holder) returns
--   'ok', pttl                   the caller holds the live lease; pttl > 0 ms remain
--   'lease_expired', detail      no lease (expired, released or revoked), or it ends now
--   'stale_token', detail        the lease holds another token or holder
--   'bad_state', detail          the lease has no expiry, or is not a string
-- It only reads (GET, PTTL), so a script checks it before its first write. A script
-- that judges several callers in one run (gate_admit's batch) reads the lease once with
-- lease_read and judges each with fence_judge: nothing else runs during a script and a
-- key cannot expire in it, so the value is what a second read would return (its PTTL
-- counts down on the real clock: the caller samples the clock beside it).

-- the lease's value (false when there is none, nil when the key is not a string) and,
-- when there is one, its PTTL
local function lease_read(lease_key)
  local ok, lease = pcall(redis.call, 'GET', lease_key)
  if not ok then return nil, nil end
  if not lease then return false, nil end
  return lease, redis.call('PTTL', lease_key)
end

-- fence()'s verdict for token:holder on a lease read by lease_read
local function fence_judge(lease_key, lease, pttl, token, holder)
  if lease == nil then return 'bad_state', 'key ' .. lease_key .. ': not a string lease' end
  if not lease then return 'lease_expired', 'no live lease' end
  if lease ~= token .. ':' .. holder then
    return 'stale_token', 'lease is held as ' .. lease .. ', not ' .. token .. ':' .. holder
  end
  if pttl == -2 then return 'lease_expired', 'no live lease' end
  if pttl < 0 then return 'bad_state', 'lease has no expiry' end
  if pttl == 0 then return 'lease_expired', 'lease expires now' end
  return 'ok', pttl
end

local function fence(lease_key, token, holder)
  local lease, pttl = lease_read(lease_key)
  return fence_judge(lease_key, lease, pttl, token, holder)
end
