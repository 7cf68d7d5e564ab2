"""The shared venue conformance suite, run against the EVM venue on a local chain.

Adapted only through the harness (``tests/venue_conformance.py``'s factory hook): the
symbol is ``MKT``, a contract-call template (``trade(isBuy, amount)`` on the test
token: BUY mints, SELL burns), so both sides map to a transaction and ``balances()``
reports the token; each order the suite builds is given the next wallet nonce, as the
gate would allocate it; the chain mines each transaction as it arrives, so ``cross`` has
nothing left to do.

Two tests of the suite presuppose an order book — an order that *rests* because its
price is away from the mark, and a resting order that a cancel withdraws for certain.
An EVM transaction has no limit price and cannot be withdrawn once sent, so those two
are replaced below by what the EVM venue guarantees instead (a transaction waiting in
the node's pool is OPEN with no fills; cancelling it is ``Unknown``, never a false
``Accepted``, and it is FILLED once mined). Everything else runs unchanged.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest

from guardrails.model import Order, Side
from guardrails.venues.base import Accepted, Unknown, VenueOrderState
from tests.evm_chain import MKT, ChainProvider, World, take_lease, world
from tests.venue_conformance import SecretConformance, VenueConformance, VenueHarness

__all__ = ["world"]  # the fixture, imported so pytest finds it here


@dataclasses.dataclass
class EvmHarness(VenueHarness):
    """Orders carry the next wallet nonce, as the gate allocates it (one writer here)."""

    nonces: itertools.count[int] = dataclasses.field(default_factory=itertools.count)
    world: World | None = None

    def order(
        self, side: Side, price: Decimal, *, coid: str | None = None, deadline_ms: int | None = None
    ) -> Order:
        base = super().order(side, price, coid=coid, deadline_ms=deadline_ms)
        return dataclasses.replace(base, nonce=next(self.nonces))


class TestEvmVenueConformance(VenueConformance, SecretConformance):
    @pytest.fixture
    async def harness(self, world: World) -> AsyncIterator[VenueHarness]:
        provider = ChainProvider(world.chain)
        venue = world.venue(provider)
        await venue.start()
        token = await take_lease(world, "conformance")
        first = await venue.sync_nonce(token, "conformance")
        inst = world.risk.instruments[MKT]

        async def nothing_to_cross(order: Order) -> None:
            """Each transaction is mined as it arrives: there is no book to cross."""

        async def provoke_error() -> None:
            provider.down = True
            try:
                await venue.lookup("c-any")
                await venue.balances()
            finally:
                provider.down = False

        key = bytes(world.wallet.key).hex()
        try:
            yield EvmHarness(
                venue=venue, symbol=MKT, tick=inst.tick, lot=inst.lot, cross=nothing_to_cross,
                token=token, secrets=(key, "0x" + key), provoke_error=provoke_error,
                nonces=itertools.count(first), world=world,
            )
        finally:
            await venue.close()

    async def test_submit_when_order_rests_then_accepted_and_lookup_open(
        self, harness: VenueHarness
    ) -> None:
        """EVM: an order 'rests' only while its transaction waits in the node's pool."""
        # Arrange: manual mining, so the transaction waits.
        assert isinstance(harness, EvmHarness) and harness.world is not None
        tester = harness.world.chain.tester
        tester.disable_auto_mine_transactions()
        order = harness.order(Side.BUY, await harness.resting_price(Side.BUY))
        # Act
        result = await harness.venue.submit(order)
        status = await harness.venue.lookup(order.client_order_id)
        tester.mine_blocks(1)
        tester.enable_auto_mine_transactions()
        mined = await harness.venue.lookup(order.client_order_id)
        # Assert
        assert isinstance(result, Accepted), result
        assert status.state is VenueOrderState.OPEN and status.can_still_arrive
        assert status.filled_qty == 0 and not status.fills
        assert mined.state is VenueOrderState.FILLED and mined.filled_qty == order.qty

    async def test_cancel_when_order_resting_then_canceled_and_never_fills(
        self, harness: VenueHarness
    ) -> None:
        """EVM: a sent transaction cannot be withdrawn: cancel says Unknown, not Accepted."""
        assert isinstance(harness, EvmHarness) and harness.world is not None
        tester = harness.world.chain.tester
        tester.disable_auto_mine_transactions()
        order = harness.order(Side.BUY, await harness.resting_price(Side.BUY))
        assert isinstance(await harness.venue.submit(order), Accepted)
        before = await harness.venue.fills_since(None)
        # Act
        canceled = await harness.venue.cancel(order.client_order_id)
        tester.mine_blocks(1)
        tester.enable_auto_mine_transactions()
        status = await harness.venue.lookup(order.client_order_id)
        after = await harness.venue.fills_since(before.cursor)
        # Assert: the venue never claimed a cancel it could not guarantee.
        assert isinstance(canceled, Unknown), canceled
        assert status.state is VenueOrderState.FILLED
        assert [f.client_order_id for f in after.fills] == [order.client_order_id]
