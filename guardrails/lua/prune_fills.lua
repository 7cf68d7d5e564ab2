-- prune_fills: remove one batch of applied-fill entries whose order was pruned.
--
-- KEYS[1] fills         HASH    fill id -> client order id
-- KEYS[2] prune         HASH    the sweep's totals: fills
-- KEYS[3..] order       HASH    the order record of each fill's client order id
-- ARGV[1], ARGV[2], ... pairs: fill id, client order id (of KEYS[2 + i])
-- Returns {0, pruned, fill_id...}  the fill ids removed: still mapped to that order id,
--           whose order record no longer exists (ledger_fill refuses a fill of a missing
--           order, so such an entry never changes again)
--         {4, detail}  a key of the wrong type: nothing written
-- Cost is bounded by the batch: one EXISTS per fill and three batch-wide commands.
local K_FILLS, K_PRUNE = KEYS[1], KEYS[2]

--!include lib/int.lua
--!include lib/read.lua

local function main()
  local n = #ARGV / 2
  if n ~= math.floor(n) or n ~= #KEYS - 2 then
    return redis.error_reply('prune_fills: ARGV must be (fill id, coid) per order key')
  end
  if n == 0 then return {0, 0} end
  local fids = {}
  for i = 1, n do fids[i] = ARGV[2 * i - 1] end
  local now = rd('HMGET', K_FILLS, unpack(fids))
  local go = {}
  for i = 1, n do
    if now[i] == ARGV[2 * i] and rd_int('EXISTS', KEYS[2 + i]) == 0 then go[#go + 1] = fids[i] end
  end
  rd('HGET', K_PRUNE, 'fills')
  local out = {0, #go}
  if #go > 0 then
    redis.call('HDEL', K_FILLS, unpack(go))
    redis.call('HINCRBY', K_PRUNE, 'fills', #go)
  end
  for _, fid in ipairs(go) do out[#out + 1] = fid end
  return out
end

local ok, result = pcall(main)
if ok then return result end
local detail = failure_detail(result)
if detail then return {4, detail} end
error(result)
