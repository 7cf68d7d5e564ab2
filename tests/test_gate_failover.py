"""The same intent across a failover (real Lease scripts): admitted once."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from guardrails.config import LeaseConfig
from guardrails.gate import OrderGate
from guardrails.lease import Acquired, Lease
from guardrails.model import Admitted, Denied, DenyReason
from tests.gatekit import account_keys, buy, risk, seed


async def test_admit_when_same_intent_from_two_holders_across_failover_then_admitted_once(
    redis_client: aioredis.Redis,
) -> None:
    # Arrange: holder A takes the lease (real lease script) and admits intent X
    keys = account_keys()
    cfg = risk()
    await seed(redis_client, keys, cfg)
    await redis_client.delete(keys.lease)
    lease_cfg = LeaseConfig(ttl="1s", renew_deadline="800ms", renew_interval="200ms",
                            drift_margin="50ms")
    a = Lease(redis_client, keys, "holder-a", lease_cfg)
    got_a = await a.try_acquire()
    assert isinstance(got_a, Acquired)
    gate_a = OrderGate(redis_client, keys, cfg)
    first = await gate_a.admit(buy("0.0100"), intent_id="X", token=got_a.token,
                               holder_id="holder-a")
    assert isinstance(first, Admitted) and not first.duplicate
    reserved = await redis_client.hgetall(keys.reservations)
    # A stalls without renewing; its lease expires; B takes over with a newer token
    await asyncio.sleep(2.5)
    b = Lease(redis_client, keys, "holder-b", lease_cfg)
    got_b = await b.try_acquire()
    assert isinstance(got_b, Acquired) and got_b.token > got_a.token
    gate_b = OrderGate(redis_client, keys, cfg)
    # Act: B re-dispatches intent X (e.g. from its reconciliation), A wakes up and retries
    again = await gate_b.admit(buy("0.0100"), intent_id="X", token=got_b.token,
                               holder_id="holder-b")
    stale = await gate_a.admit(buy("0.0100"), intent_id="X", token=got_a.token,
                               holder_id="holder-a")
    # Assert: one order, one reservation, the original decision
    assert isinstance(again, Admitted) and again.duplicate
    assert again.client_order_id == first.client_order_id and again.token == first.token
    assert isinstance(stale, Denied) and stale.reason is DenyReason.STALE_TOKEN
    assert await redis_client.hgetall(keys.reservations) == reserved
    assert await redis_client.scard(keys.open_orders) == 1
