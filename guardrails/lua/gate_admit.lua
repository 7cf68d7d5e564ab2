-- gate_admit: atomic admission decisions for intents of one account (docs/gate.md), one
-- or several (a batch, up to BATCH_MAX) per run: each is decided exactly as if it ran
-- alone, in order, after the ones before it.
--
-- KEYS[1]  schema        STRING  key-schema version
-- KEYS[2]  state         HASH    trading-state latch (fields state, version)
-- KEYS[3]  lease         STRING  "<token>:<holder_id>" with PX
-- KEYS[4]  intents       HASH    intent id -> "<coid>|<token>|<deadline_ms>|<nonce or ->|<digest>"
-- KEYS[5]  limits        HASH    the account's effective limits (docs/keys.md)
-- KEYS[6]  positions     HASH    <sym>:qty lots, <sym>:cost money, <sym>:rpnl money
-- KEYS[7]  reservations  HASH    <sym>:buy lots, <sym>:sell lots, <sym>:loss money
-- KEYS[8]  marks         HASH    <sym> mark in ticks
-- KEYS[9]  throttle      HASH    tokens (milli-tokens), ts_ms
-- KEYS[10] open          SET     client order ids of non-terminal orders
-- KEYS[11] journal       STREAM  append-only journal
-- KEYS[12] stats         HASH    admitted / duplicate / denied:<reason> counters
-- KEYS[13] denials       STREAM  capped recent denials
-- KEYS[14] nonce         STRING  next EVM nonce (only touched when a decision allocates one)
-- KEYS[15] agg           HASH    maintained aggregates (lib/agg.lua; docs/keys.md)
-- KEYS[16] tomb          HASH    tombstones of pruned intents (lib/tomb.lua)
-- then for decision j = 1..n:
--   KEYS[15 + 2j] day    HASH    its trading day's realized_pnl (money)
--   KEYS[16 + 2j] order  HASH    the order record of its client order id
-- ARGV[1] schema version expected; ARGV[2] latch floor: the lowest latch version the caller
-- accepts (the newest it saw: a latch below it was lost by Redis; 0: none seen);
-- then decision j's ten at o = 2 + 10 (j - 1):
--   ARGV[o+1] token   ARGV[o+2] holder id   ARGV[o+3] intent id   ARGV[o+4] client order id
--   ARGV[o+5] symbol  ARGV[o+6] side (buy|sell)   ARGV[o+7] qty (decimal string)
--   ARGV[o+8] price (decimal string)   ARGV[o+9] allocate nonce (0|1)   ARGV[o+10] trading day
-- Returns {reply 1, ..., reply n}: one per decision, in order, each
--   {0, duplicate (0|1), token, submit_deadline_ms, nonce or -1, symbol, side, qty, price}
--         admitted; symbol..price are the ORDER RECORD's (what was admitted, read back:
--         for a duplicate, never the caller's arguments; '' when the record is gone)
--   {code, detail}  denied; code indexes REASON below (gate.py maps it, in one place)
--   {-1, detail}    the decision failed in the script itself (a programming error): the
--                   caller treats it as the gate unavailable
-- The digest of an admission is sha1 of the length-prefixed symbol, side, qty and price
-- strings (gate.intent_digest mirrors it); a later admit of the same intent id whose
-- digest differs is denied intent_conflict.
--
-- What a batch reads once and shares (S below): the schema, the limits and parsed
-- limits, the instrument specs, the trading state and the latch's version, the lease, the server time and each
-- day's realized loss. No decision writes any of them, and nothing else runs during a
-- script (a key cannot change or expire in it), so a later read would return the same;
-- the clock is sampled once, beside the lease's PTTL: a batch is decided at one instant,
-- and each admission's deadline is the lease's expiry as of that instant. Everything a
-- decision writes (the book, the aggregates, the throttle, intents, orders, the nonce) is
-- read afresh by the next. The stats counters admitted / duplicate are added once, at the end.
--!include lib/int.lua
--!include lib/read.lua
--!include lib/time.lua
--!include lib/journal.lua
--!include lib/fence.lua
--!include lib/agg.lua
--!include lib/tomb.lua

-- The chunk runs on every EVALSHA: every closure and table it builds is built again for
-- every decision (bench/README.md, "Where a decision's time goes"). So the decision is
-- one top-level function of (KEYS, ARGV) with its per-call values as its own locals,
-- not upvalues; its steps are top-level functions taking what they need as arguments;
-- no closure or table is built per decision that a plain local can replace.

-- decisions per run at most (gate.py's BATCH_MAX: it never sends more)
local BATCH_MAX = 16

-- 10^n for 0 <= n <= 22, exact: each 10^k (k <= 22) is a double (5^22 < 2^53), so every
-- step of the product is exact (a loop, not a table: a table would be built per call)
local function p10(n)
  local r = 1
  for _ = 1, n do r = r * 10 end
  return r
end

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
  local m = (ip .. fp) + 0 -- digits only (the patterns): + 0 is tonumber, converting once
  if not m or m >= 1e15 then return nil end
  return m, #fp
end

-- value / unit as an integer, or nil, 'overflow' | 'off'.
local function to_units(m, s, um, us)
  local num, den = m, um
  if us >= s then
    if us - s > 22 then return nil, 'overflow' end
    num = m * p10(us - s)
  else
    if s - us > 22 then return nil, 'overflow' end
    den = um * p10(s - us)
  end
  if num >= MAXI or den >= MAXI then return nil, 'overflow' end
  if num % den ~= 0 then return nil, 'off' end
  return num / den
end

-- one part of an instrument's stored spec: a strict stored integer (digits only, checked
-- by the caller's pattern) below 2^53
local function spec_part(sym, i, f)
  local n = #f <= 16 and f + 0 -- digits (the caller's pattern): tonumber, converting once
  if not n or n >= MAXI then
    bad('limits i:' .. sym .. ' part ' .. i .. ' is not an integer: ' .. f)
  end
  return n
end

-- An instrument's stored spec "<tick_m> <tick_s> <lot_m> <lot_s> <k> <max_lots>", each a
-- strict stored integer (tick = tick_m x 10^-tick_s ...); nil when the symbol has none.
local function instrument(si, sym)
  if not si then return nil end
  -- six unsigned digit runs is exactly six stored_nat values, bar the 2^53 bound
  local f1, f2, f3, f4, f5, f6 = string.match(si, '^(%d+) (%d+) (%d+) (%d+) (%d+) (%d+)$')
  if not f6 then bad('limits i:' .. sym .. ' is malformed: ' .. si) end
  local v1, v2, v3 = spec_part(sym, 1, f1), spec_part(sym, 2, f2), spec_part(sym, 3, f3)
  local v4, v5, v6 = spec_part(sym, 4, f4), spec_part(sym, 5, f5), spec_part(sym, 6, f6)
  if v1 == 0 or v3 == 0 or v5 == 0 then bad('limits i:' .. sym .. ' has a zero tick, lot or k') end
  if v2 > 22 or v4 > 22 then bad('limits i:' .. sym .. ' has a scale beyond 10^-22') end
  return v1, v2, v3, v4, v5, v6
end

-- Order sanity (pure): nil, side, lots, ticks, k, max_lots; or the denial's reason, detail.
local function sanity(side_s, spec, symbol, qty_s, price_s)
  local side
  if side_s == 'buy' then side = 1 elseif side_s == 'sell' then side = -1 else
    return 'bad_order', 'side must be buy or sell, got ' .. side_s
  end
  local tm, ts, lm, ls, k, max_lots = instrument(spec, symbol)
  if not tm then return 'unknown_symbol', 'symbol ' .. symbol .. ' is not configured' end
  local qm, qs = parse_dec(qty_s)
  if not qm then return 'bad_order', 'qty ' .. qty_s .. ' is not a plain positive decimal' end
  local pm, ps = parse_dec(price_s)
  if not pm then return 'bad_order', 'price ' .. price_s .. ' is not a plain positive decimal' end
  if qm == 0 then return 'bad_order', 'qty must be greater than 0' end
  if pm == 0 then return 'bad_order', 'price must be greater than 0' end
  local lots, why = to_units(qm, qs, lm, ls)
  if not lots then
    if why == 'off' then return 'off_lot', 'qty ' .. qty_s .. ' is not a multiple of the lot' end
    return 'bad_order', 'qty ' .. qty_s .. ' is out of range'
  end
  local ticks
  ticks, why = to_units(pm, ps, tm, ts)
  if not ticks then
    if why == 'off' then return 'off_tick', 'price ' .. price_s .. ' is not a multiple of the tick' end
    return 'bad_order', 'price ' .. price_s .. ' is out of range'
  end
  return nil, side, lots, ticks, k, max_lots
end

-- A stored reservation: a strict stored integer >= 0. One below zero means the totals
-- are already wrong (a release applied twice?): admitting against it would exceed the
-- limits, so fail closed.
local function reservation(v, f)
  local n = stored_int(v, 'reservation ', f)
  if n < 0 then bad('reservation ' .. f .. ' is negative: ' .. fmt(n)) end
  return n
end

-- A stored mark: a positive integer number of ticks (nil when there is none)
local function mark_of(v, sym)
  if not v then return nil end
  local m = stored_int(v, 'mark ', sym)
  if m <= 0 then bad('mark ' .. sym .. ' is not positive: ' .. v) end
  return m
end

-- money units per lot per tick of another symbol with exposure, from its stored spec
local function k_of(k_limits, sym)
  local si = rd('HGET', k_limits, 'i:' .. sym)
  if not si then bad('position in unconfigured symbol ' .. sym) end
  -- only k is used (lib/agg's k_from_spec: the spec's shape whole, k a stored integer > 0)
  return k_from_spec(si) or bad('limits i:' .. sym .. ' is malformed: ' .. si)
end

-- The whole book as tables (positions, reservations, marks)
local function whole_book(k_pos, k_res, k_marks)
  return hash_of(rd('HGETALL', k_pos)), hash_of(rd('HGETALL', k_res)),
    hash_of(rd('HGETALL', k_marks))
end

-- The account's totals recomputed from the whole book: gross, uloss, rloss, and the
-- aggregate fields (g:<sym>, u:<sym>) of every symbol but `symbol` with exposure.
-- `symbol`'s own k is `k` (the order's instrument); others' are read from the limits.
local function book_totals(k_limits, pos, res, marks, symbol, k)
  local syms = {}
  for f, _ in pairs(pos) do local s = string.match(f, '^(.*):qty$'); if s then syms[s] = true end end
  for f, _ in pairs(res) do
    local s = string.match(f, '^(.*):buy$') or string.match(f, '^(.*):sell$') or string.match(f, '^(.*):loss$')
    if s then syms[s] = true end
  end
  syms[symbol] = true
  local gross, uloss, rloss, rebuilt = 0, 0, 0, {}
  for s, _ in pairs(syms) do
    local g, u = 0, 0
    local p, c = stored_int(pos[s .. ':qty'], 'position ', s), stored_int(pos[s .. ':cost'], 'cost ', s)
    local fb, fs = s .. ':buy', s .. ':sell'
    local b, sl = reservation(res[fb], fb), reservation(res[fs], fs)
    if p ~= 0 or c ~= 0 or b ~= 0 or sl ~= 0 then
      g, u = exposure(p, b, sl, mark_of(marks[s], s), s == symbol and k or k_of(k_limits, s), c)
      if not g then bad('no mark for ' .. s .. ' which has exposure') end
    end
    local fl = s .. ':loss'
    gross, uloss = add(gross, g), add(uloss, u)
    rloss = add(rloss, reservation(res[fl], fl))
    if s ~= symbol and (g ~= 0 or u ~= 0) then agg_push(rebuilt, s, g, u) end
  end
  return gross, uloss, rloss, rebuilt
end

-- Steps 9-11 (position limit, gross exposure, daily loss), run under pcall: an overflow
-- here is the order's (bad_order), any other failure the stored state's (bad_state).
-- p, b, s, c, rl: this symbol's position, buy / sell reservations, cost, reserved loss.
-- Returns 0, worst loss per lot, this order's worst loss, gross_after, uloss, rloss,
-- g1, u0, rebuilt (nil on the fast path); or the denial's reason, detail.
-- K: the KEYS (5 limits, 6 positions, 7 reservations, 8 marks); k_day the decision's day;
-- S the batch's shared reads (its day's realized pnl, read once); pos, res, marks: the
-- whole book when the caller already read it (nil on the fast path)
local function risk(K, S, k_day, symbol, side, lots, ticks, k, max_lots, mark, band_ppm,
                    max_gross, loss_limit, p, b, s, c, rl, agg, fast, pos, res, marks)
  -- 9. position limit: |position + same-side reservations + this order|
  local same = side == 1 and b or s
  -- (|x| inline here and below: math.abs is a C call, a few hundred instructions)
  local before = p + side * same
  if before < 0 then before = -before end
  local after = add(p, side * add(same, lots))
  if after < 0 then after = -after end
  if after > max_lots and after > before then
    return 'position_limit', 'worst-case position ' .. fmt(after) .. ' lots > max ' .. fmt(max_lots)
  end
  -- 10. gross exposure: sum of worst-case |position| x mark over symbols
  local g0, u0 = exposure(p, b, s, mark, k, c)
  local g1
  if side == 1 then g1 = exposure(p, add(b, lots), s, mark, k, c)
  else g1 = exposure(p, b, add(s, lots), mark, k, c) end
  if fast and (stored_nat(agg[5], 'agg g:', symbol) ~= g0 or
      stored_nat(agg[6], 'agg u:', symbol) ~= u0) then
    fast = false -- stale for this symbol: do not trust the totals either
  end
  local gross_before, uloss, rloss, rebuilt
  if fast then
    gross_before = stored_nat(agg[2], 'agg gross')
    uloss = stored_nat(agg[3], 'agg uloss')
    rloss = stored_nat(agg[4], 'agg rloss')
  else
    if not pos then pos, res, marks = whole_book(K[6], K[7], K[8]) end
    gross_before, uloss, rloss, rebuilt = book_totals(K[5], pos, res, marks, symbol, k)
  end
  local gross_after = add(add(gross_before, -g0), g1)
  if gross_after > max_gross and gross_after > gross_before then
    return 'gross_exposure', 'worst-case gross exposure ' .. fmt(gross_after) .. ' > ' .. fmt(max_gross) .. ' money units'
  end
  -- 11. daily loss budget
  local rp = S.rp[k_day]
  if not rp then
    rp = stored_int(rd('HGET', k_day, 'realized_pnl'), 'day realized_pnl')
    S.rp[k_day] = rp
  end
  local used = add(add(rp < 0 and -rp or 0, uloss), rloss)
  -- worst case of this order: it fills at its limit price (adverse distance from the
  -- mark) and, for the lots that add exposure, the mark then moves one band against
  -- it. Lots that reduce the position (net of same-side reservations) add no band.
  local adverse = side * (ticks - mark)
  if adverse < 0 then adverse = 0 end
  local band_ticks = iceil(mul(ticks, band_ppm), 1000000)
  local reducing_lots = 0
  if p * side < 0 then
    reducing_lots = math.max(0, math.min(lots, math.abs(p) - same))
  end
  local order_loss = add(mul(mul(lots, adverse), k), mul(mul(lots - reducing_lots, band_ticks), k))
  local wl = iceil(order_loss, lots)
  local this_loss = mul(lots, wl)
  local total = add(used, this_loss)
  if total > loss_limit then
    return 'daily_loss', 'worst-case daily loss ' .. fmt(total) .. ' > limit ' .. fmt(loss_limit) .. ' money units'
  end
  return 0, wl, this_loss, gross_after, uloss, add(rloss, this_loss), g1, u0, rebuilt
end

-- A denial of the decision whose arguments start after A[o]: counted, recorded in the
-- capped denials stream, returned as {code, detail}.
local function deny(K, A, o, reason, detail)
  -- the denial reasons; a reason's code is its index (gate.py's DENY_CODES maps it
  -- back). Built here, on a denial only: a table at the top would be built every run.
  local REASON = {
    'schema_mismatch', 'halted', 'reduce_only', 'stale_token', 'lease_expired',
    'bad_order', 'unknown_symbol', 'off_tick', 'off_lot', 'max_notional',
    'price_band', 'throttled', 'position_limit', 'gross_exposure', 'daily_loss', 'bad_state',
    'intent_conflict', 'intent_pruned', 'latch_lost',
  }
  local code
  for i = 1, #REASON do if REASON[i] == reason then code = i; break end end
  if not code then error('gate_admit: unknown denial reason ' .. tostring(reason)) end
  redis.pcall('HINCRBY', K[12], 'denied:' .. reason, '1')
  redis.pcall('XADD', K[13], 'MAXLEN', '~', '1000', '*',
    'intent_id', A[o + 3], 'reason', reason, 'detail', detail,
    'token', A[o + 1], 'holder', A[o + 2], 'symbol', A[o + 5], 'side', A[o + 6],
    'qty', A[o + 7], 'price', A[o + 8])
  return {code, detail}
end

-- The limits' scalar fields, parsed (read once per batch: S.limn)
local function limits_of(lim)
  return {stored_nat(lim[1], 'limits max_order_notional'),
    stored_nat(lim[2], 'limits max_gross_exposure'), stored_nat(lim[3], 'limits daily_loss_limit'),
    stored_nat(lim[4], 'limits band_ppm'), stored_nat(lim[5], 'limits rate_milli'),
    stored_nat(lim[6], 'limits burst')}
end

-- Decision j (steps 1-12, docs/gate.md): K = KEYS, A = ARGV, its arguments after A[o],
-- its day and order keys; S the batch's shared reads (the header above).
local function admit(K, A, S, o, K_DAY, K_ORDER)
  local K_SCHEMA, K_STATE, K_LEASE, K_INTENTS = K[1], K[2], K[3], K[4]
  local K_LIMITS, K_POS, K_RES, K_MARKS = K[5], K[6], K[7], K[8]
  local K_THROTTLE, K_OPEN = K[9], K[10]
  local K_JOURNAL, K_NONCE, K_AGG, K_TOMB = K[11], K[14], K[15], K[16]
  local token, holder, intent_id, coid = A[o + 1], A[o + 2], A[o + 3], A[o + 4]
  local symbol, side_s, qty_s, price_s = A[o + 5], A[o + 6], A[o + 7], A[o + 8]
  -- Reads first (each fails closed on a wrong type); writes only after every check.
  local schema = S.schema
  if schema == nil then schema = rd('GET', K_SCHEMA); S.schema = schema end
  -- 1. key-schema version
  if schema ~= A[1] then
    return deny(K, A, o, 'schema_mismatch', 'key schema is ' .. (schema or 'missing') .. ', gate speaks ' .. A[1])
  end
  local lim, spec = S.lim, nil
  if not lim then
    lim = rd('HMGET', K_LIMITS, 'max_order_notional', 'max_gross_exposure',
      'daily_loss_limit', 'band_ppm', 'rate_milli', 'burst', 'i:' .. symbol, 'digest')
    S.lim = lim
    S.spec[symbol] = lim[7]
  end
  if not lim[1] then return deny(K, A, o, 'bad_state', 'no limits stored for the account') end
  spec = S.spec[symbol]
  if spec == nil then spec = rd('HGET', K_LIMITS, 'i:' .. symbol); S.spec[symbol] = spec end
  local state = S.state
  if state == nil then
    local latch = rd('HMGET', K_STATE, 'state', 'version')
    state = latch[1]
    S.state, S.version = state, stored_nat(latch[2], 'latch version')
  end

  -- Order sanity (pure); reported at step 5, or at step 2 in REDUCING.
  local sane_code, sane_detail, side, lots, ticks, k, max_lots
  sane_code, side, lots, ticks, k, max_lots = sanity(side_s, spec, symbol, qty_s, price_s)
  if sane_code then sane_detail, side = side, nil end

  -- The book: with valid aggregates (lib/agg.lua: made for these limits, and agreeing
  -- with this symbol's own recomputation in risk()) only this symbol's fields are read;
  -- otherwise the whole book, from which the aggregates are rebuilt on admission.
  local f_qty, f_cost = symbol .. ':qty', symbol .. ':cost'
  local f_buy, f_sell, f_loss = symbol .. ':buy', symbol .. ':sell', symbol .. ':loss'
  local f_g, f_u = 'g:' .. symbol, 'u:' .. symbol
  local agg = rd('HMGET', K_AGG, 'digest', 'gross', 'uloss', 'rloss', f_g, f_u)
  local fast = lim[8] and agg[1] == lim[8]
  -- this symbol's stored strings: qty, cost, buy, sell, loss, mark
  local v_qty, v_cost, v_buy, v_sell, v_loss, v_mark
  local pos, res, marks -- the whole book, when it was read here
  if fast or sane_code then
    local pv = rd('HMGET', K_POS, f_qty, f_cost)
    local rv = rd('HMGET', K_RES, f_buy, f_sell, f_loss)
    v_qty, v_cost, v_buy, v_sell, v_loss = pv[1] or nil, pv[2] or nil, rv[1] or nil, rv[2] or nil, rv[3] or nil
    v_mark = rd('HGET', K_MARKS, symbol) or nil
  else
    pos, res, marks = whole_book(K_POS, K_RES, K_MARKS)
    v_qty, v_cost, v_buy, v_sell, v_loss = pos[f_qty], pos[f_cost], res[f_buy], res[f_sell], res[f_loss]
    v_mark = marks[symbol]
  end

  -- 2. trading state: first, the latch is not older than one the caller saw
  if S.version < S.floor then
    return deny(K, A, o, 'latch_lost', 'the kill-switch latch is version ' .. fmt(S.version) ..
      ', below ' .. fmt(S.floor) .. ', the lowest this instance accepts (it saw a newer one): ' ..
      'Redis lost it; write a new one with `guardrails kill` or `guardrails resume`')
  end
  if state == 'HALTED' then return deny(K, A, o, 'halted', 'account is HALTED') end
  if state == 'REDUCING' then
    if sane_code then return deny(K, A, o, sane_code, sane_detail) end
    local p = stored_int(v_qty, 'position ', symbol)
    local same = side == 1 and reservation(v_buy, f_buy) or reservation(v_sell, f_sell)
    -- Reduces |position| even if every open order on this side fills too.
    if not (p * side < 0 and same + lots <= math.abs(p)) then
      return deny(K, A, o, 'reduce_only', 'account is REDUCING and this order does not reduce the position')
    end
  elseif state and state ~= 'ACTIVE' then
    return deny(K, A, o, 'bad_state', 'trading state is ' .. tostring(state))
  end

  -- 3. fence: the lease holds exactly this token and holder, and is live (lib/fence)
  if S.lease == nil then
    -- the lease and the clock sampled together, once: every admission of the batch gets
    -- deadline = now + pttl, the lease's expiry as of this instant (PTTL and TIME are the
    -- real clock, not the script's frozen one, so they are read side by side)
    S.lease, S.pttl = lease_read(K_LEASE)
    if not S.now then S.now = now_ms() end
  end
  local fenced, pttl = fence_judge(K_LEASE, S.lease, S.pttl, token, holder)
  if fenced ~= 'ok' then return deny(K, A, o, fenced, pttl) end

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
      return deny(K, A, o, 'intent_conflict', 'intent ' .. intent_id .. ' was admitted as another order' ..
        what .. '; a different order needs a new intent id')
    end
    local prior_nonce = -1
    if pn ~= '-' then prior_nonce = stored_nat(pn, 'intents ' .. intent_id .. ' nonce') end
    pt = stored_nat(pt, 'intents ' .. intent_id .. ' token')
    pd = stored_nat(pd, 'intents ' .. intent_id .. ' deadline')
    S.duplicate = S.duplicate + 1
    return {0, 1, pt, pd, prior_nonce,
      was[1] or '', was[2] or '', was[3] or '', was[4] or ''}
  end
  -- 4b. an intent the prune sweep archived and removed is never admitted again
  local tb, tfp = tomb_of(intent_id)
  if tomb_has(rd('HGET', K_TOMB, tb), tfp, tb) then
    return deny(K, A, o, 'intent_pruned', 'intent ' .. intent_id .. ' was decided and pruned ' ..
      '(archived) after the retention window; a new order needs a new intent id')
  end

  -- 5. order sanity
  if sane_code then return deny(K, A, o, sane_code, sane_detail) end

  local limn = S.limn
  if not limn then limn = limits_of(lim); S.limn = limn end
  local max_notional, max_gross, loss_limit = limn[1], limn[2], limn[3]
  local band_ppm, rate_milli, burst = limn[4], limn[5], limn[6]
  -- (the checked products of lib/int inline: no pcall on the hot path)
  local notional = lots * ticks
  if notional < MAXI then notional = notional * k end
  if notional >= MAXI then return deny(K, A, o, 'bad_order', 'order value overflows the exact integer range') end

  -- 6. max notional per order
  if notional > max_notional then
    return deny(K, A, o, 'max_notional', 'notional ' .. fmt(notional) .. ' > ' .. fmt(max_notional) .. ' money units')
  end

  -- 7. price band against the last mark
  local mark = mark_of(v_mark, symbol)
  if not mark then return deny(K, A, o, 'price_band', 'no mark for ' .. symbol) end
  local dist = ticks - mark
  if dist < 0 then dist = -dist end
  local lhs, rhs = dist * 1000000, band_ppm * mark
  if lhs >= MAXI or rhs >= MAXI then return deny(K, A, o, 'bad_order', 'price band check overflows') end
  if lhs > rhs then
    return deny(K, A, o, 'price_band', 'price ' .. price_s .. ' is ' .. fmt(dist) .. ' ticks from mark ' ..
      fmt(mark) .. ' ticks (band ' .. fmt(band_ppm) .. ' ppm)')
  end

  -- 8. order-rate throttle (token bucket in milli-tokens, server clock)
  local now = S.now -- sampled at step 3, beside the lease's PTTL
  local thr = rd('HMGET', K_THROTTLE, 'tokens', 'ts_ms')
  local cap = burst * 1000
  local tokens = cap
  if thr[1] then
    tokens = stored_nat(thr[1], 'throttle tokens')
    local elapsed = now - stored_nat(thr[2], 'throttle ts_ms')
    if elapsed < 0 then elapsed = 0 end
    if elapsed > 1000000000 then elapsed = 1000000000 end
    local refill = elapsed * rate_milli
    if refill >= MAXI then tokens = cap else
      tokens = tokens + ifloor(refill, 1000)
      if tokens > cap then tokens = cap end
    end
  end
  if tokens < 1000 then return deny(K, A, o, 'throttled', 'order rate above ' .. fmt(rate_milli) .. ' milli-orders/s') end

  local nonce = -1
  if A[o + 9] == '1' then
    local nv = rd('GET', K_NONCE)
    if not nv then return deny(K, A, o, 'bad_state', 'nonce not synced (' .. K_NONCE .. ' missing)') end
    nonce = stored_nat(nv, 'nonce')
  end

  -- 9-11. position limit, gross exposure, daily loss (risk() above)
  local side_name = side == 1 and 'buy' or 'sell'
  local p = stored_int(v_qty, 'position ', symbol)
  local b, s = reservation(v_buy, f_buy), reservation(v_sell, f_sell)
  local c = stored_int(v_cost, 'cost ', symbol)
  local rl = reservation(v_loss, f_loss)
  local ok3, v1, wl, this_loss, gross_after, uloss, rloss_after, g1, u0, rebuilt = pcall(risk,
    K, S, K_DAY, symbol, side, lots, ticks, k, max_lots, mark, band_ppm, max_gross, loss_limit,
    p, b, s, c, rl, agg, fast, pos, res, marks)
  if not ok3 then
    if type(v1) == 'table' and v1.overflow then
      return deny(K, A, o, 'bad_order', 'risk arithmetic overflows the exact integer range')
    end
    error(v1)
  end
  if v1 ~= 0 then return deny(K, A, o, v1, wl) end

  -- the write keys must have the shapes we are about to write
  if rd('HGET', K_ORDER, 'state') then
    return deny(K, A, o, 'bad_state', 'order ' .. coid .. ' exists but its intent is not recorded')
  end
  rd_int('SISMEMBER', K_OPEN, coid)

  -- the new totals, computed (and checked) before the first write: Redis does not roll
  -- a script back, so nothing below may fail after a write
  local new_side = add(side == 1 and b or s, lots)
  local new_loss = add(rl, this_loss)

  -- 12. reserve, record PENDING_SUBMIT, journal (the journal first: it is the only
  -- write whose key shape was not read above, so a failure there writes nothing)
  local deadline = now + pttl
  local nonce_s = nonce >= 0 and fmt(nonce) or '-'
  local lots_s, ticks_s, now_s, deadline_s = fmt(lots), fmt(ticks), fmt(now), fmt(deadline)
  local day = A[o + 10]
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
  redis.call('HSET', K_RES, side == 1 and f_buy or f_sell, fmt(new_side), f_loss, fmt(new_loss))
  redis.call('HSET', K_THROTTLE, 'tokens', fmt(tokens - 1000), 'ts_ms', now_s)
  -- the aggregates after this reservation (rebuilt whole when they were not valid; not
  -- made at all for limits stored without a digest)
  if fast and not rebuilt then
    redis.call('HSET', K_AGG, 'gross', fmt(gross_after), 'uloss', fmt(uloss),
      'rloss', fmt(rloss_after), f_g, fmt(g1), f_u, fmt(u0))
  elseif lim[8] then
    redis.call('DEL', K_AGG)
    redis.call('HSET', K_AGG, 'digest', lim[8], 'gross', fmt(gross_after), 'uloss', fmt(uloss),
      'rloss', fmt(rloss_after), f_g, fmt(g1), f_u, fmt(u0))
    for i = 1, #rebuilt, 400 do
      redis.call('HSET', K_AGG, unpack(rebuilt, i, math.min(i + 399, #rebuilt)))
    end
  end
  redis.call('HSET', K_INTENTS, intent_id,
    coid .. '|' .. token .. '|' .. deadline_s .. '|' .. nonce_s .. '|' .. digest)
  S.admitted = S.admitted + 1
  -- what was admitted, as the order record above holds it
  return {0, 0, tonumber(token), deadline, nonce, symbol, side_name, qty_s, price_s}
end

local n = (#ARGV - 2) / 10
if n < 1 or n > BATCH_MAX or n % 1 ~= 0 or #KEYS ~= 16 + 2 * n then
  return redis.error_reply('gate_admit: ' .. #KEYS .. ' keys and ' .. #ARGV ..
    ' arguments are not 1 to ' .. BATCH_MAX .. ' whole decisions')
end
local floor = arg_int(ARGV[2])
if not floor then
  return redis.error_reply('gate_admit: latch floor ' .. tostring(ARGV[2]) .. ' is not an integer >= 0')
end
-- the batch's shared reads (nil: not read yet; false: read, absent) and counters; every
-- field is named here, so the table is made at its final size (no rehash as it fills)
local S = {schema = nil, lim = nil, limn = nil, state = nil, version = nil, floor = floor,
  lease = nil, pttl = nil, now = nil, spec = {}, rp = {}, admitted = 0, duplicate = 0}
local out = {}
for j = 1, n do
  local o = 10 * (j - 1) + 2
  local ok, result = pcall(admit, KEYS, ARGV, S, o, KEYS[15 + 2 * j], KEYS[16 + 2 * j])
  if not ok then
    -- a stored-state failure (lib/int's {bad = ...}, or a command's error: Redis's pcall
    -- hands a redis.call error over as its text) denies bad_state; anything else is a
    -- failure of the script itself, answered for this decision alone
    local detail = failure_detail(result)
    if not detail and type(result) == 'string' and string.find(result, 'WRONGTYPE', 1, true) then
      detail = result
    end
    if detail then result = deny(KEYS, ARGV, o, 'bad_state', detail)
    else result = {-1, 'gate_admit: ' .. tostring(result)} end
  end
  out[j] = result
end
if S.admitted > 0 then redis.pcall('HINCRBY', KEYS[12], 'admitted', fmt(S.admitted)) end
if S.duplicate > 0 then redis.pcall('HINCRBY', KEYS[12], 'duplicate', fmt(S.duplicate)) end
return out
