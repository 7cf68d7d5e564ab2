-- ledger_rebuild: recompute the open-order index and the reservations from the order
-- records (the sweep's --fix), atomically, only if the set of open orders did not change
-- since the caller listed it.
--
-- KEYS[1] open          SET     client order ids of non-terminal orders
-- KEYS[2] reservations  HASH    <sym>:buy / <sym>:sell lots, <sym>:loss money
-- KEYS[3] journal       STREAM  append-only journal
-- KEYS[4] agg           HASH    maintained aggregates: dropped (the gate rebuilds them)
-- KEYS[5..] order       HASH    every order record the caller found (open set + scan)
-- ARGV[1] number of current members of the open set the caller saw
-- ARGV[2..] client order ids, in the order of KEYS[5..]
-- Returns {0, open_count, changed_fields}  rebuilt
--         {1, 'changed'}                   the open set changed meanwhile: list again
--         {4, detail}                      a key of the wrong type or a malformed order
--                                          record: nothing written
--
-- Every record is read and checked before the first write (Redis does not roll a
-- script back when a command in it fails).
local K_OPEN, K_RES, K_JOURNAL, K_AGG = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local seen_open = tonumber(ARGV[1])

--!include lib/int.lua
--!include lib/read.lua
--!include lib/journal.lua
--!include lib/states.lua

local int = stored_nat

local function main()
  -- 1. read and check
  type_is(K_OPEN, 'set')
  type_is(K_RES, 'hash')
  type_is(K_JOURNAL, 'stream')
  if redis.call('SCARD', K_OPEN) ~= seen_open then return {1, 'changed'} end
  local listed = {}
  for i = 2, #ARGV do listed[ARGV[i]] = true end
  for _, m in ipairs(redis.call('SMEMBERS', K_OPEN)) do
    if not listed[m] then return {1, 'changed'} end
  end

  local totals, members = {}, {}
  for i = 5, #KEYS do
    local coid = ARGV[i - 3]
    local r = rd('HMGET', KEYS[i], 'state', 'symbol', 'side', 'open_lots', 'wl')
    if r[1] and not TERMINAL[r[1]] then
      if not LIVE[r[1]] then bad('order ' .. coid .. ' state is ' .. tostring(r[1])) end
      if not r[2] or (r[3] ~= 'buy' and r[3] ~= 'sell') then
        bad('order ' .. coid .. ' has no symbol/side')
      end
      members[#members + 1] = coid
      local lots = int(r[4], 'order ' .. coid .. ' open_lots')
      local wl = int(r[5], 'order ' .. coid .. ' wl')
      local sk, lk = r[2] .. ':' .. r[3], r[2] .. ':loss'
      totals[sk] = (totals[sk] or 0) + lots
      totals[lk] = (totals[lk] or 0) + lots * wl
      if totals[sk] >= MAXI or totals[lk] >= MAXI then bad('reservation totals overflow') end
    end
  end

  local old = redis.call('HGETALL', K_RES)
  local changed = 0
  local oldh = {}
  for i = 1, #old, 2 do oldh[old[i]] = old[i + 1] end
  for f, v in pairs(oldh) do if fmt(totals[f] or 0) ~= v then changed = changed + 1 end end
  for f, v in pairs(totals) do if oldh[f] == nil and v ~= 0 then changed = changed + 1 end end

  -- 2. write (every key's shape and every value was checked above)
  journal_add(K_JOURNAL, 'ev', 'rebuild',
    'open', fmt(#members), 'changed_fields', fmt(changed))
  redis.call('DEL', K_AGG)
  redis.call('DEL', K_RES)
  for f, v in pairs(totals) do redis.call('HSET', K_RES, f, fmt(v)) end
  redis.call('DEL', K_OPEN)
  for _, m in ipairs(members) do redis.call('SADD', K_OPEN, m) end
  return {0, #members, changed}
end

local ok, res = pcall(main)
if ok then return res end
local detail = failure_detail(res)
if detail then return {4, detail} end
error(res)
