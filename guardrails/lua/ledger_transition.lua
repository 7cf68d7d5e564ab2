-- ledger_transition: move one order to a new lifecycle state; terminal is terminal here.
--
-- KEYS[1] order         HASH    the order record (docs/keys.md)
-- KEYS[2] open          SET     client order ids of non-terminal orders
-- KEYS[3] reservations  HASH    <sym>:buy / <sym>:sell lots, <sym>:loss money
-- KEYS[4] journal       STREAM  append-only journal
-- ARGV[1] client order id   ARGV[2] target state (SUBMITTED|UNKNOWN|CANCELED|REJECTED|EXPIRED)
-- ARGV[3] reason            ARGV[4] venue order id ('' = none)
-- Returns {code, from_state}: 0 applied, 1 refused (order is terminal), 2 unknown order,
--         3 refused (target not reachable this way: PENDING_SUBMIT, FILLED and
--         PARTIALLY_FILLED are set only by the gate and by fills), 4 bad state (wrong key type)
local K_ORDER, K_OPEN, K_RES, K_JOURNAL = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local coid, target, reason, venue_id = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

if redis.replicate_commands then redis.replicate_commands() end

local TERMINAL = {FILLED = true, CANCELED = true, REJECTED = true, EXPIRED = true}
local RELEASING = {CANCELED = true, REJECTED = true, EXPIRED = true}

local rec = redis.pcall('HMGET', K_ORDER, 'state', 'symbol', 'side', 'open_lots', 'wl')
if type(rec) == 'table' and rec.err then return {4, rec.err} end
local from = rec[1]
if not from then return {2, ''} end
local t = redis.call('TIME')
local now_ms = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))

local function journal(ev)
  redis.pcall('XADD', K_JOURNAL, 'MAXLEN', '~', '100000', '*', 'ev', ev, 'coid', coid,
    'from', from, 'to', target, 'reason', reason)
end

if TERMINAL[from] then
  journal('refused_terminal')
  return {1, from}
end
local to = nil
if target == 'SUBMITTED' then
  if from == 'PARTIALLY_FILLED' then to = from else to = 'SUBMITTED' end
elseif target == 'UNKNOWN' then
  if from == 'PARTIALLY_FILLED' then to = from else to = 'UNKNOWN' end
elseif RELEASING[target] then
  to = target
end
if not to then
  journal('refused_invalid')
  return {3, from}
end
local typ = redis.call('TYPE', K_OPEN)
local rt = redis.call('TYPE', K_RES)
typ, rt = typ.ok or typ, rt.ok or rt
if (typ ~= 'set' and typ ~= 'none') or (rt ~= 'hash' and rt ~= 'none') then
  return {4, 'open is ' .. typ .. ', reservations is ' .. rt}
end

if RELEASING[to] then
  local open_lots = tonumber(rec[4]) or 0
  local wl = tonumber(rec[5]) or 0
  if open_lots > 0 then
    redis.call('HINCRBY', K_RES, rec[2] .. ':' .. rec[3], string.format('%d', -open_lots))
    redis.call('HINCRBY', K_RES, rec[2] .. ':loss', string.format('%d', -(open_lots * wl)))
  end
  redis.call('HSET', K_ORDER, 'open_lots', '0')
  redis.call('SREM', K_OPEN, coid)
end
redis.call('HSET', K_ORDER, 'state', to, 'updated_ms', now_ms, 'reason', reason)
if venue_id ~= '' then redis.call('HSET', K_ORDER, 'venue_order_id', venue_id) end
journal('transition')
return {0, from}
