-- gate_admit: one atomic admission decision for one intent of one account (docs/gate.md).
--
-- KEYS[1]  schema        STRING  key-schema version
-- KEYS[2]  state         HASH    trading-state latch (field state)
-- KEYS[3]  lease         STRING  "<token>:<holder_id>" with PX
-- KEYS[4]  intents       HASH    intent id -> "<coid>|<token>|<deadline_ms>|<nonce or ->|<digest>"
-- KEYS[5]  limits        HASH    the account's effective limits (docs/keys.md)
-- KEYS[6]  positions     HASH    <sym>:qty lots, <sym>:cost money, <sym>:rpnl money
-- KEYS[7]  reservations  HASH    <sym>:buy lots, <sym>:sell lots, <sym>:loss money
-- KEYS[8]  marks         HASH    <sym> mark in ticks
-- KEYS[9]  throttle      HASH    tokens (milli-tokens), ts_ms
-- KEYS[10] day           HASH    today's realized_pnl (money)
-- KEYS[11] order         HASH    the order record of this intent's client order id
-- KEYS[12] open          SET     client order ids of non-terminal orders
-- KEYS[13] journal       STREAM  append-only journal
-- KEYS[14] stats         HASH    admitted / duplicate / denied:<reason> counters
-- KEYS[15] denials       STREAM  capped recent denials
-- KEYS[16] nonce         STRING  next EVM nonce (only touched when ARGV[10] == "1")
-- KEYS[17] agg           HASH    maintained aggregates (lib/agg.lua; docs/keys.md)
-- KEYS[18] tomb          HASH    tombstones of pruned intents (lib/tomb.lua)
-- ARGV[1] schema version expected   ARGV[2] token        ARGV[3] holder id
-- ARGV[4] intent id                 ARGV[5] client order id
-- ARGV[6] symbol   ARGV[7] side (buy|sell)   ARGV[8] qty (decimal string)
-- ARGV[9] price (decimal string)    ARGV[10] allocate nonce (0|1)   ARGV[11] trading day
-- Returns {0, duplicate (0|1), token, submit_deadline_ms, nonce or -1, symbol, side, qty, price}
--           admitted; symbol..price are the ORDER RECORD's (what was admitted, read back:
--           for a duplicate, never the caller's arguments; '' when the record is gone)
--         {code, detail}  denied; code indexes REASON below (gate.py maps it, in one place)
-- The digest of an admission is sha1 of the length-prefixed symbol, side, qty and price
-- strings (gate.intent_digest mirrors it); a later admit of the same intent id whose
-- digest differs is denied intent_conflict.
local K_SCHEMA, K_STATE, K_LEASE, K_INTENTS = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local K_LIMITS, K_POS, K_RES, K_MARKS = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local K_THROTTLE, K_DAY, K_ORDER, K_OPEN = KEYS[9], KEYS[10], KEYS[11], KEYS[12]
local K_JOURNAL, K_STATS, K_DENIALS, K_NONCE = KEYS[13], KEYS[14], KEYS[15], KEYS[16]
local K_AGG, K_TOMB = KEYS[17], KEYS[18]
local want_schema, token, holder, intent_id = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local coid, symbol, side_s, qty_s = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local price_s, alloc, day = ARGV[9], ARGV[10], ARGV[11]

--!include lib/int.lua
--!include lib/read.lua
--!include lib/time.lua
--!include lib/journal.lua
--!include lib/fence.lua
--!include lib/agg.lua
--!include lib/tomb.lua

local REASON = {
  'schema_mismatch', 'halted', 'reduce_only', 'stale_token', 'lease_expired',
  'bad_order', 'unknown_symbol', 'off_tick', 'off_lot', 'max_notional',
  'price_band', 'throttled', 'position_limit', 'gross_exposure', 'daily_loss', 'bad_state',
  'intent_conflict', 'intent_pruned',
}
-- the codes by name (one table: Lua 5.1 allows a function 60 upvalues); a literal, not
-- built from REASON: the chunk runs on every EVALSHA
local C = {SCHEMA_MISMATCH = 1, HALTED = 2, REDUCE_ONLY = 3, STALE_TOKEN = 4,
  LEASE_EXPIRED = 5, BAD_ORDER = 6, UNKNOWN_SYMBOL = 7, OFF_TICK = 8, OFF_LOT = 9,
  MAX_NOTIONAL = 10, PRICE_BAND = 11, THROTTLED = 12, POSITION_LIMIT = 13,
  GROSS_EXPOSURE = 14, DAILY_LOSS = 15, BAD_STATE = 16, INTENT_CONFLICT = 17,
  INTENT_PRUNED = 18}

local P10 = {[0] = 1, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13,
  1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22} -- exact powers of ten in a double

-- A plain positive decimal "123" or "0.0150": no sign, exponent, nan or inf.
-- Returns mantissa, scale (value = m * 10^-scale) or nil.
-- (At most 15 significant digits, i.e. a mantissa below 10^15: exact in a double.)
local function parse_dec(s)
  if #s == 0 or #s > 40 then return nil end
  local ip, fp = string.match(s, '^(%d+)%.(%d+)$')
  if not ip then
    ip = string.match(s, '^(%d+)$')
    fp = ''
  end
  if not ip then return nil end
  if string.byte(fp, -1) == 48 then fp = string.match(fp, '^(%d-)0+$') end
  local m = tonumber(ip .. fp)
  if not m or m >= 1e15 then return nil end
  return m, #fp
end

-- value / unit as an integer, or nil, 'overflow' | 'off'.
local function to_units(m, s, um, us)
  local num, den = m, um
  if us >= s then
    if us - s > 22 then return nil, 'overflow' end
    num = m * P10[us - s]
  else
    if s - us > 22 then return nil, 'overflow' end
    den = um * P10[s - us]
  end
  if num >= MAXI or den >= MAXI then return nil, 'overflow' end
  if num % den ~= 0 then return nil, 'off' end
  return num / den
end

-- An instrument's stored spec "<tick_m> <tick_s> <lot_m> <lot_s> <k> <max_lots>", each a
-- strict stored integer (tick = tick_m x 10^-tick_s ...); nil when the symbol has none.
local function instrument(si, sym)
  if not si then return nil end
  -- six unsigned digit runs is exactly six stored_nat values, bar the 2^53 bound
  local f1, f2, f3, f4, f5, f6 = string.match(si, '^(%d+) (%d+) (%d+) (%d+) (%d+) (%d+)$')
  if not f6 then bad('limits i:' .. sym .. ' is malformed: ' .. si) end
  local function part(i, f)
    local n = #f <= 16 and tonumber(f)
    if not n or n >= MAXI then
      bad('limits i:' .. sym .. ' part ' .. i .. ' is not an integer: ' .. f)
    end
    return n
  end
  local v1, v2, v3, v4 = part(1, f1), part(2, f2), part(3, f3), part(4, f4)
  local v5, v6 = part(5, f5), part(6, f6)
  if v1 == 0 or v3 == 0 or v5 == 0 then bad('limits i:' .. sym .. ' has a zero tick, lot or k') end
  if v2 > 22 or v4 > 22 then bad('limits i:' .. sym .. ' has a scale beyond 10^-22') end
  return v1, v2, v3, v4, v5, v6
end

local function deny(code, detail)
  redis.pcall('HINCRBY', K_STATS, 'denied:' .. REASON[code], 1)
  redis.pcall('XADD', K_DENIALS, 'MAXLEN', '~', '1000', '*',
    'intent_id', intent_id, 'reason', REASON[code], 'detail', detail,
    'token', token, 'holder', holder, 'symbol', symbol, 'side', side_s,
    'qty', qty_s, 'price', price_s)
  return {code, detail}
end

local FENCE_DENIAL = {lease_expired = C.LEASE_EXPIRED, stale_token = C.STALE_TOKEN, bad_state = C.BAD_STATE}

local function main()
  -- Reads first (each fails closed on a wrong type); writes only after every check.
  local schema = rd('GET', K_SCHEMA)
  -- 1. key-schema version
  if schema ~= want_schema then
    return deny(C.SCHEMA_MISMATCH, 'key schema is ' .. (schema or 'missing') .. ', gate speaks ' .. want_schema)
  end
  local lim = rd('HMGET', K_LIMITS, 'max_order_notional', 'max_gross_exposure',
    'daily_loss_limit', 'band_ppm', 'rate_milli', 'burst', 'i:' .. symbol, 'digest')
  if not lim[1] then return deny(C.BAD_STATE, 'no limits stored for the account') end
  local state = rd('HGET', K_STATE, 'state')

  -- Order sanity (pure); reported at step 5, or at step 2 in REDUCING.
  local sane_code, sane_detail, side, lots, ticks, k, max_lots
  local function sanity()
    if side_s == 'buy' then side = 1 elseif side_s == 'sell' then side = -1 else
      return C.BAD_ORDER, 'side must be buy or sell, got ' .. side_s
    end
    local tm, ts, lm, ls
    tm, ts, lm, ls, k, max_lots = instrument(lim[7], symbol)
    if not tm then return C.UNKNOWN_SYMBOL, 'symbol ' .. symbol .. ' is not configured' end
    local qm, qs = parse_dec(qty_s)
    if not qm then return C.BAD_ORDER, 'qty ' .. qty_s .. ' is not a plain positive decimal' end
    local pm, ps = parse_dec(price_s)
    if not pm then return C.BAD_ORDER, 'price ' .. price_s .. ' is not a plain positive decimal' end
    if qm == 0 then return C.BAD_ORDER, 'qty must be greater than 0' end
    if pm == 0 then return C.BAD_ORDER, 'price must be greater than 0' end
    local why
    lots, why = to_units(qm, qs, lm, ls)
    if not lots then
      if why == 'off' then return C.OFF_LOT, 'qty ' .. qty_s .. ' is not a multiple of the lot' end
      return C.BAD_ORDER, 'qty ' .. qty_s .. ' is out of range'
    end
    ticks, why = to_units(pm, ps, tm, ts)
    if not ticks then
      if why == 'off' then return C.OFF_TICK, 'price ' .. price_s .. ' is not a multiple of the tick' end
      return C.BAD_ORDER, 'price ' .. price_s .. ' is out of range'
    end
    return nil
  end
  sane_code, sane_detail = sanity()

  -- The book: with valid aggregates (lib/agg.lua: made for these limits, and agreeing
  -- with this symbol's own recomputation below) only this symbol's fields are read;
  -- otherwise the whole book, from which the aggregates are rebuilt on admission.
  local sf = {symbol .. ':qty', symbol .. ':cost', symbol .. ':buy', symbol .. ':sell',
    symbol .. ':loss'}
  local agg = rd('HMGET', K_AGG, 'digest', 'gross', 'uloss', 'rloss', 'g:' .. symbol,
    'u:' .. symbol)
  local fast = lim[8] and agg[1] == lim[8]
  local pos, res, marks
  if fast or sane_code then
    local pv = rd('HMGET', K_POS, sf[1], sf[2])
    local rv = rd('HMGET', K_RES, sf[3], sf[4], sf[5])
    pos = {[sf[1]] = pv[1] or nil, [sf[2]] = pv[2] or nil}
    res = {[sf[3]] = rv[1] or nil, [sf[4]] = rv[2] or nil, [sf[5]] = rv[3] or nil}
    marks = {[symbol] = rd('HGET', K_MARKS, symbol) or nil}
  end
  local function whole_book()
    pos = hash_of(rd('HGETALL', K_POS))
    res = hash_of(rd('HGETALL', K_RES))
    marks = hash_of(rd('HGETALL', K_MARKS))
  end
  if not pos then whole_book() end

  -- each stored field is parsed once per decision (the checks below revisit symbols)
  local qtys, resvs = {}, {}
  local function qty(sym)
    local v = qtys[sym]
    if not v then v = stored_int(pos[sym .. ':qty'], 'position ', sym); qtys[sym] = v end
    return v
  end
  -- money units per lot per tick of a symbol with exposure (this order's, or stored)
  local ks = {}
  local function k_of(sym)
    if sym == symbol then return k end
    local v = ks[sym]
    if not v then
      local si = rd('HGET', K_LIMITS, 'i:' .. sym)
      if not si then bad('position in unconfigured symbol ' .. sym) end
      -- only k is used: the spec's shape is checked whole, k as a stored integer > 0
      local kk = string.match(si, '^%d+ %d+ %d+ %d+ (%d+) %d+$')
      v = kk and #kk <= 16 and tonumber(kk)
      if not v or v == 0 or v >= MAXI then bad('limits i:' .. sym .. ' is malformed: ' .. si) end
      ks[sym] = v
    end
    return v
  end
  -- a stored mark: a positive integer number of ticks
  local markn = {}
  local function mark_of(v, sym)
    if not v then return nil end
    local m = markn[sym]
    if not m then
      m = stored_int(v, 'mark ', sym)
      if m <= 0 then bad('mark ' .. sym .. ' is not positive: ' .. v) end
      markn[sym] = m
    end
    return m
  end
  -- a reservation below zero means the totals are already wrong (a release applied
  -- twice?): admitting against it would exceed the limits, so fail closed
  local function resv(sym, s)
    local f = sym .. ':' .. s
    local v = resvs[f]
    if not v then
      v = stored_int(res[f], 'reservation ', f)
      if v < 0 then bad('reservation ' .. f .. ' is negative: ' .. fmt(v)) end
      resvs[f] = v
    end
    return v
  end

  -- 2. trading state
  if state == 'HALTED' then return deny(C.HALTED, 'account is HALTED') end
  if state == 'REDUCING' then
    if sane_code then return deny(sane_code, sane_detail) end
    local p = qty(symbol)
    local same = resv(symbol, side == 1 and 'buy' or 'sell')
    -- Reduces |position| even if every open order on this side fills too.
    if not (p * side < 0 and same + lots <= math.abs(p)) then
      return deny(C.REDUCE_ONLY, 'account is REDUCING and this order does not reduce the position')
    end
  elseif state and state ~= 'ACTIVE' then
    return deny(C.BAD_STATE, 'trading state is ' .. tostring(state))
  end

  -- 3. fence: the lease holds exactly this token and holder, and is live (lib/fence)
  local fenced, pttl = fence(K_LEASE, token, holder)
  if fenced ~= 'ok' then return deny(FENCE_DENIAL[fenced], pttl) end

  -- 4. idempotency: an admitted intent returns its original decision, and only for the
  -- very same order: the same id with other fields is a conflict (never re-sent as ours)
  local digest = redis.sha1hex(#symbol .. ':' .. symbol .. #side_s .. ':' .. side_s ..
    #qty_s .. ':' .. qty_s .. #price_s .. ':' .. price_s)
  local prior = rd('HGET', K_INTENTS, intent_id)
  if prior then
    local pc, pt, pd, pn, pg = string.match(prior, '^([^|]*)|(%d+)|(%d+)|([^|]*)|(%x+)$')
    local was = rd('HMGET', K_ORDER, 'symbol', 'side', 'qty', 'price')
    if not pc then
      -- a record from before digests were stored: compare with the order record
      pc, pt, pd, pn = string.match(prior, '^([^|]*)|(%d+)|(%d+)|([^|]*)$')
      if not pc then bad('intents ' .. intent_id .. ' is malformed') end
      if not was[1] then
        bad('intents ' .. intent_id .. ' has no digest and no order record to compare')
      end
      pg = (was[1] == symbol and was[2] == side_s and was[3] == qty_s and was[4] == price_s)
        and digest or ''
    end
    if pg ~= digest or pc ~= coid then
      local what = ''
      if was[1] then
        what = ' (' .. tostring(was[2]) .. ' ' .. tostring(was[3]) .. ' ' .. tostring(was[1]) ..
          ' @ ' .. tostring(was[4]) .. ')'
      end
      return deny(C.INTENT_CONFLICT, 'intent ' .. intent_id .. ' was admitted as another order' ..
        what .. '; a different order needs a new intent id')
    end
    local prior_nonce = -1
    if pn ~= '-' then prior_nonce = stored_nat(pn, 'intents ' .. intent_id .. ' nonce') end
    pt = stored_nat(pt, 'intents ' .. intent_id .. ' token')
    pd = stored_nat(pd, 'intents ' .. intent_id .. ' deadline')
    redis.pcall('HINCRBY', K_STATS, 'duplicate', 1)
    return {0, 1, pt, pd, prior_nonce,
      was[1] or '', was[2] or '', was[3] or '', was[4] or ''}
  end
  -- 4b. an intent the prune sweep archived and removed is never admitted again
  local tb, tfp = tomb_of(intent_id)
  if tomb_has(rd('HGET', K_TOMB, tb), tfp) then
    return deny(C.INTENT_PRUNED, 'intent ' .. intent_id .. ' was decided and pruned ' ..
      '(archived) after the retention window; a new order needs a new intent id')
  end

  -- 5. order sanity
  if sane_code then return deny(sane_code, sane_detail) end

  local max_notional = stored_nat(lim[1], 'limits max_order_notional')
  local max_gross = stored_nat(lim[2], 'limits max_gross_exposure')
  local loss_limit = stored_nat(lim[3], 'limits daily_loss_limit')
  local band_ppm = stored_nat(lim[4], 'limits band_ppm')
  local rate_milli = stored_nat(lim[5], 'limits rate_milli')
  local burst = stored_nat(lim[6], 'limits burst')
  -- (the checked products of lib/int inline: no closure and pcall on the hot path)
  local notional = lots * ticks
  if notional < MAXI then notional = notional * k end
  if notional >= MAXI then return deny(C.BAD_ORDER, 'order value overflows the exact integer range') end

  -- 6. max notional per order
  if notional > max_notional then
    return deny(C.MAX_NOTIONAL, 'notional ' .. fmt(notional) .. ' > ' .. fmt(max_notional) .. ' money units')
  end

  -- 7. price band against the last mark
  local mark = mark_of(marks[symbol], symbol)
  if not mark or mark <= 0 then return deny(C.PRICE_BAND, 'no mark for ' .. symbol) end
  local dist = math.abs(ticks - mark)
  local lhs, rhs = dist * 1000000, band_ppm * mark
  if lhs >= MAXI or rhs >= MAXI then return deny(C.BAD_ORDER, 'price band check overflows') end
  if lhs > rhs then
    return deny(C.PRICE_BAND, 'price ' .. price_s .. ' is ' .. fmt(dist) .. ' ticks from mark ' ..
      fmt(mark) .. ' ticks (band ' .. fmt(band_ppm) .. ' ppm)')
  end

  -- 8. order-rate throttle (token bucket in milli-tokens, server clock)
  local now_ms = now_ms()
  local tb = rd('HMGET', K_THROTTLE, 'tokens', 'ts_ms')
  local cap = burst * 1000
  local tokens = cap
  if tb[1] then
    tokens = stored_nat(tb[1], 'throttle tokens')
    local elapsed = now_ms - stored_nat(tb[2], 'throttle ts_ms')
    if elapsed < 0 then elapsed = 0 end
    if elapsed > 1000000000 then elapsed = 1000000000 end
    local refill = elapsed * rate_milli
    if refill >= MAXI then tokens = cap else tokens = math.min(cap, tokens + ifloor(refill, 1000)) end
  end
  if tokens < 1000 then return deny(C.THROTTLED, 'order rate above ' .. fmt(rate_milli) .. ' milli-orders/s') end

  local nonce = -1
  if alloc == '1' then
    local nv = rd('GET', K_NONCE)
    if not nv then return deny(C.BAD_STATE, 'nonce not synced (' .. K_NONCE .. ' missing)') end
    nonce = stored_nat(nv, 'nonce')
  end

  local side_name = side == 1 and 'buy' or 'sell'
  local rebuilt, agg_after = nil, nil -- the aggregates to write on admission
  local ok3, verdict = pcall(function()
    -- 9. position limit: |position + same-side reservations + this order|
    local p = qty(symbol)
    local same = resv(symbol, side_name)
    local before = math.abs(p + side * same)
    local after = math.abs(add(p, side * add(same, lots)))
    if after > max_lots and after > before then
      return {C.POSITION_LIMIT, 'worst-case position ' .. fmt(after) .. ' lots > max ' .. fmt(max_lots)}
    end
    -- 10. gross exposure: sum of worst-case |position| x mark over symbols
    local sp, sb, ss = qty(symbol), resv(symbol, 'buy'), resv(symbol, 'sell')
    local sc = stored_int(pos[sf[2]], 'cost ', symbol)
    local g0, u0 = exposure(sp, sb, ss, mark, k, sc)
    if side == 1 then sb = add(sb, lots) else ss = add(ss, lots) end
    local g1 = exposure(sp, sb, ss, mark, k, sc)
    if fast and (stored_nat(agg[5], 'agg g:', symbol) ~= g0 or
        stored_nat(agg[6], 'agg u:', symbol) ~= u0) then
      fast = false -- stale for this symbol: do not trust the totals either
      whole_book()
      qtys, resvs, markn = {}, {}, {}
    end
    local gross_before, uloss, rloss
    if fast then
      gross_before = stored_nat(agg[2], 'agg gross')
      uloss = stored_nat(agg[3], 'agg uloss')
      rloss = stored_nat(agg[4], 'agg rloss')
    else
      local syms = {}
      for f, _ in pairs(pos) do local s = string.match(f, '^(.*):qty$'); if s then syms[s] = true end end
      for f, _ in pairs(res) do
        local s = string.match(f, '^(.*):buy$') or string.match(f, '^(.*):sell$') or string.match(f, '^(.*):loss$')
        if s then syms[s] = true end
      end
      syms[symbol] = true
      gross_before, uloss, rloss = 0, 0, 0
      rebuilt = {}
      for s, _ in pairs(syms) do
        local g, u = 0, 0
        local p, c = qty(s), stored_int(pos[s .. ':cost'], 'cost ', s)
        local b, sl = resv(s, 'buy'), resv(s, 'sell')
        if p ~= 0 or c ~= 0 or b ~= 0 or sl ~= 0 then
          g, u = exposure(p, b, sl, mark_of(marks[s], s), k_of(s), c)
          if not g then bad('no mark for ' .. s .. ' which has exposure') end
        end
        gross_before, uloss = add(gross_before, g), add(uloss, u)
        rloss = add(rloss, resv(s, 'loss'))
        if s ~= symbol and (g ~= 0 or u ~= 0) then
          rebuilt[#rebuilt + 1] = 'g:' .. s
          rebuilt[#rebuilt + 1] = fmt(g)
          rebuilt[#rebuilt + 1] = 'u:' .. s
          rebuilt[#rebuilt + 1] = fmt(u)
        end
      end
    end
    local gross_after = add(add(gross_before, -g0), g1)
    if gross_after > max_gross and gross_after > gross_before then
      return {C.GROSS_EXPOSURE, 'worst-case gross exposure ' .. fmt(gross_after) .. ' > ' .. fmt(max_gross) .. ' money units'}
    end
    -- 11. daily loss budget
    local rp = stored_int(rd('HGET', K_DAY, 'realized_pnl'), 'day realized_pnl')
    local used = add(add(math.max(0, -rp), uloss), rloss)
    -- worst case of this order: it fills at its limit price (adverse distance from the
    -- mark) and, for the lots that add exposure, the mark then moves one band against
    -- it. Lots that reduce the position (net of same-side reservations) add no band.
    local adverse = side * (ticks - mark)
    if adverse < 0 then adverse = 0 end
    local band_ticks = iceil(mul(ticks, band_ppm), 1000000)
    local p0, same0 = qty(symbol), resv(symbol, side_name)
    local reducing_lots = 0
    if p0 * side < 0 then
      reducing_lots = math.max(0, math.min(lots, math.abs(p0) - same0))
    end
    local order_loss = add(mul(mul(lots, adverse), k), mul(mul(lots - reducing_lots, band_ticks), k))
    local wl = iceil(order_loss, lots)
    local this_loss = mul(lots, wl)
    local total = add(used, this_loss)
    if total > loss_limit then
      return {C.DAILY_LOSS, 'worst-case daily loss ' .. fmt(total) .. ' > limit ' .. fmt(loss_limit) .. ' money units'}
    end
    agg_after = {'gross', fmt(gross_after), 'uloss', fmt(uloss), 'rloss', fmt(add(rloss, this_loss)),
      'g:' .. symbol, fmt(g1), 'u:' .. symbol, fmt(u0)}
    return {0, wl, this_loss}
  end)
  if not ok3 then
    if type(verdict) == 'table' and verdict.overflow then
      return deny(C.BAD_ORDER, 'risk arithmetic overflows the exact integer range')
    end
    error(verdict)
  end
  if verdict[1] ~= 0 then return deny(verdict[1], verdict[2]) end
  local wl, this_loss = verdict[2], verdict[3]

  -- the write keys must have the shapes we are about to write
  if rd('HGET', K_ORDER, 'state') then
    return deny(C.BAD_STATE, 'order ' .. coid .. ' exists but its intent is not recorded')
  end
  rd('SISMEMBER', K_OPEN, coid)

  -- the new totals, computed (and checked) before the first write: Redis does not roll
  -- a script back, so nothing below may fail after a write
  local side_f, loss_f = symbol .. ':' .. side_name, symbol .. ':loss'
  local new_side = add(resv(symbol, side_name), lots)
  local new_loss = add(resv(symbol, 'loss'), this_loss)

  -- 12. reserve, record PENDING_SUBMIT, journal (the journal first: it is the only
  -- write whose key shape was not read above, so a failure there writes nothing)
  local deadline = now_ms + pttl
  local nonce_s = nonce >= 0 and fmt(nonce) or '-'
  local lots_s, ticks_s, now_s, deadline_s = fmt(lots), fmt(ticks), fmt(now_ms), fmt(deadline)
  journal_add(K_JOURNAL, 'ev', 'admit', 'coid', coid,
    'intent_id', intent_id, 'symbol', symbol, 'side', side_name, 'lots', lots_s,
    'ticks', ticks_s, 'token', token, 'holder', holder, 'deadline_ms', deadline_s,
    'nonce', nonce_s, 'day', day)
  if nonce >= 0 then redis.call('INCR', K_NONCE) end
  redis.call('HSET', K_ORDER, 'coid', coid, 'intent_id', intent_id, 'symbol', symbol,
    'side', side_name, 'qty', qty_s, 'price', price_s, 'lots', lots_s, 'ticks', ticks_s,
    'filled_lots', '0', 'open_lots', lots_s, 'wl', fmt(wl), 'state', 'PENDING_SUBMIT',
    'token', token, 'holder', holder, 'created_ms', now_s, 'updated_ms', now_s,
    'deadline_ms', deadline_s, 'nonce', nonce_s, 'day', day)
  redis.call('SADD', K_OPEN, coid)
  -- one HSET of both totals (read above in this same atomic step) instead of two HINCRBYs
  redis.call('HSET', K_RES, side_f, fmt(new_side), loss_f, fmt(new_loss))
  redis.call('HSET', K_THROTTLE, 'tokens', fmt(tokens - 1000), 'ts_ms', now_s)
  -- the aggregates after this reservation (rebuilt whole when they were not valid; not
  -- made at all for limits stored without a digest)
  if fast then
    redis.call('HSET', K_AGG, unpack(agg_after))
  elseif lim[8] then
    redis.call('DEL', K_AGG)
    redis.call('HSET', K_AGG, 'digest', lim[8], unpack(agg_after))
    for i = 1, #rebuilt, 400 do
      redis.call('HSET', K_AGG, unpack(rebuilt, i, math.min(i + 399, #rebuilt)))
    end
  end
  redis.call('HSET', K_INTENTS, intent_id,
    coid .. '|' .. token .. '|' .. deadline_s .. '|' .. nonce_s .. '|' .. digest)
  redis.pcall('HINCRBY', K_STATS, 'admitted', 1)
  -- what was admitted, as the order record above holds it
  return {0, 0, tonumber(token), deadline, nonce, symbol, side_name, qty_s, price_s}
end

local ok, result = pcall(main)
if ok then return result end
local detail = failure_detail(result)
if detail then return deny(C.BAD_STATE, detail) end
error(result)
