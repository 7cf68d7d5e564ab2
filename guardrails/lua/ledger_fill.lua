-- ledger_fill: apply one venue fill exactly once (per fill id) to the account's state.
--
-- KEYS[1] order         HASH    the order record
-- KEYS[2] open          SET     client order ids of non-terminal orders
-- KEYS[3] fills         HASH    fill id -> client order id (applied fills)
-- KEYS[4] positions     HASH    <sym>:qty lots, <sym>:cost money, <sym>:rpnl money
-- KEYS[5] reservations  HASH    <sym>:buy / <sym>:sell lots, <sym>:loss money
-- KEYS[6] day           HASH    the trading day: realized_pnl, fees, fills
-- KEYS[7] journal       STREAM  append-only journal
-- KEYS[8] marks         HASH    <sym> mark in ticks (set from the fill when missing)
-- ARGV[1] fill id  ARGV[2] client order id  ARGV[3] symbol  ARGV[4] side (buy|sell)
-- ARGV[5] lots (integer > 0)  ARGV[6] fill value in money units (integer >= 0, rounded
-- against the account by the caller)  ARGV[7] fee in money units (integer >= 0)
-- ARGV[8] fill price in ticks (integer, for a missing mark)  ARGV[9] fill ts_ms  ARGV[10] day
-- Returns {code, detail}: 0 applied, 1 duplicate fill id, 2 unknown order,
--         3 refused (symbol/side differ from the order, or a malformed number),
--         4 bad state (wrong key type or overflow: nothing written)
local K_ORDER, K_OPEN, K_FILLS, K_POS = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local K_RES, K_DAY, K_JOURNAL, K_MARKS = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local fill_id, coid, symbol, side_s = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local lots_s, value_s, fee_s, px_s, ts_s, day = ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10]

if redis.replicate_commands then redis.replicate_commands() end

local MAXI = 9007199254740992
local TERMINAL = {FILLED = true, CANCELED = true, REJECTED = true, EXPIRED = true}
local function fmt(n) return string.format('%d', n) end

local function rd(...)
  local r = redis.pcall(...)
  if type(r) == 'table' and r.err then error({bad = r.err}) end
  return r
end
local function int(v, what)
  if not v then return 0 end
  local n = tonumber(v)
  if not n or n ~= math.floor(n) or n >= MAXI or n <= -MAXI then
    error({bad = what .. ' is not an integer: ' .. tostring(v)})
  end
  return n
end
local function chk(n)
  if n >= MAXI or n <= -MAXI then error({bad = 'overflow'}) end
  return n
end
-- exact floor / ceil of a / b for integers (b > 0), safe against double rounding
local function ifloor(a, b)
  local q = math.floor(a / b)
  local r = a - q * b
  if r < 0 then q = q - 1 elseif r >= b then q = q + 1 end
  return q
end
local function iceil(a, b) return -ifloor(-a, b) end

local function main()
  local rec = rd('HMGET', K_ORDER, 'state', 'symbol', 'side', 'open_lots', 'wl', 'filled_lots')
  if not rec[1] then return {2, 'no order ' .. coid} end
  if rd('HGET', K_FILLS, fill_id) then return {1, 'fill ' .. fill_id .. ' already applied'} end
  if rec[2] ~= symbol or rec[3] ~= side_s then
    return {3, 'fill is ' .. symbol .. ' ' .. side_s .. ', order is ' .. rec[2] .. ' ' .. rec[3]}
  end
  local lots, n, fee = tonumber(lots_s), tonumber(value_s), tonumber(fee_s)
  if not lots or lots <= 0 or lots ~= math.floor(lots) or lots >= MAXI
     or not n or n < 0 or n ~= math.floor(n) or n >= MAXI
     or not fee or fee < 0 or fee ~= math.floor(fee) or fee >= MAXI then
    return {3, 'malformed fill numbers'}
  end
  local side = side_s == 'buy' and 1 or -1
  local state, open_lots, wl = rec[1], int(rec[4], 'open_lots'), int(rec[5], 'wl')
  local filled = int(rec[6], 'filled_lots')
  local q = int(rd('HGET', K_POS, symbol .. ':qty'), 'position')
  local c = int(rd('HGET', K_POS, symbol .. ':cost'), 'cost')
  rd('HGET', K_RES, symbol .. ':buy')
  rd('HGET', K_DAY, 'realized_pnl')
  rd('HGET', K_MARKS, symbol)
  rd('SISMEMBER', K_OPEN, coid)

  -- position, cost basis and realized PnL (docs/gate.md, "Fills")
  local f = side * lots
  local realized = 0
  local q2, c2
  if q == 0 or (q > 0) == (f > 0) then
    q2 = chk(q + f)
    c2 = chk(c + side * n)
  else
    local aq, B = math.abs(q), math.abs(c)
    local x = math.min(lots, aq)
    local b, v
    if q > 0 then -- closing a long by selling: basis up, proceeds down
      b = (x == aq) and B or iceil(chk(B * x), aq)
      v = (x == lots) and n or ifloor(chk(n * x), lots)
      realized = v - b
    else -- closing a short by buying: basis down, cost up
      b = (x == aq) and B or ifloor(chk(B * x), aq)
      v = (x == lots) and n or iceil(chk(n * x), lots)
      realized = b - v
    end
    local qs = q > 0 and 1 or -1
    if lots <= aq then
      q2 = q + f
      c2 = qs * (B - b)
    else
      q2 = side * (lots - aq)
      c2 = side * (n - v)
    end
  end
  realized = chk(realized - fee)

  -- reservation: the filled part of the open quantity moves to the position
  local x = math.min(lots, open_lots)
  local new_state = state
  if not TERMINAL[state] then
    new_state = (open_lots - x == 0) and 'FILLED' or 'PARTIALLY_FILLED'
  end

  rd('XADD', K_JOURNAL, 'MAXLEN', '~', '100000', '*', 'ev', 'fill', 'fill_id', fill_id,
    'coid', coid, 'symbol', symbol, 'side', side_s, 'lots', fmt(lots), 'value', fmt(n),
    'fee', fmt(fee), 'realized', fmt(realized), 'from', state, 'to', new_state,
    'ts_ms', ts_s, 'day', day, 'late', TERMINAL[state] and '1' or '0')
  redis.call('HSET', K_FILLS, fill_id, coid)
  redis.call('HSET', K_POS, symbol .. ':qty', fmt(q2), symbol .. ':cost', fmt(c2))
  redis.call('HINCRBY', K_POS, symbol .. ':rpnl', fmt(realized))
  redis.call('HINCRBY', K_DAY, 'realized_pnl', fmt(realized))
  redis.call('HINCRBY', K_DAY, 'fees', fmt(fee))
  redis.call('HINCRBY', K_DAY, 'fills', 1)
  if x > 0 then
    redis.call('HINCRBY', K_RES, symbol .. ':' .. side_s, fmt(-x))
    redis.call('HINCRBY', K_RES, symbol .. ':loss', fmt(-(x * wl)))
  end
  local t = redis.call('TIME')
  local now_ms = fmt(tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
  redis.call('HSET', K_ORDER, 'filled_lots', fmt(filled + lots), 'open_lots', fmt(open_lots - x),
    'state', new_state, 'updated_ms', now_ms)
  if new_state == 'FILLED' then redis.call('SREM', K_OPEN, coid) end
  redis.call('HSETNX', K_MARKS, symbol, px_s)
  if TERMINAL[state] then return {0, 'late fill on a ' .. state .. ' order'} end
  return {0, new_state}
end

local ok, res = pcall(main)
if ok then return res end
if type(res) == 'table' and (res.bad or res.err) then return {4, res.bad or res.err} end
error(res)
