-- ledger_fill: apply one venue fill exactly once (per fill id) to the account's state.
--
-- KEYS[1] order         HASH    the order record
-- KEYS[2] open          SET     client order ids of non-terminal orders
-- KEYS[3] fills         HASH    fill id -> client order id (applied fills)
-- KEYS[4] positions     HASH    <sym>:qty lots, <sym>:cost money, <sym>:rpnl money
-- KEYS[5] reservations  HASH    <sym>:buy / <sym>:sell lots, <sym>:loss money
-- KEYS[6] day           HASH    the fill's trading day: realized_pnl, fees, fills,
--                               fees_uncounted
-- KEYS[7] journal       STREAM  append-only journal
-- KEYS[8] marks         HASH    <sym> mark in ticks (set from the fill when missing)
-- KEYS[9] limits        HASH    the account's limits (i:<sym> for k, for the aggregates)
-- KEYS[10] agg          HASH    maintained aggregates (lib/agg.lua), moved with the fill
-- ARGV[1] fill id  ARGV[2] client order id  ARGV[3] symbol  ARGV[4] side (buy|sell)
-- ARGV[5] lots (integer > 0)  ARGV[6] fill value in money units (integer >= 0, rounded
-- against the account by the caller)  ARGV[7] fee in money units (integer >= 0)
-- ARGV[8] fill price in ticks (integer, for a missing mark)  ARGV[9] fill ts_ms
-- ARGV[10] the trading day of ts_ms (the day KEYS[6] belongs to)
-- ARGV[11] fees the venue could not value in the quote currency, not in ARGV[7]:
--          '<currency>:<amount>,...' (Ledger.fees_uncounted_text; '' or absent: none).
--          An applied fill with one counts 1 in the day's fees_uncounted (a duplicate
--          counts nothing) and the journal's fill entry names them.
-- Returns {code, detail}: 0 applied, 1 duplicate fill id, 2 unknown order,
--         3 refused: symbol/side differ from the order, a malformed number, a fill on
--           a terminal order, or more lots than the order has open (journaled
--           ev=fill_refused; nothing else written),
--         4 bad state (a key of the wrong type, a malformed stored field, an overflow
--           or a reservation that would go below zero): nothing written but a journal entry
--
-- Every field the script changes is read and integer-checked first and the new totals
-- computed; the writes come last, as totals (Redis does not roll a script back when a
-- command in it fails, so a check after the first write would leave half a fill).
local K_ORDER, K_OPEN, K_FILLS, K_POS = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local K_RES, K_DAY, K_JOURNAL, K_MARKS = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local K_LIMITS, K_AGG = KEYS[9], KEYS[10]
local fill_id, coid, symbol, side_s = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local lots_s, value_s, fee_s, px_s, ts_s, day = ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local unc_s = ARGV[11] or ''

--!include lib/int.lua
--!include lib/read.lua
--!include lib/time.lua
--!include lib/journal.lua
--!include lib/states.lua
--!include lib/agg.lua

-- Only when the journal is a stream (or absent): a journal entry never aborts the script.
local function journal(ev, detail)
  journal_try(K_JOURNAL, 'ev', ev, 'fill_id', fill_id,
    'coid', coid, 'symbol', symbol, 'side', side_s, 'lots', lots_s, 'value', value_s,
    'fee', fee_s, 'fees_uncounted', unc_s, 'ts_ms', ts_s, 'day', day, 'detail', detail)
end

local int = stored_int

local function refuse(detail)
  journal('fill_refused', detail)
  return {3, detail}
end

local function main()
  -- 1. read and check everything this fill may change
  local rec = rd('HMGET', K_ORDER, 'state', 'symbol', 'side', 'open_lots', 'wl', 'filled_lots')
  if not rec[1] then return {2, 'no order ' .. coid} end
  if rd('HGET', K_FILLS, fill_id) then return {1, 'fill ' .. fill_id .. ' already applied'} end
  local state = rec[1]
  if not TERMINAL[state] and not LIVE[state] then bad('order state is ' .. tostring(state)) end
  if rec[2] ~= symbol or rec[3] ~= side_s then
    return refuse('fill is ' .. symbol .. ' ' .. side_s .. ', order is ' ..
      tostring(rec[2]) .. ' ' .. tostring(rec[3]))
  end
  local lots, n, fee, ticks = arg_int(lots_s), arg_int(value_s), arg_int(fee_s), arg_int(px_s)
  if not lots or lots <= 0 or not n or not fee or not ticks or ticks <= 0 then
    return refuse('malformed fill numbers')
  end
  if #unc_s > 2048 or not string.find(unc_s, '^[%w%.%-_?:,]*$') then
    return refuse('malformed uncounted fees')
  end
  -- terminal is terminal: the venue said this order can no longer execute (or it is
  -- fully filled), so a new fill contradicts it; it is refused, not booked
  if TERMINAL[state] then return refuse('order is ' .. state) end
  local open_lots, wl = int(rec[4], 'order open_lots'), int(rec[5], 'order wl')
  local filled = int(rec[6], 'order filled_lots')
  if open_lots < 0 or wl < 0 or filled < 0 then bad('order open_lots/wl/filled_lots is negative') end
  if lots > open_lots then
    return refuse('over-fill: ' .. fmt(lots) .. ' lots, order has ' .. fmt(open_lots) .. ' open')
  end
  type_is(K_OPEN, 'set')
  type_is(K_JOURNAL, 'stream')
  local mark_s = rd('HGET', K_MARKS, symbol)
  local qf, cf, rf = symbol .. ':qty', symbol .. ':cost', symbol .. ':rpnl'
  local p = rd('HMGET', K_POS, qf, cf, rf)
  local q, c, rp = int(p[1], 'position ' .. qf), int(p[2], 'position ' .. cf), int(p[3], 'position ' .. rf)
  local side_f, loss_f = symbol .. ':' .. side_s, symbol .. ':loss'
  local other_f = symbol .. ':' .. (side_s == 'buy' and 'sell' or 'buy')
  local rs = rd('HMGET', K_RES, side_f, loss_f, other_f)
  local res_side, res_loss = int(rs[1], 'reservation ' .. side_f), int(rs[2], 'reservation ' .. loss_f)
  local res_other = int(rs[3], 'reservation ' .. other_f)
  local d = rd('HMGET', K_DAY, 'realized_pnl', 'fees', 'fills', 'fees_uncounted')
  local d_rp, d_fees, d_fills = int(d[1], 'day realized_pnl'), int(d[2], 'day fees'), int(d[3], 'day fills')
  -- read (and checked) only when this fill changes it: a fill with every fee counted
  -- leaves the field as it is, absent on a day without such a fill
  local d_unc = unc_s ~= '' and int(d[4], 'day fees_uncounted') or nil

  -- 2. position, cost basis and realized PnL (docs/gate.md, "Fills")
  local side = side_s == 'buy' and 1 or -1
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
  local rp2, d_rp2 = chk(rp + realized), chk(d_rp + realized)
  local d_fees2 = chk(d_fees + fee)

  -- 3. the filled lots move from the order's reservation to the position
  local rel_loss = chk(lots * wl)
  local res_side2, res_loss2 = res_side - lots, res_loss - rel_loss
  if res_side2 < 0 or res_loss2 < 0 then
    -- the totals are already wrong: refuse (never clamp); the sweep rebuilds them
    bad('filling ' .. fmt(lots) .. ' lots would leave reservations ' .. side_f .. '=' ..
      fmt(res_side2) .. ' ' .. loss_f .. '=' .. fmt(res_loss2))
  end
  local open2 = open_lots - lots
  local new_state = (open2 == 0) and 'FILLED' or 'PARTIALLY_FILLED'

  -- 3b. the aggregates after this fill (lib/agg.lua), at the mark (the fill's price
  -- when the symbol has none yet: it is set below)
  local mark = mark_s and int(mark_s, 'mark ' .. symbol) or ticks
  local k = k_from_spec(rd('HGET', K_LIMITS, 'i:' .. symbol))
  local plan = false
  if k and mark > 0 then
    local b, sl = res_side2, res_other
    if side_s == 'sell' then b, sl = res_other, res_side2 end
    local g, u = exposure(q2, b, sl, mark, k, c2)
    plan = agg_plan(K_AGG, symbol, g, u, res_loss2 - res_loss)
  end
  -- 4. write (every key's shape and every value was checked above)
  local now = fmt(now_ms())
  journal_add(K_JOURNAL, 'ev', 'fill', 'fill_id', fill_id,
    'coid', coid, 'symbol', symbol, 'side', side_s, 'lots', fmt(lots), 'value', fmt(n),
    'fee', fmt(fee), 'fees_uncounted', unc_s, 'realized', fmt(realized), 'from', state,
    'to', new_state, 'ts_ms', ts_s, 'day', day, 'late', '0')
  redis.call('HSET', K_FILLS, fill_id, coid)
  redis.call('HSET', K_POS, qf, fmt(q2), cf, fmt(c2), rf, fmt(rp2))
  redis.call('HSET', K_DAY, 'realized_pnl', fmt(d_rp2), 'fees', fmt(d_fees2), 'fills', fmt(d_fills + 1))
  if d_unc then redis.call('HSET', K_DAY, 'fees_uncounted', fmt(d_unc + 1)) end
  redis.call('HSET', K_RES, side_f, fmt(res_side2), loss_f, fmt(res_loss2))
  redis.call('HSET', K_ORDER, 'filled_lots', fmt(filled + lots), 'open_lots', fmt(open2),
    'state', new_state, 'updated_ms', now)
  if new_state == 'FILLED' then redis.call('SREM', K_OPEN, coid) end
  redis.call('HSETNX', K_MARKS, symbol, px_s)
  agg_apply(K_AGG, plan)
  return {0, new_state}
end

local ok, res = pcall(main)
if ok then return res end
local detail = failure_detail(res)
if detail then
  journal('fill_bad_state', detail)
  return {4, detail}
end
error(res)
