"""#9.10: evm_claim.lua is fenced like the gate (lib/fence.lua): token AND holder of a
live lease. A copy whose token matches but whose holder does not (a failover that
re-issued the token to another instance), or a lease left without expiry, can never bind
and so never send a transaction. Real redis-server and the in-process chain."""

from __future__ import annotations

import pytest

from guardrails.venues.base import Accepted, Rejected
from tests.evm_chain import World, allocate_nonce, holder, order, world

__all__ = ["world"]  # the fixture, imported so pytest finds it here


@pytest.mark.parametrize("lease", ["other-holder", "no-expiry"])
async def test_claim_when_lease_not_exactly_ours_and_live_then_not_sent(
    world: World, lease: str
) -> None:
    # Arrange: A holds the lease and synced the nonce; then the lease changes under it
    venue, _provider, token = await holder(world, "A")
    o = order("fence-1", token=token, nonce=await allocate_nonce(world.redis, world.keys))
    if lease == "other-holder":
        await world.redis.set(world.keys.lease, f"{token}:B", px=60_000)  # same token!
    else:
        await world.redis.set(world.keys.lease, f"{token}:A")  # no PX
    # Act
    result = await venue.submit(o)
    # Assert: refused at the venue, nothing bound, nothing mined
    assert isinstance(result, Rejected) and "fenced" in result.reason, result
    assert await world.redis.hget(venue.record_key(o.client_order_id), "state") is None
    assert world.chain.nonce(world.wallet.address) == 0

    # and once the lease is exactly A's and live again, the same order goes out
    await world.redis.set(world.keys.lease, f"{token}:A", px=60_000)
    assert isinstance(await venue.submit(o), Accepted)
    assert world.chain.nonce(world.wallet.address) == 1
