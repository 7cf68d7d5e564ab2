-- paper_advance: move the paper exchange's clock to a newer price step and fill crossed orders.
--
-- Idempotent and order-independent: the prices of step N are a pure function of
-- (seed, symbol, N) computed by the caller, and this script applies them only when N is
-- newer than the stored step, so any number of instances driving the clock produce one
-- price path and each crossing fills once.
--
-- KEYS[1] clock_key     HASH   origin_ms, step, px:<sym> (mark in ticks), pxd:<sym> (mark, decimal)
-- KEYS[2] orders_key    HASH   "<account>|<coid>" -> JSON order record (every value a string)
-- KEYS[3] open_key      SET    "<account>|<coid>" of resting orders
-- KEYS[4] fills_key     STREAM every fill of every account
-- KEYS[5] record_key    STREAM append-only record of orders, cancels and fills
-- KEYS[6] balances_key  HASH   "<account>|<symbol>" -> position in lots; "<account>|cash" -> money units
-- KEYS[7] seq_key       STRING integer: source of fill ids
-- ARGV[1] step          integer price-step index the prices below belong to
-- ARGV[2] origin_ms     Unix ms of step 0; written only when the clock does not exist yet
-- ARGV[3] n             number of symbols; then for each: ARGV[4+3i] symbol,
--                       ARGV[5+3i] mark in ticks (integer), ARGV[6+3i] mark as a decimal string
--
-- Returns {code, stored_step, fills}
--   1 = the clock moved to `step` (or was created at it); fills = orders filled by the move
--   0 = the stored step is already >= `step`: nothing written
local clock_key = KEYS[1]
local orders_key = KEYS[2]
local open_key = KEYS[3]
local fills_key = KEYS[4]
local record_key = KEYS[5]
local balances_key = KEYS[6]
local seq_key = KEYS[7]
local step = tonumber(ARGV[1])
local origin_ms = ARGV[2]
local n = tonumber(ARGV[3])

--!include lib/int.lua
--!include lib/time.lua

local LIMIT = MAXI

local stored = redis.call('HMGET', clock_key, 'origin_ms', 'step')
if stored[1] and tonumber(stored[2]) >= step then
  return {0, stored[2], 0}
end

local marks = {}
local set = {'step', fmt(step)}
if not stored[1] then
  set[#set + 1] = 'origin_ms'
  set[#set + 1] = origin_ms
end
for i = 0, n - 1 do
  local sym = ARGV[4 + 3 * i]
  marks[sym] = {ticks = tonumber(ARGV[5 + 3 * i]), dec = ARGV[6 + 3 * i]}
  set[#set + 1] = 'px:' .. sym
  set[#set + 1] = ARGV[5 + 3 * i]
  set[#set + 1] = 'pxd:' .. sym
  set[#set + 1] = ARGV[6 + 3 * i]
end
redis.call('HSET', clock_key, unpack(set))

local now_ms = now_ms()

-- A resting order the new mark crosses is a maker: it fills at its own limit price.
local filled = 0
for _, field in ipairs(redis.call('SMEMBERS', open_key)) do
  local raw = redis.call('HGET', orders_key, field)
  if not raw then
    redis.call('SREM', open_key, field)
  else
    local rec = cjson.decode(raw)
    local m = marks[rec.symbol]
    local px_ticks = tonumber(rec.px_ticks)
    if rec.state ~= 'open' then
      redis.call('SREM', open_key, field)
    elseif m and ((rec.side == 'buy' and m.ticks <= px_ticks) or (rec.side == 'sell' and m.ticks >= px_ticks)) then
      local qty_units = tonumber(rec.qty_units)
      local sign = 1
      if rec.side == 'sell' then sign = -1 end
      local notional = qty_units * px_ticks * tonumber(rec.k)
      local pos_field = rec.account .. '|' .. rec.symbol
      local cash_field = rec.account .. '|cash'
      local new_pos = tonumber(redis.call('HGET', balances_key, pos_field) or '0') + sign * qty_units
      local new_cash = tonumber(redis.call('HGET', balances_key, cash_field) or '0') - sign * notional
      if math.abs(new_pos) < LIMIT and math.abs(new_cash) < LIMIT then
        local fill_id = 'pf-' .. fmt(redis.call('INCR', seq_key))
        redis.call('HSET', balances_key, pos_field, fmt(new_pos), cash_field, fmt(new_cash))
        rec.state = 'filled'
        rec.fill_id = fill_id
        rec.fill_price = rec.price
        rec.fill_ts = fmt(now_ms)
        redis.call('HSET', orders_key, field, cjson.encode(rec))
        redis.call('SREM', open_key, field)
        local entry = {'fill_id', fill_id, 'coid', rec.coid, 'account', rec.account,
          'symbol', rec.symbol, 'side', rec.side, 'qty', rec.qty, 'price', rec.price,
          'ts_ms', fmt(now_ms), 'venue_order_id', rec.venue_order_id, 'liquidity', 'maker'}
        redis.call('XADD', fills_key, '*', unpack(entry))
        redis.call('XADD', record_key, '*', 'type', 'fill', unpack(entry))
        filled = filled + 1
      else
        redis.call('XADD', record_key, '*', 'type', 'error', 'coid', rec.coid,
          'account', rec.account, 'reason', 'balance_overflow', 'ts_ms', fmt(now_ms))
      end
    end
  end
end
return {1, fmt(step), filled}
