-- paper_cancel: cancel an order of the paper exchange; an id not seen yet is tombstoned.
--
-- A cancel can never be overtaken by its order: for a client order id the exchange has
-- not seen, the cancel writes a tombstone record (state "canceled", reason
-- "canceled_before_arrival") in the same atomic step, so an order with that id arriving
-- later is refused by paper_submit.lua. A final order stays final.
--
-- KEYS[1] orders_key  HASH   "<account>|<coid>" -> JSON order record
-- KEYS[2] open_key    SET    "<account>|<coid>" of resting orders
-- KEYS[3] record_key  STREAM append-only record of orders, cancels and fills
-- ARGV[1] account     venue-side account id
-- ARGV[2] coid        client order id
--
-- Returns {code, state, venue_order_id}
--   1 = canceled now (state "canceled"): it can never fill afterwards
--   2 = already final: state is filled | canceled | rejected (nothing written but the record)
--   3 = not seen yet: tombstone written (state "canceled", venue_order_id ""): an order
--       with this id arriving later is rejected, so it can never execute
local orders_key = KEYS[1]
local open_key = KEYS[2]
local record_key = KEYS[3]
local account = ARGV[1]
local coid = ARGV[2]

--!include lib/time.lua

local now = string.format('%d', now_ms())
local field = account .. '|' .. coid

local raw = redis.call('HGET', orders_key, field)
if not raw then
  local tomb = {
    coid = coid, account = account, symbol = '', side = '', qty = '', qty_units = '0',
    price = '', px_ticks = '0', k = '0', token = '', deadline_ms = '', arrival_ms = now,
    venue_order_id = '', state = 'canceled', reason = 'canceled_before_arrival',
    fill_id = '', fill_price = '', fill_ts = '', tombstone = '1',
  }
  redis.call('HSET', orders_key, field, cjson.encode(tomb))
  redis.call('XADD', record_key, '*', 'type', 'cancel', 'coid', coid, 'account', account,
    'arrival_ms', now, 'result', 'canceled', 'state', 'canceled',
    'reason', 'canceled_before_arrival')
  return {3, 'canceled', ''}
end
local rec = cjson.decode(raw)
if rec.state ~= 'open' then
  redis.call('XADD', record_key, '*', 'type', 'cancel', 'coid', coid, 'account', account,
    'arrival_ms', now, 'result', 'final', 'state', rec.state)
  return {2, rec.state, rec.venue_order_id}
end
rec.state = 'canceled'
rec.reason = 'canceled'
redis.call('HSET', orders_key, field, cjson.encode(rec))
redis.call('SREM', open_key, field)
redis.call('XADD', record_key, '*', 'type', 'cancel', 'coid', coid, 'account', account,
  'arrival_ms', now, 'result', 'canceled', 'state', 'canceled')
return {1, 'canceled', rec.venue_order_id}
