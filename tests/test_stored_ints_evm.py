"""One stored-integer rule in Python too, for the EVM venue's bound records: a nonce in
``record_key(coid)`` that is not lib/int.lua's stored integer is a ``VenueError`` naming
the key (the order stays unsettled, reconcile reports it), never another nonce. Real
redis-server and the in-process chain."""

from __future__ import annotations

import pytest

from guardrails.venues.base import Accepted, VenueError
from tests.evm_chain import World, allocate_nonce, holder, order, world

__all__ = ["world"]  # the fixture, imported so pytest finds it here


@pytest.mark.parametrize("bad", [" 0", "+0", "0_0", "0x0", "0e0", "9007199254740993"])
async def test_lookup_when_bound_nonce_malformed_then_venue_error_names_key(
    world: World, bad: str
) -> None:
    # Arrange: an order bound and sent, then its record's nonce replaced
    venue, _provider, token = await holder(world, "A")
    o = order("nonce-1", token=token, nonce=await allocate_nonce(world.redis, world.keys))
    assert isinstance(await venue.submit(o), Accepted)
    key = venue.record_key(o.client_order_id)
    assert await world.redis.hget(key, "nonce") == "0"
    await world.redis.hset(key, "nonce", bad)
    # Act / Assert
    with pytest.raises(VenueError, match=rf"{key} nonce is not an integer"):
        await venue.lookup(o.client_order_id)
    await world.redis.hset(key, "nonce", "0")
    assert (await venue.lookup(o.client_order_id)).client_order_id == o.client_order_id
