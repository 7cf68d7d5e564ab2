"""The reference points the gate is compared with, measured in the same run (issue 16).

- ``FENCED_LUA``: a 30-line fenced Lua gate, the kind a careful team writes by hand:
  the lease must hold the caller's token, a kill latch, idempotency by intent id, one
  notional limit, one position limit, then reserve and record the order. It is called
  the ordinary way, through redis-py's ``Script`` (``register_script``). It checks far
  less than ``gate_admit.lua`` (no schema, price band, throttle, gross exposure, loss
  budget, journal, exact decimal parsing, bad-state checks) — it is the floor a
  hand-written fenced gate costs, not an equivalent.
- ``lock_cycle``: redis-py's ``Lock`` acquire + release (``SET NX PX`` + its release
  script), the usual "serialize order placement with a Redis lock" pattern.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

FENCED_LUA = """
-- KEYS: lease, kill, intents, position, order, open set, journal
-- ARGV: token, intent id, qty, price, max notional, max position
local lease = redis.call('GET', KEYS[1])
if lease ~= ARGV[1] then return {4, 'stale token'} end
if redis.call('PTTL', KEYS[1]) <= 0 then return {5, 'lease expired'} end
if redis.call('GET', KEYS[2]) == '1' then return {2, 'halted'} end
local prior = redis.call('HGET', KEYS[3], ARGV[2])
if prior then return {0, 1, prior} end
local qty = tonumber(ARGV[3])
local price = tonumber(ARGV[4])
if not qty or not price or qty <= 0 or price <= 0 then
  return {6, 'bad order'}
end
if qty * price > tonumber(ARGV[5]) then return {10, 'max notional'} end
local pos = tonumber(redis.call('HGET', KEYS[4], 'qty') or '0')
if math.abs(pos + qty) > tonumber(ARGV[6]) then
  return {13, 'position limit'}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HINCRBYFLOAT', KEYS[4], 'reserved', qty)
redis.call('HSET', KEYS[5], 'intent', ARGV[2], 'qty', ARGV[3],
  'price', ARGV[4], 'state', 'PENDING_SUBMIT', 'token', ARGV[1],
  'created_ms', now)
redis.call('SADD', KEYS[6], ARGV[2])
redis.call('XADD', KEYS[7], 'MAXLEN', '~', '10000', '*',
  'ev', 'admit', 'intent', ARGV[2], 'qty', ARGV[3],
  'price', ARGV[4], 'token', ARGV[1])
redis.call('HSET', KEYS[3], ARGV[2], now)
return {0, 0, now}
"""
"""30 lines of Lua (the test of this module counts them)."""


class Anchors:
    """Both anchors on one client (their own account keys)."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._script = client.register_script(FENCED_LUA)
        self._lock = client.lock("bench:anchor:lock", timeout=10)

    async def seed(self) -> None:
        await self._client.set("bench:anchor:lease", "1", px=3_600_000)

    async def fenced(self, i: int) -> Any:
        r = await self._script(
            keys=["bench:anchor:lease", "bench:anchor:kill", "bench:anchor:intents",
                  "bench:anchor:pos", f"bench:anchor:order:{i}", "bench:anchor:open",
                  "bench:anchor:journal"],
            args=["1", f"a-{i}", "0.01", "60000.00", "1000000000", "1000000000"],
        )
        if int(r[0]) != 0 or int(r[1]) != 0:
            raise RuntimeError(f"anchor gate did not admit: {r!r}")
        return r

    async def lock_cycle(self) -> None:
        if not await self._lock.acquire(blocking=False):
            raise RuntimeError("anchor lock not acquired")
        await self._lock.release()
