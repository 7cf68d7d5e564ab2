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
--         {4, detail}  a key of the wrong type, or a tomb bucket that is not whole
--                      6-byte entries (lib/tomb.lua): nothing written
--
-- A candidate is removed only if, at this moment, its record's state is terminal, its
-- updated_ms is the archived one and <= cutoff, and it is not in the open set. Terminal
-- records never change (ledger_*.lua refuse and only journal), so state + updated_ms
-- pin the whole record the caller archived. Every read comes before the first write.
-- Cost is bounded by the batch: one HMGET per order and about ten batch-wide commands
-- (the caller caps the batch at 200). SMISMEMBER needs Redis >= 6.2.
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
  -- 1. read and check: one HMGET per order, then one command per key for the batch
  -- (each redis.call costs about as much as a small command, so they are batched)
  local go, coids = {}, {}
  for i = 1, n do
    local coid, upd_s = ARGV[2 * i], ARGV[2 * i + 1]
    local rec = rd('HMGET', KEYS[6 + i], 'state', 'updated_ms', 'intent_id', 'coid')
    if rec[1] and TERMINAL[rec[1]] and rec[2] == upd_s and rec[4] == coid
        and stored_nat(rec[2], 'order updated_ms') <= cutoff then
      go[#go + 1] = {coid = coid, key = KEYS[6 + i], iid = rec[3] or ''}
      coids[#coids + 1] = coid
    end
  end
  if #go == 0 then return {0, 0, 0} end
  local open = rd('SMISMEMBER', K_OPEN, unpack(coids))
  local kept = {}
  for j, o in ipairs(go) do if open[j] == 0 then kept[#kept + 1] = o end end
  go, coids = kept, {}
  if #go == 0 then return {0, 0, 0} end
  local iids = {}
  for _, o in ipairs(go) do
    coids[#coids + 1] = o.coid
    iids[#iids + 1] = o.iid ~= '' and o.iid or '\0'
  end
  local intents = rd('HMGET', K_INTENTS, unpack(iids))
  local hashes = rd('HMGET', K_CLOB_ORDERS, unpack(coids))
  local buckets, bidx = {}, {}
  local function want(b) if not bidx[b] then buckets[#buckets + 1] = b; bidx[b] = #buckets end end
  for j, o in ipairs(go) do
    local intent = intents[j]
    -- only the intent that names this order
    if o.iid ~= '' and intent and string.sub(intent, 1, #o.coid + 1) == o.coid .. '|' then
      o.tb, o.tfp = tomb_of(o.iid)
      want(o.tb)
    else
      o.iid = nil
    end
    local cb
    cb, o.cfp = tomb_of(o.coid)
    o.cb = 'c' .. cb
    want(o.cb)
    o.hash = hashes[j] or nil
  end
  local got = rd('HMGET', K_TOMB, unpack(buckets))
  local blobs = {}
  for j, b in ipairs(buckets) do
    blobs[b] = got[j] or ''
    tomb_whole(got[j], b) -- before any write: a shifted bucket is refused
  end
  rd('HGET', K_PRUNE, 'orders')
  rd_int('HLEN', K_CLOB_HASHES)
  -- 2. write
  local changed, del_intents, del_hashes, del_clob, del_keys = {}, {}, {}, {}, {}
  local function bury(b, fp)
    if not tomb_has(blobs[b], fp, b) then
      blobs[b] = blobs[b] .. fp
      changed[b] = true
    end
  end
  local out = {0, #go, 0}
  for _, o in ipairs(go) do
    if o.iid then
      del_intents[#del_intents + 1] = o.iid
      bury(o.tb, o.tfp)
    end
    bury(o.cb, o.cfp)
    if o.hash then
      del_clob[#del_clob + 1] = o.coid
      del_hashes[#del_hashes + 1] = o.hash
    end
    del_keys[#del_keys + 1] = o.key
    out[#out + 1] = o.coid
  end
  if #del_intents > 0 then redis.call('HDEL', K_INTENTS, unpack(del_intents)) end
  if #del_clob > 0 then
    redis.call('HDEL', K_CLOB_ORDERS, unpack(del_clob))
    redis.call('HDEL', K_CLOB_HASHES, unpack(del_hashes))
  end
  redis.call('DEL', unpack(del_keys))
  local sets = {}
  for b, _ in pairs(changed) do sets[#sets + 1] = b; sets[#sets + 1] = blobs[b] end
  if #sets > 0 then redis.call('HSET', K_TOMB, unpack(sets)) end
  redis.call('HINCRBY', K_PRUNE, 'orders', #go)
  redis.call('HINCRBY', K_PRUNE, 'intents', #del_intents)
  out[3] = #del_intents
  return out
end

local ok, result = pcall(main)
if ok then return result end
local detail = failure_detail(result)
if detail then return {4, detail} end
error(result)
