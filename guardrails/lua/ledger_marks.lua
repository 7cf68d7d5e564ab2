-- ledger_marks: store mark prices and move the maintained aggregates with them.
--
-- KEYS[1] marks         HASH    <sym> mark in ticks
-- KEYS[2] positions     HASH    <sym>:qty lots, <sym>:cost money
-- KEYS[3] reservations  HASH    <sym>:buy / <sym>:sell lots
-- KEYS[4] limits        HASH    i:<sym> (k money units per lot per tick)
-- KEYS[5] agg           HASH    maintained aggregates (lib/agg.lua)
-- ARGV[1] symbol, ARGV[2] its mark in ticks (a positive integer), ARGV[3] symbol, ...
-- Returns {0, n}  stored n marks (and moved the aggregates, or dropped them when a
--                 symbol's contribution cannot be computed: the gate rebuilds them)
--         {4, detail}  a key of the wrong type or a malformed field: nothing written
-- A bad mark argument is an error reply (the caller rounds and checks every mark).
local K_MARKS, K_POS, K_RES, K_LIMITS, K_AGG = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]

--!include lib/int.lua
--!include lib/read.lua
--!include lib/agg.lua

if #ARGV % 2 ~= 0 then return redis.error_reply('ledger_marks: symbol/mark pairs expected') end
for i = 2, #ARGV, 2 do
  local m = arg_int(ARGV[i])
  if not m or m <= 0 then
    return redis.error_reply('ledger_marks: mark of ' .. ARGV[i - 1] .. ' is not a positive integer')
  end
end

local function main()
  type_is(K_MARKS, 'hash')
  local has_agg = rd('HGET', K_AGG, 'digest')
  local plans = {}
  if has_agg then
    -- every read first, on a running copy of the totals; the writes come after
    local a = rd('HMGET', K_AGG, 'gross', 'uloss')
    local gross, uloss = stored_nat(a[1], 'agg gross'), stored_nat(a[2], 'agg uloss')
    local sets = {}
    -- many symbols: one HGETALL per hash beats several HMGETs per symbol
    local pos, res, ag, lim
    if #ARGV > 16 then
      pos, res = hash_of(rd('HGETALL', K_POS)), hash_of(rd('HGETALL', K_RES))
      ag, lim = hash_of(rd('HGETALL', K_AGG)), hash_of(rd('HGETALL', K_LIMITS))
    end
    for i = 1, #ARGV, 2 do
      local sym, m = ARGV[i], tonumber(ARGV[i + 1])
      local pv, rv, old
      if pos then
        pv = {pos[sym .. ':qty'], pos[sym .. ':cost']}
        rv = {res[sym .. ':buy'], res[sym .. ':sell']}
        old = {ag['g:' .. sym], ag['u:' .. sym]}
      else
        pv = rd('HMGET', K_POS, sym .. ':qty', sym .. ':cost')
        rv = rd('HMGET', K_RES, sym .. ':buy', sym .. ':sell')
        old = rd('HMGET', K_AGG, 'g:' .. sym, 'u:' .. sym)
      end
      local p, c = stored_int(pv[1] or nil, 'position ', sym), stored_int(pv[2] or nil, 'cost ', sym)
      local b, sl = stored_nat(rv[1] or nil, 'reservation ', sym), stored_nat(rv[2] or nil, 'reservation ', sym)
      local g, u = 0, 0
      if p ~= 0 or c ~= 0 or b ~= 0 or sl ~= 0 then
        local si
        if lim then si = lim['i:' .. sym] else si = rd('HGET', K_LIMITS, 'i:' .. sym) end
        local k = k_from_spec(si)
        if not k then plans = false; break end
        g, u = exposure(p, b, sl, m, k, c)
      end
      local g0, u0 = stored_nat(old[1] or nil, 'agg g:', sym), stored_nat(old[2] or nil, 'agg u:', sym)
      gross = add(add(gross, -g0), g)
      uloss = add(add(uloss, -u0), u)
      if g ~= g0 or u ~= u0 then agg_push(sets, sym, g, u) end
    end
    if plans ~= false then
      sets[#sets + 1] = 'gross'
      sets[#sets + 1] = fmt(gross)
      sets[#sets + 1] = 'uloss'
      sets[#sets + 1] = fmt(uloss)
      plans = sets
    end
  end
  for i = 1, #ARGV, 400 do
    redis.call('HSET', K_MARKS, unpack(ARGV, i, math.min(i + 399, #ARGV)))
  end
  if plans == false then
    redis.call('DEL', K_AGG)
  else
    for i = 1, #plans, 400 do
      redis.call('HSET', K_AGG, unpack(plans, i, math.min(i + 399, #plans)))
    end
  end
  return {0, #ARGV / 2}
end

local ok, res = pcall(main)
if ok then return res end
local detail = failure_detail(res)
if detail then return {4, detail} end
error(res)
