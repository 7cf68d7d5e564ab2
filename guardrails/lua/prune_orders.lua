-- prune_orders: remove one batch of terminal orders older than the retention cutoff,
-- with their intents (tombstoned) and venue mappings, re-checking each atomically.
--
-- KEYS[1] open          SET     client order ids of non-terminal orders
-- KEYS[2] intents       HASH    intent id -> "<coid>|<token>|<deadline_ms>|<nonce>|<digest>"
-- KEYS[3] tomb          HASH    tombstones of pruned intents and (buckets 'c<3 hex>')
--                               of pruned client order ids (lib/tomb.lua)
-- KEYS[4] prune         HASH    the sweep's totals: orders, intents
-- KEYS[5] clob_orders   HASH    coid -> Polymarket order hash
-- KEYS[6] clob_hashes   HASH    Polymarket order hash -> coid
-- KEYS[7..] order       HASH    the order record of each candidate, in ARGV order
-- ARGV[1] cutoff_ms (Redis time minus the retention window)
-- ARGV[2..] pairs: client order id, the updated_ms the caller archived it with
-- Returns {0, pruned_orders, pruned_intents, coid...}  the coids removed (the others are
--           kept: no longer terminal-and-unchanged, newer than the cutoff, or open)
--         {4, detail}  a key of the wrong type: nothing written
--
-- A candidate is removed only if, at this moment, its record's state is terminal, its
-- updated_ms is the archived one and <= cutoff, and it is not in the open set. Terminal
-- records never change (ledger_*.lua refuse and only journal), so state + updated_ms
-- pin the whole record the caller archived. Every read comes before the first write.
-- Cost is bounded by the batch: about 8 commands per order (the caller caps the batch).
local K_OPEN, K_INTENTS, K_TOMB, K_PRUNE = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local K_CLOB_ORDERS, K_CLOB_HASHES = KEYS[5], KEYS[6]
local cutoff_s = ARGV[1]

--!include lib/int.lua
--!include lib/read.lua
--!include lib/states.lua
--!include lib/tomb.lua

local function main()
  local cutoff = stored_nat(cutoff_s, 'cutoff_ms')
  local n = (#ARGV - 1) / 2
  if n ~= math.floor(n) or n ~= #KEYS - 6 then
    return redis.error_reply('prune_orders: ARGV must be cutoff + (coid, updated_ms) per order key')
  end
  -- 1. read and check
  local go = {}
  for i = 1, n do
    local coid, upd_s = ARGV[2 * i], ARGV[2 * i + 1]
    local rec = rd('HMGET', KEYS[6 + i], 'state', 'updated_ms', 'intent_id', 'coid')
    if rec[1] and TERMINAL[rec[1]] and rec[2] == upd_s and rec[4] == coid
        and stored_nat(rec[2], 'order updated_ms') <= cutoff
        and rd('SISMEMBER', K_OPEN, coid) == 0 then
      local iid, intent = rec[3], nil
      if iid and iid ~= '' then
        intent = rd('HGET', K_INTENTS, iid)
        -- only the intent that names this order
        if intent and string.sub(intent, 1, #coid + 1) ~= coid .. '|' then intent = nil end
      end
      go[#go + 1] = {coid = coid, key = KEYS[6 + i], iid = intent and iid or nil,
        hash = rd('HGET', K_CLOB_ORDERS, coid)}
    end
  end
  local blobs = {}
  for _, o in ipairs(go) do
    if o.iid then
      o.tb, o.tfp = tomb_of(o.iid)
      if blobs[o.tb] == nil then blobs[o.tb] = rd('HGET', K_TOMB, o.tb) or false end
    end
    local cb
    cb, o.cfp = tomb_of(o.coid)
    o.cb = 'c' .. cb
    if blobs[o.cb] == nil then blobs[o.cb] = rd('HGET', K_TOMB, o.cb) or false end
  end
  rd('HGET', K_PRUNE, 'orders')
  rd('HLEN', K_CLOB_HASHES)
  -- 2. write
  local out, intents = {0, #go, 0}, 0
  local changed = {}
  local function bury(b, fp)
    local blob = blobs[b] or ''
    if not tomb_has(blob, fp) then
      blobs[b] = blob .. fp
      changed[b] = true
    end
  end
  for _, o in ipairs(go) do
    if o.iid then
      redis.call('HDEL', K_INTENTS, o.iid)
      intents = intents + 1
      bury(o.tb, o.tfp)
    end
    bury(o.cb, o.cfp)
    if o.hash then
      redis.call('HDEL', K_CLOB_ORDERS, o.coid)
      redis.call('HDEL', K_CLOB_HASHES, o.hash)
    end
    redis.call('DEL', o.key)
    out[#out + 1] = o.coid
  end
  for b, _ in pairs(changed) do redis.call('HSET', K_TOMB, b, blobs[b]) end
  if #go > 0 then
    redis.call('HINCRBY', K_PRUNE, 'orders', #go)
    redis.call('HINCRBY', K_PRUNE, 'intents', intents)
  end
  out[3] = intents
  return out
end

local ok, result = pcall(main)
if ok then return result end
local detail = failure_detail(result)
if detail then return {4, detail} end
error(result)
