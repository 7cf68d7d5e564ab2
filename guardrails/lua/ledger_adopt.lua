-- ledger_adopt: give a venue order the ledger has no record of (its history was lost:
-- FLUSHALL, an empty restart) a record, so its venue fills can be applied through
-- ledger_fill exactly as any fill: the record is SUBMITTED with the lots the venue
-- filled open and reserved, and the caller then applies every fill (which moves the lots
-- to the position and makes the order FILLED). Run only by `guardrails fence recover`,
-- while the lost-history alarm stops every instance.
--
-- KEYS[1] order         HASH    the order record (must not exist)
-- KEYS[2] open          SET     client order ids of non-terminal orders
-- KEYS[3] reservations  HASH    <sym>:buy / <sym>:sell lots
-- KEYS[4] journal       STREAM  append-only journal
-- KEYS[5] agg           HASH    maintained aggregates: dropped (the gate rebuilds them)
-- ARGV[1] client order id  ARGV[2] symbol  ARGV[3] side (buy|sell)
-- ARGV[4] lots the venue filled (integer > 0)  ARGV[5] a price in ticks (integer > 0)
-- ARGV[6] now_ms  ARGV[7] trading day of the first fill
-- ARGV[8] quantity the venue filled, ARGV[9] price of the first fill (decimal text, as
--         the gate records qty and price)
-- Returns {0, 'adopted'}, {1, 'exists'} (a record is there: nothing written),
--         {4, detail} (a key of the wrong type or a bad argument: nothing written)
local K_ORDER, K_OPEN, K_RES, K_JOURNAL, K_AGG = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local coid, symbol, side_s = ARGV[1], ARGV[2], ARGV[3]

--!include lib/int.lua
--!include lib/read.lua
--!include lib/journal.lua

local function main()
  local lots, ticks, now = arg_int(ARGV[4]), arg_int(ARGV[5]), arg_int(ARGV[6])
  if not lots or lots <= 0 or not ticks or ticks <= 0 or not now then bad('malformed numbers') end
  if side_s ~= 'buy' and side_s ~= 'sell' then bad('side must be buy or sell') end
  type_is(K_ORDER, 'hash')
  type_is(K_OPEN, 'set')
  type_is(K_RES, 'hash')
  type_is(K_JOURNAL, 'stream')
  if redis.call('EXISTS', K_ORDER) == 1 then return {1, 'exists'} end
  local side_f = symbol .. ':' .. side_s
  local reserved = stored_int(rd('HGET', K_RES, side_f), 'reservation ' .. side_f)
  local total = chk(reserved + lots)
  journal_add(K_JOURNAL, 'ev', 'adopt', 'coid', coid, 'symbol', symbol, 'side', side_s,
    'lots', fmt(lots), 'ticks', fmt(ticks), 'day', ARGV[7])
  redis.call('HSET', K_ORDER, 'coid', coid, 'intent_id', 'adopted:' .. coid, 'symbol', symbol,
    'side', side_s, 'qty', ARGV[8], 'price', ARGV[9], 'lots', fmt(lots), 'ticks', fmt(ticks),
    'filled_lots', '0',
    'open_lots', fmt(lots), 'wl', '0', 'state', 'SUBMITTED', 'token', '0', 'holder', 'adopted',
    'created_ms', fmt(now), 'updated_ms', fmt(now), 'deadline_ms', fmt(now), 'nonce', '-',
    'day', ARGV[7], 'adopted', '1')
  redis.call('SADD', K_OPEN, coid)
  redis.call('HSET', K_RES, side_f, fmt(total))
  redis.call('DEL', K_AGG)
  return {0, 'adopted'}
end

local ok, res = pcall(main)
if ok then return res end
local detail = failure_detail(res)
if detail then return {4, detail} end
error(res)
