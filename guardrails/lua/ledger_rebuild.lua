-- ledger_rebuild: recompute the open-order index and the reservations from the order
-- records (the sweep's --fix), atomically, only if the set of open orders did not change
-- since the caller listed it.
--
-- KEYS[1] open          SET     client order ids of non-terminal orders
-- KEYS[2] reservations  HASH    <sym>:buy / <sym>:sell lots, <sym>:loss money
-- KEYS[3] journal       STREAM  append-only journal
-- KEYS[4..] order       HASH    every order record the caller found (open set + scan)
-- ARGV[1] number of current members of the open set the caller saw
-- ARGV[2..] client order ids, in the order of KEYS[4..]
-- Returns {0, open_count, changed_fields}  rebuilt
--         {1, 'changed'}                   the open set changed meanwhile: list again
local K_OPEN, K_RES, K_JOURNAL = KEYS[1], KEYS[2], KEYS[3]
local seen_open = tonumber(ARGV[1])

if redis.replicate_commands then redis.replicate_commands() end

local TERMINAL = {FILLED = true, CANCELED = true, REJECTED = true, EXPIRED = true}
local function fmt(n) return string.format('%d', n) end

if redis.call('SCARD', K_OPEN) ~= seen_open then return {1, 'changed'} end
local listed = {}
for i = 2, #ARGV do listed[ARGV[i]] = true end
for _, m in ipairs(redis.call('SMEMBERS', K_OPEN)) do
  if not listed[m] then return {1, 'changed'} end
end

local totals, members = {}, {}
for i = 4, #KEYS do
  local coid = ARGV[i - 2]
  local r = redis.call('HMGET', KEYS[i], 'state', 'symbol', 'side', 'open_lots', 'wl')
  if r[1] and not TERMINAL[r[1]] then
    members[#members + 1] = coid
    local lots, wl = tonumber(r[4]) or 0, tonumber(r[5]) or 0
    local sk, lk = r[2] .. ':' .. r[3], r[2] .. ':loss'
    totals[sk] = (totals[sk] or 0) + lots
    totals[lk] = (totals[lk] or 0) + lots * wl
  end
end

local old = redis.call('HGETALL', K_RES)
local changed = 0
local oldh = {}
for i = 1, #old, 2 do oldh[old[i]] = tonumber(old[i + 1]) end
for f, v in pairs(oldh) do if (totals[f] or 0) ~= v then changed = changed + 1 end end
for f, v in pairs(totals) do if oldh[f] == nil and v ~= 0 then changed = changed + 1 end end

redis.call('DEL', K_RES)
for f, v in pairs(totals) do redis.call('HSET', K_RES, f, fmt(v)) end
redis.call('DEL', K_OPEN)
for _, m in ipairs(members) do redis.call('SADD', K_OPEN, m) end
redis.call('XADD', K_JOURNAL, 'MAXLEN', '~', '100000', '*', 'ev', 'rebuild',
  'open', fmt(#members), 'changed_fields', fmt(changed))
return {0, #members, changed}
