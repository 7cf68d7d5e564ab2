-- paper_submit: one order arrives at the paper exchange: dedupe, expiry fence, accept, match.
--
-- KEYS[1] clock_key     HASH   origin_ms, step, px:<sym> (mark in ticks), pxd:<sym> (mark, decimal)
-- KEYS[2] orders_key    HASH   "<account>|<coid>" -> JSON order record (every value a string)
-- KEYS[3] open_key      SET    "<account>|<coid>" of resting orders
-- KEYS[4] fills_key     STREAM every fill of every account (fills_since reads it)
-- KEYS[5] record_key    STREAM append-only record of every order received, cancel and fill
-- KEYS[6] balances_key  HASH   "<account>|<symbol>" -> position in lots; "<account>|cash" -> money units
-- KEYS[7] seq_key       STRING integer: source of venue order ids and fill ids
-- ARGV[1] account       venue-side account id
-- ARGV[2] coid          client order id (the dedupe key, per account)
-- ARGV[3] symbol        ARGV[4] side (buy|sell)
-- ARGV[5] qty           decimal string      ARGV[6] qty_units   integer: qty / lot
-- ARGV[7] price         decimal string      ARGV[8] px_ticks    integer: price / tick
-- ARGV[9] k             integer: money units per (lot x tick), so notional = qty_units*px_ticks*k
-- ARGV[10] token        the fencing token the order carries (recorded, not checked: venues cannot)
-- ARGV[11] deadline_ms  Unix ms: the order must arrive by then (the venue-side fence)
-- ARGV[12] invalid      "" when Python found the order well-formed, else the rejection reason
--
-- Returns {code, venue_order_id, state, reason}
--   1 = accepted now; state "open" (resting) or "filled" (crossed on arrival, filled at the mark)
--   2 = duplicate client order id: nothing new; the ORIGINAL outcome (state/reason/venue_order_id)
--   3 = rejected now (reason: expired | overflow | no_mark | <invalid>); recorded, so a re-send
--       of the same id returns this same rejection as a duplicate; or the id was canceled
--       before it arrived (reason canceled_before_arrival: paper_cancel.lua's tombstone)
local clock_key = KEYS[1]
local orders_key = KEYS[2]
local open_key = KEYS[3]
local fills_key = KEYS[4]
local record_key = KEYS[5]
local balances_key = KEYS[6]
local seq_key = KEYS[7]
local account = ARGV[1]
local coid = ARGV[2]
local symbol = ARGV[3]
local side = ARGV[4]
local qty = ARGV[5]
local qty_units = tonumber(ARGV[6])
local price = ARGV[7]
local px_ticks = tonumber(ARGV[8])
local k = tonumber(ARGV[9])
local token = ARGV[10]
local deadline_ms = tonumber(ARGV[11])
local invalid = ARGV[12]

-- Integers are exact in a Lua double only below 2^53; past it we fail closed.
--!include lib/int.lua
--!include lib/time.lua

local LIMIT = MAXI

local now_ms = now_ms()
local field = account .. '|' .. coid

-- 1. dedupe: a re-send returns the original outcome, never a second order; an id whose
--    cancel arrived first (a tombstone) is refused, so the cancel is never overtaken.
local existing = redis.call('HGET', orders_key, field)
if existing then
  local rec = cjson.decode(existing)
  if rec.tombstone == '1' then
    redis.call('XADD', record_key, '*', 'type', 'order', 'coid', coid, 'account', account,
      'symbol', symbol, 'side', side, 'qty', qty, 'price', price, 'token', token,
      'deadline_ms', ARGV[11], 'arrival_ms', fmt(now_ms), 'result', 'rejected',
      'reason', 'canceled_before_arrival', 'venue_order_id', '')
    return {3, '', 'canceled', 'canceled_before_arrival'}
  end
  redis.call('XADD', record_key, '*', 'type', 'order', 'coid', coid, 'account', account,
    'symbol', symbol, 'side', side, 'qty', qty, 'price', price, 'token', token,
    'deadline_ms', ARGV[11], 'arrival_ms', fmt(now_ms), 'result', 'duplicate',
    'reason', rec.state, 'venue_order_id', rec.venue_order_id)
  return {2, rec.venue_order_id, rec.state, rec.reason}
end

local venue_order_id = 'po-' .. fmt(redis.call('INCR', seq_key))

-- 2. the checks, in order: arrival deadline, well-formed, mark present, no overflow.
local reason = ''
local mark_ticks = tonumber(redis.call('HGET', clock_key, 'px:' .. symbol) or '')
if deadline_ms == nil or now_ms > deadline_ms then
  reason = 'expired'
elseif invalid ~= '' then
  reason = invalid
elseif mark_ticks == nil then
  reason = 'no_mark'
elseif qty_units == nil or px_ticks == nil or k == nil or qty_units <= 0 or px_ticks <= 0
    or k <= 0 or qty_units >= LIMIT or px_ticks >= LIMIT or k >= LIMIT
    or qty_units * px_ticks > LIMIT / k or qty_units * mark_ticks > LIMIT / k then
  reason = 'overflow'
end

local rec = {
  coid = coid, account = account, symbol = symbol, side = side, qty = qty,
  qty_units = ARGV[6], price = price, px_ticks = ARGV[8], k = ARGV[9], token = token,
  deadline_ms = ARGV[11], arrival_ms = fmt(now_ms), venue_order_id = venue_order_id,
  state = 'open', reason = '', fill_id = '', fill_price = '', fill_ts = '',
}

if reason ~= '' then
  rec.state = 'rejected'
  rec.reason = reason
  redis.call('HSET', orders_key, field, cjson.encode(rec))
  redis.call('XADD', record_key, '*', 'type', 'order', 'coid', coid, 'account', account,
    'symbol', symbol, 'side', side, 'qty', qty, 'price', price, 'token', token,
    'deadline_ms', ARGV[11], 'arrival_ms', fmt(now_ms), 'result', 'rejected',
    'reason', reason, 'venue_order_id', venue_order_id)
  return {3, venue_order_id, 'rejected', reason}
end

redis.call('XADD', record_key, '*', 'type', 'order', 'coid', coid, 'account', account,
  'symbol', symbol, 'side', side, 'qty', qty, 'price', price, 'token', token,
  'deadline_ms', ARGV[11], 'arrival_ms', fmt(now_ms), 'result', 'accepted',
  'reason', '', 'venue_order_id', venue_order_id)

-- 3. match: an order that crosses the mark on arrival is a taker and fills at the mark.
local crossed = (side == 'buy' and mark_ticks <= px_ticks) or (side == 'sell' and mark_ticks >= px_ticks)
if crossed then
  local sign = 1
  if side == 'sell' then sign = -1 end
  local notional = qty_units * mark_ticks * k
  local pos_field = account .. '|' .. symbol
  local cash_field = account .. '|cash'
  local new_pos = tonumber(redis.call('HGET', balances_key, pos_field) or '0') + sign * qty_units
  local new_cash = tonumber(redis.call('HGET', balances_key, cash_field) or '0') - sign * notional
  if math.abs(new_pos) < LIMIT and math.abs(new_cash) < LIMIT then
    local fill_price = redis.call('HGET', clock_key, 'pxd:' .. symbol)
    local fill_id = 'pf-' .. fmt(redis.call('INCR', seq_key))
    redis.call('HSET', balances_key, pos_field, fmt(new_pos), cash_field, fmt(new_cash))
    rec.state = 'filled'
    rec.fill_id = fill_id
    rec.fill_price = fill_price
    rec.fill_ts = fmt(now_ms)
    local entry = {'fill_id', fill_id, 'coid', coid, 'account', account, 'symbol', symbol,
      'side', side, 'qty', qty, 'price', fill_price, 'ts_ms', fmt(now_ms),
      'venue_order_id', venue_order_id, 'liquidity', 'taker'}
    redis.call('XADD', fills_key, '*', unpack(entry))
    redis.call('XADD', record_key, '*', 'type', 'fill', unpack(entry))
  else
    -- A balance past 2^53 cannot be kept exactly: the order rests instead of filling.
    redis.call('XADD', record_key, '*', 'type', 'error', 'coid', coid, 'account', account,
      'reason', 'balance_overflow', 'ts_ms', fmt(now_ms))
  end
end

redis.call('HSET', orders_key, field, cjson.encode(rec))
if rec.state == 'open' then
  redis.call('SADD', open_key, field)
end
return {1, venue_order_id, rec.state, ''}
