-- evm_claim: bind a client order id to its signed transaction before it is sent — fenced.
--
-- KEYS[1]  lease key   (STRING "<token>:<holder_id>", PX ttl) of the wallet's account
-- KEYS[2]  record key  (HASH venue:{<account>}:order:<coid>) the venue's record of the order
-- KEYS[3]  orders key  (LIST venue:{<account>}:orders) client order ids in claim order
-- ARGV[1]  token       (decimal string) the token the order was admitted under
-- ARGV[2]  coid        client order id
-- ARGV[3]  tx_hash     0x-hex hash of the signed transaction
-- ARGV[4]  deadline_ms the order's submit deadline (Unix ms, the gate's permit)
-- ARGV[5]  check       "1": refuse a new binding after deadline_ms by Redis server time;
--                      "0": no deadline check (a nonce filler for a refused order)
-- ARGV[6]  holder      the holder id the token was issued to (fenced with the token)
-- ARGV[7..] field/value pairs stored in the record (nonce, raw, symbol, side, qty, ...)
--
-- Returns {code, detail}
--   0  claimed: the record was written with state "claimed"; send the transaction
--   1  same: already claimed with this tx_hash (a re-send of the same id); send again
--   2  closed: the record is "void", "canceled" or "rejected" (detail = state); do not send
--   3  conflict: the id is bound to another transaction (detail = its hash); do not send
--   4  no lease: nobody holds a live lease; do not send
--   5  stale: the lease holds another token or holder, or has no expiry (detail says
--      which); do not send
--   6  late: Redis time is past deadline_ms (detail = that time); do not send
--
-- The fence (lib/fence.lua: token AND holder of a live lease, as the gate checks it) is
-- checked first, so a paused former holder that wakes after a takeover can never bind
-- (and so never send) a new transaction; what it bound before stays findable.
local lease_key = KEYS[1]
local record_key = KEYS[2]
local orders_key = KEYS[3]
local token = ARGV[1]
local coid = ARGV[2]
local tx_hash = ARGV[3]
local deadline_ms = tonumber(ARGV[4])
local check = ARGV[5] == '1'
local holder = ARGV[6]

--!include lib/time.lua
--!include lib/fence.lua

local fenced, why = fence(lease_key, token, holder)
if fenced == 'lease_expired' then
  return {4, why}
end
if fenced ~= 'ok' then
  return {5, why}
end
local state = redis.call('HGET', record_key, 'state')
if state == 'claimed' then
  local bound = redis.call('HGET', record_key, 'hash')
  if bound == tx_hash then
    return {1, ''}
  end
  return {3, bound or ''}
end
if state then
  return {2, state}
end
if check then
  local now_ms = now_ms()
  if deadline_ms == nil or now_ms > deadline_ms then
    return {6, tostring(now_ms)}
  end
end
redis.call('HSET', record_key, 'state', 'claimed', 'hash', tx_hash, 'token', token,
  'deadline_ms', ARGV[4], unpack(ARGV, 7))
redis.call('RPUSH', orders_key, coid)
return {0, ''}
