-- killswitch_set: set the account's trading-state latch, journal it and announce it, atomically.
--
-- KEYS[1] state_key    HASH  the latch: state, reason, by, at_ms, revoked_token, prev_state,
--                            version (this latch's number: above the one it replaces)
-- KEYS[2] journal_key  STREAM the account's append-only journal
-- KEYS[3] fence_key    STRING integer fencing counter (INCR'd only when revoke = "1")
-- KEYS[4] lease_key    STRING "<token>:<holder_id>" (deleted only when revoke = "1")
-- KEYS[5] control_chan pub/sub channel of state changes (same hash tag as the keys)
-- ARGV[1] new_state    ACTIVE | REDUCING | HALTED
-- ARGV[2] reason       free text from the operator
-- ARGV[3] by           user@host of the operator
-- ARGV[4] revoke       "1": also bump the fence and delete the lease (fence the holder out)
-- ARGV[5] account      "venue:account" (for the published payload and journal)
--
-- Returns {code, prev_state, at_ms, revoked_token, fence_after, subscribers, version}
--   code  1 = latch written (revoked_token "" when there was no lease or no revoke;
--             fence_after "" when revoke = "0"); version its number
--        -1 = a key has the wrong type: prev_state carries "<key index>:<type>"; nothing written
--        -2 = new_state is not one of the three states; nothing written
--        -3 = the stored version is not a stored integer: prev_state carries why; nothing written
-- The version only grows while Redis keeps its writes: a latch that went missing or came
-- back older (a crash that lost the last writes, a failover to a replica without them)
-- shows as a version below one an instance saw (docs/keys.md; killswitch.py). It is the
-- server time in ms, or one more than the version it replaces when that is not below
-- it: so the latch an operator writes after a loss is numbered above the lost ones too
-- (each was at most its own write's time), not one above what Redis fell back to, which
-- every instance that saw a lost latch would refuse again as lost.
local state_key = KEYS[1]
local journal_key = KEYS[2]
local fence_key = KEYS[3]
local lease_key = KEYS[4]
local control_chan = KEYS[5]
local new_state = ARGV[1]
local reason = ARGV[2]
local by = ARGV[3]
local revoke = ARGV[4] == "1"
local account = ARGV[5]

--!include lib/int.lua
--!include lib/time.lua
--!include lib/journal.lua

if new_state ~= "ACTIVE" and new_state ~= "REDUCING" and new_state ~= "HALTED" then
  return {-2, new_state, "", "", "", 0, 0}
end

-- Fail closed on a key of an unexpected shape: check every type before writing anything.
local expected = {{state_key, "hash"}, {journal_key, "stream"}}
if revoke then
  expected[3] = {fence_key, "string"}
  expected[4] = {lease_key, "string"}
end
for i, pair in ipairs(expected) do
  local t = redis.call("TYPE", pair[1])["ok"]
  if t ~= "none" and t ~= pair[2] then
    return {-1, tostring(i) .. ":" .. t, "", "", "", 0, 0}
  end
end

-- a latch from before versions has none: it counts as 0 (read before any write)
local ok, version = pcall(stored_nat, redis.call("HGET", state_key, "version"),
  "latch " .. state_key .. " version")
if not ok then
  return {-3, failure_detail(version) or tostring(version), "", "", "", 0, 0}
end
local now = now_ms()
version = math.max(version + 1, now)

local prev_state = redis.call("HGET", state_key, "state")
if not prev_state then
  prev_state = "ACTIVE"
end

local at_ms = string.format("%d", now)

local revoked_token = ""
local fence_after = ""
if revoke then
  -- INCR first: if the counter is not an integer the script errors before any write.
  fence_after = tostring(redis.call("INCR", fence_key))
  local lease = redis.call("GET", lease_key)
  if lease then
    local sep = string.find(lease, ":", 1, true)
    if sep then
      revoked_token = string.sub(lease, 1, sep - 1)
    else
      revoked_token = lease
    end
    redis.call("DEL", lease_key)
  end
end

redis.call("HSET", state_key,
  "state", new_state, "reason", reason, "by", by, "at_ms", at_ms,
  "revoked_token", revoked_token, "prev_state", prev_state, "version", fmt(version))

journal_add(journal_key,
  "ev", "trading_state", "account", account, "prev_state", prev_state, "state", new_state,
  "reason", reason, "by", by, "at_ms", at_ms, "revoked_token", revoked_token,
  "fence", fence_after, "version", fmt(version))

local payload = cjson.encode({
  type = "trading_state", account = account, state = new_state, prev_state = prev_state,
  reason = reason, by = by, at_ms = tonumber(at_ms), revoked_token = revoked_token,
  fence = fence_after, version = version,
})
local subscribers = redis.call("PUBLISH", control_chan, payload)

return {1, prev_state, at_ms, revoked_token, fence_after, subscribers, version}
