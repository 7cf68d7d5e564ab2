"""The contract every venue adapter must pass (docs/venues.md, "Writing an adapter").

Use it by subclassing ``VenueConformance`` in a ``test_venue_<name>.py`` module and
providing a ``harness`` fixture that yields a started ``VenueHarness`` for your venue:

    class TestMyVenueConformance(VenueConformance):
        @pytest.fixture
        async def harness(self, ...) -> AsyncIterator[VenueHarness]:
            venue = MyVenue(...)
            await venue.start()
            try:
                yield VenueHarness(venue=venue, symbol="BTC-USD", tick=..., lot=...,
                                   cross=...)
            finally:
                await venue.close()

Venues that hold a signing key also subclass ``SecretConformance`` and list the key
material in ``VenueHarness.secrets``.

What is checked (each a test below): a submit is accepted and its lookup says OPEN or
FILLED; a re-sent client order id never makes a second order; an order past its
deadline is rejected; a canceled order is CANCELED and can never fill afterwards, even
when the market later crosses it; a cancel is never overtaken by its order (an order
arriving after the cancel of its id is rejected, and a cancel of an unseen id is
``Accepted`` only when the venue keeps a final CANCELED record of it); an unknown id is
NOT_FOUND with ``can_still_arrive`` following the deadline; ``fills_since`` cursors give
every fill exactly once; marks are there for the configured symbols; and no secret
appears in repr, str or exception text.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, ROUND_UP, Decimal

from guardrails.model import Order, Side
from guardrails.venues.base import (
    Accepted,
    Rejected,
    Venue,
    VenueError,
    VenueOrderState,
)

DEADLINE_MARGIN_MS = 60_000
"""Orders in these tests may arrive up to a minute from now: no timing luck needed."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class VenueHarness:
    """What the suite needs to drive one venue."""

    venue: Venue
    symbol: str
    tick: Decimal
    lot: Decimal
    cross: Callable[[Order], Awaitable[None]]
    """Make the market cross ``order`` (a resting limit order), e.g. by moving the mark."""
    qty_lots: int = 10
    token: int = 7
    secrets: Sequence[str] = field(default_factory=tuple)
    """Key material the venue holds; must never appear in repr/str/exception text."""
    provoke_error: Callable[[], Awaitable[None]] | None = None
    """Make one venue call fail and raise its exception (for the secrets test)."""
    rest_distance: Decimal = Decimal("0.2")
    """How far from the mark (relative) a resting order is placed."""
    cross_distance: Decimal = Decimal("0.02")
    """How far through the mark (relative) a crossing order is placed."""
    fences_unseen_cancel: bool = True
    """The venue refuses an order whose cancel arrived first (a tombstone, a voided id).
    A venue that cannot (False) must never answer such a cancel ``Accepted``: the ledger
    then keeps the reservation until the order's deadline has passed."""
    arrival_grace_ms: int = 0
    """How long after its submit deadline an order the venue has no record of may still
    arrive (``lookup``'s ``can_still_arrive``): 0 where the venue's fence refuses a late
    arrival by contract or signature; Polymarket's refusal is policy, so until the signed
    expiration."""

    @property
    def qty(self) -> Decimal:
        return self.lot * self.qty_lots

    def order(
        self, side: Side, price: Decimal, *, coid: str | None = None, deadline_ms: int | None = None
    ) -> Order:
        return Order(
            client_order_id=coid or "c" + uuid.uuid4().hex,
            symbol=self.symbol,
            side=side,
            qty=self.qty,
            price=price,
            token=self.token,
            submit_deadline_ms=deadline_ms if deadline_ms is not None else now_ms()
            + DEADLINE_MARGIN_MS,
        )

    async def mark(self) -> Decimal:
        marks = await self.venue.marks([self.symbol])
        return marks[self.symbol]

    async def resting_price(self, side: Side) -> Decimal:
        """A price ``rest_distance`` away from the mark on the passive side: it rests."""
        m = await self.mark()
        if side is Side.BUY:
            px = m * (1 - self.rest_distance)
            return (px / self.tick).to_integral_value(ROUND_DOWN) * self.tick
        px = m * (1 + self.rest_distance)
        return (px / self.tick).to_integral_value(ROUND_UP) * self.tick

    async def crossing_price(self, side: Side) -> Decimal:
        """A price ``cross_distance`` through the mark: it fills on arrival."""
        m = await self.mark()
        if side is Side.BUY:
            px = m * (1 + self.cross_distance)
            return (px / self.tick).to_integral_value(ROUND_UP) * self.tick
        px = m * (1 - self.cross_distance)
        return (px / self.tick).to_integral_value(ROUND_DOWN) * self.tick


class VenueConformance:
    """Subclass it and provide a ``harness`` fixture (see the module docstring)."""

    async def test_submit_when_order_rests_then_accepted_and_lookup_open(
        self, harness: VenueHarness
    ) -> None:
        # Arrange
        order = harness.order(Side.BUY, await harness.resting_price(Side.BUY))
        # Act
        result = await harness.venue.submit(order)
        status = await harness.venue.lookup(order.client_order_id)
        # Assert
        assert isinstance(result, Accepted), result
        assert status.state is VenueOrderState.OPEN
        assert status.filled_qty == 0 and not status.fills

    async def test_submit_when_order_crosses_then_accepted_and_lookup_filled(
        self, harness: VenueHarness
    ) -> None:
        order = harness.order(Side.BUY, await harness.crossing_price(Side.BUY))

        result = await harness.venue.submit(order)
        status = await harness.venue.lookup(order.client_order_id)

        assert isinstance(result, Accepted), result
        assert status.state is VenueOrderState.FILLED
        assert status.filled_qty == order.qty
        assert [f.client_order_id for f in status.fills] == [order.client_order_id]
        assert sum(f.qty for f in status.fills) == order.qty

    async def test_submit_when_client_order_id_resent_then_no_second_order(
        self, harness: VenueHarness
    ) -> None:
        # Arrange: a crossing order, so a second order would show as a second fill.
        order = harness.order(Side.BUY, await harness.crossing_price(Side.BUY))
        first = await harness.venue.submit(order)
        batch = await harness.venue.fills_since(None)
        # Act
        again = await harness.venue.submit(order)
        status = await harness.venue.lookup(order.client_order_id)
        later = await harness.venue.fills_since(batch.cursor)
        # Assert
        assert isinstance(first, Accepted) and isinstance(again, Accepted)
        assert again.venue_order_id == first.venue_order_id
        assert status.filled_qty == order.qty and len(status.fills) == 1
        assert [f for f in later.fills if f.client_order_id == order.client_order_id] == []

    async def test_submit_when_deadline_passed_then_rejected(self, harness: VenueHarness) -> None:
        order = harness.order(
            Side.BUY, await harness.crossing_price(Side.BUY), deadline_ms=now_ms() - 5_000
        )

        result = await harness.venue.submit(order)
        status = await harness.venue.lookup(order.client_order_id)

        assert isinstance(result, Rejected), result
        assert status.state in (VenueOrderState.REJECTED, VenueOrderState.NOT_FOUND)
        assert status.filled_qty == 0
        if status.state is VenueOrderState.NOT_FOUND:
            assert not status.can_still_arrive

    async def test_submit_when_price_off_tick_then_rejected(self, harness: VenueHarness) -> None:
        price = await harness.resting_price(Side.BUY) + harness.tick / 3
        order = harness.order(Side.BUY, price)

        result = await harness.venue.submit(order)

        assert isinstance(result, Rejected), result

    async def test_cancel_when_order_resting_then_canceled_and_never_fills(
        self, harness: VenueHarness
    ) -> None:
        # Arrange
        order = harness.order(Side.BUY, await harness.resting_price(Side.BUY))
        assert isinstance(await harness.venue.submit(order), Accepted)
        before = await harness.venue.fills_since(None)
        # Act: cancel, then move the market through the order's price.
        canceled = await harness.venue.cancel(order.client_order_id)
        await harness.cross(order)
        status = await harness.venue.lookup(order.client_order_id)
        after = await harness.venue.fills_since(before.cursor)
        # Assert
        assert isinstance(canceled, Accepted), canceled
        assert status.state is VenueOrderState.CANCELED
        assert status.filled_qty == 0
        assert [f for f in after.fills if f.client_order_id == order.client_order_id] == []

    async def test_cross_when_order_resting_then_filled_at_most_its_limit(
        self, harness: VenueHarness
    ) -> None:
        order = harness.order(Side.BUY, await harness.resting_price(Side.BUY))
        assert isinstance(await harness.venue.submit(order), Accepted)

        await harness.cross(order)
        status = await harness.venue.lookup(order.client_order_id)

        assert status.state is VenueOrderState.FILLED
        assert status.filled_qty == order.qty
        assert all(f.price <= order.price for f in status.fills)

    async def test_lookup_when_id_unknown_then_not_found(self, harness: VenueHarness) -> None:
        coid = "c" + uuid.uuid4().hex

        live = await harness.venue.lookup(coid, deadline_ms=now_ms() + DEADLINE_MARGIN_MS)
        dead = await harness.venue.lookup(
            coid, deadline_ms=now_ms() - 5_000 - harness.arrival_grace_ms)

        assert live.state is VenueOrderState.NOT_FOUND and live.can_still_arrive
        assert dead.state is VenueOrderState.NOT_FOUND and not dead.can_still_arrive
        if harness.arrival_grace_ms > 5_000:  # within the grace: still possible
            late = await harness.venue.lookup(coid, deadline_ms=now_ms() - 5_000)
            assert late.can_still_arrive

    async def test_cancel_when_id_unknown_then_accepted_only_with_a_final_record(
        self, harness: VenueHarness
    ) -> None:
        # Arrange
        coid = "c" + uuid.uuid4().hex
        # Act
        result = await harness.venue.cancel(coid)
        status = await harness.venue.lookup(coid, deadline_ms=now_ms() + DEADLINE_MARGIN_MS)
        # Assert: an Accepted cancel of an unseen id is a promise that it never executes,
        # so the venue must hold a final record of it (a tombstone) — never NOT_FOUND.
        if isinstance(result, Accepted):
            assert harness.fences_unseen_cancel
            assert status.state is VenueOrderState.CANCELED, status
        if not harness.fences_unseen_cancel:
            assert not isinstance(result, Accepted), result

    async def test_submit_when_canceled_before_arrival_then_rejected_and_never_fills(
        self, harness: VenueHarness
    ) -> None:
        # Arrange: a crossing order (a second life would show at once as a fill), whose
        # cancel reaches the venue first — a paused sender's late order.
        order = harness.order(Side.BUY, await harness.crossing_price(Side.BUY))
        before = await harness.venue.fills_since(None)
        canceled = await harness.venue.cancel(order.client_order_id)
        # Act
        late = await harness.venue.submit(order)
        again = await harness.venue.submit(order)
        status = await harness.venue.lookup(order.client_order_id)
        after = await harness.venue.fills_since(before.cursor)
        # Assert
        mine = [f for f in after.fills if f.client_order_id == order.client_order_id]
        if not harness.fences_unseen_cancel:
            assert not isinstance(canceled, Accepted), canceled
            return
        assert isinstance(late, Rejected), late
        assert isinstance(again, Rejected), again
        assert status.state in (VenueOrderState.CANCELED, VenueOrderState.REJECTED), status
        assert status.filled_qty == 0 and not status.fills
        assert mine == []

    async def test_fills_since_when_polled_with_cursor_then_each_fill_exactly_once(
        self, harness: VenueHarness
    ) -> None:
        # Arrange
        start = await harness.venue.fills_since(None)
        a = harness.order(Side.BUY, await harness.crossing_price(Side.BUY))
        b = harness.order(Side.SELL, await harness.crossing_price(Side.SELL))
        # Act
        assert isinstance(await harness.venue.submit(a), Accepted)
        first = await harness.venue.fills_since(start.cursor)
        assert isinstance(await harness.venue.submit(b), Accepted)
        second = await harness.venue.fills_since(first.cursor)
        third = await harness.venue.fills_since(second.cursor)
        everything = await harness.venue.fills_since(None)
        # Assert
        assert [f.client_order_id for f in first.fills] == [a.client_order_id]
        assert [f.client_order_id for f in second.fills] == [b.client_order_id]
        assert list(third.fills) == []
        ids = [f.fill_id for f in everything.fills]
        assert len(ids) == len(set(ids))
        assert {first.fills[0].fill_id, second.fills[0].fill_id} <= set(ids)

    async def test_marks_when_symbol_configured_then_positive_on_tick(
        self, harness: VenueHarness
    ) -> None:
        marks = await harness.venue.marks([harness.symbol])

        assert set(marks) == {harness.symbol}
        assert marks[harness.symbol] > 0
        assert marks[harness.symbol] % harness.tick == 0

    async def test_balances_when_buy_filled_then_position_grows_by_its_qty(
        self, harness: VenueHarness
    ) -> None:
        before = (await harness.venue.balances()).get(harness.symbol, Decimal(0))
        order = harness.order(Side.BUY, await harness.crossing_price(Side.BUY))

        assert isinstance(await harness.venue.submit(order), Accepted)
        after = (await harness.venue.balances()).get(harness.symbol, Decimal(0))

        assert after - before == order.qty


class SecretConformance:
    """For venues that hold key material: it never shows in repr, str or errors."""

    async def test_repr_when_venue_holds_key_then_key_absent_everywhere(
        self, harness: VenueHarness
    ) -> None:
        # Arrange
        assert harness.secrets, "a signing venue's harness must list its key material"
        assert harness.provoke_error is not None
        texts = [repr(harness.venue), str(harness.venue), repr(vars_or_slots(harness.venue))]
        # Act
        try:
            await harness.provoke_error()
        except (VenueError, OSError, ValueError) as e:
            texts += [str(e), repr(e), repr(e.__cause__), repr(e.__context__)]
        else:
            raise AssertionError("provoke_error did not raise")
        # Assert
        for secret in harness.secrets:
            for text in texts:
                assert secret.lower() not in text.lower()


def vars_or_slots(obj: object) -> dict[str, object]:
    """The instance's attributes, whether it uses ``__dict__`` or ``__slots__``."""
    if hasattr(obj, "__dict__"):
        return dict(vars(obj))
    return {s: getattr(obj, s, None) for s in getattr(obj, "__slots__", ())}
