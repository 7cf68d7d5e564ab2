-- ledger_transition: move one order to a new lifecycle state; terminal is terminal here.
--
-- KEYS[1] order         HASH    the order record (docs/keys.md)
-- KEYS[2] open          SET     client order ids of non-terminal orders
-- KEYS[3] reservations  HASH    <sym>:buy / <sym>:sell lots, <sym>:loss money
-- KEYS[4] journal       STREAM  append-only journal
-- KEYS[5] positions     HASH    read for the aggregates when a release moves them
-- KEYS[6] marks         HASH    read for the aggregates
-- KEYS[7] limits        HASH    i:<sym> (k) for the aggregates
-- KEYS[8] agg           HASH    maintained aggregates (lib/agg.lua)
-- ARGV[1] client order id   ARGV[2] target state (SUBMITTED|UNKNOWN|CANCELED|REJECTED|EXPIRED)
-- ARGV[3] reason            ARGV[4] venue order id ('' = none)
-- Returns {code, from_state or detail}: 0 applied, 1 refused (order is terminal),
--         2 unknown order, 3 refused (target not reachable this way: PENDING_SUBMIT,
--         FILLED and PARTIALLY_FILLED are set only by the gate and by fills),
--         4 bad state (a key of the wrong type, a malformed field, or a release that
--         would drive a reservation below zero): NOTHING written but a journal entry
--
-- Every field the script changes is read and checked first; the writes come last, as
-- computed totals (Redis does not roll a script back when a command in it fails).
local K_ORDER, K_OPEN, K_RES, K_JOURNAL = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local K_POS, K_MARKS, K_LIMITS, K_AGG = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local coid, target, reason, venue_id = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

--!include lib/int.lua
--!include lib/read.lua
--!include lib/time.lua
--!include lib/journal.lua
--!include lib/states.lua
--!include lib/agg.lua

local from = '-'

-- Only when the journal is a stream (or absent): a journal entry never aborts the script.
local function journal(ev, detail)
  journal_try(K_JOURNAL, 'ev', ev, 'coid', coid,
    'from', from, 'to', target, 'reason', reason, 'detail', detail or '')
end

local int = stored_int

local function main()
  -- 1. read and check everything this transition may change
  local rec = rd('HMGET', K_ORDER, 'state', 'symbol', 'side', 'open_lots', 'wl')
  if not rec[1] then return {2, ''} end
  from = rec[1]
  if TERMINAL[from] then
    journal('refused_terminal')
    return {1, from}
  end
  if not LIVE[from] then bad('order state is ' .. tostring(from)) end
  local to = nil
  if target == 'SUBMITTED' or target == 'UNKNOWN' then
    -- a partially filled order stays PARTIALLY_FILLED (it is certainly at the venue)
    if from == 'PARTIALLY_FILLED' then to = from else to = target end
  elseif RELEASING[target] then
    to = target
  end
  if not to then
    journal('refused_invalid')
    return {3, from}
  end
  type_is(K_OPEN, 'set')
  type_is(K_RES, 'hash')
  type_is(K_JOURNAL, 'stream')

  local sym, side = rec[2], rec[3]
  local release = RELEASING[to]
  local plan = {}
  local side_f, loss_f, new_side, new_loss
  if release then
    if not sym or (side ~= 'buy' and side ~= 'sell') then
      bad('order has no symbol/side (' .. tostring(sym) .. ' ' .. tostring(side) .. ')')
    end
    local open_lots, wl = int(rec[4], 'order open_lots'), int(rec[5], 'order wl')
    if open_lots < 0 or wl < 0 then bad('order open_lots/wl is negative') end
    local rel_loss = open_lots * wl
    if rel_loss >= MAXI then bad('released loss overflows') end
    side_f, loss_f = sym .. ':' .. side, sym .. ':loss'
    local other_f = sym .. ':' .. (side == 'buy' and 'sell' or 'buy')
    local cur = rd('HMGET', K_RES, side_f, loss_f, other_f)
    new_side = int(cur[1], 'reservation ' .. side_f) - open_lots
    new_loss = int(cur[2], 'reservation ' .. loss_f) - rel_loss
    -- a release larger than what is reserved means the totals are already wrong:
    -- refuse (never clamp) so the sweep can rebuild them from the order records
    if new_side < 0 or new_loss < 0 then
      bad('releasing ' .. fmt(open_lots) .. ' lots / ' .. fmt(rel_loss) ..
        ' would leave reservations ' .. side_f .. '=' .. fmt(new_side) .. ' ' ..
        loss_f .. '=' .. fmt(new_loss))
    end
    -- the aggregates after the release (lib/agg.lua)
    local pv = rd('HMGET', K_POS, sym .. ':qty', sym .. ':cost')
    local p, c = int(pv[1], 'position ' .. sym), int(pv[2], 'cost ' .. sym)
    local ms = rd('HGET', K_MARKS, sym)
    local m = ms and int(ms, 'mark ' .. sym)
    local k = k_from_spec(rd('HGET', K_LIMITS, 'i:' .. sym))
    local other = int(cur[3], 'reservation ' .. other_f)
    local b, sl = new_side, other
    if side == 'sell' then b, sl = other, new_side end
    plan = false
    if k and (not m or m > 0) then
      local g, u = exposure(p, b, sl, m, k, c)
      plan = agg_plan(K_AGG, sym, g, u, new_loss - int(cur[2], 'reservation ' .. loss_f))
    end

  end

  -- 2. write (every key's shape and every value was checked above)
  local now = fmt(now_ms())
  journal('transition')
  if release then
    redis.call('HSET', K_RES, side_f, fmt(new_side), loss_f, fmt(new_loss))
    redis.call('HSET', K_ORDER, 'open_lots', '0')
    redis.call('SREM', K_OPEN, coid)
    agg_apply(K_AGG, plan)
  end
  redis.call('HSET', K_ORDER, 'state', to, 'updated_ms', now, 'reason', reason)
  if venue_id ~= '' then redis.call('HSET', K_ORDER, 'venue_order_id', venue_id) end
  return {0, from}
end

local ok, res = pcall(main)
if ok then return res end
local detail = failure_detail(res)
if detail then
  journal('bad_state', detail)
  return {4, detail}
end
error(res)
