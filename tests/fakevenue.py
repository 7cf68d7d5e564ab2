"""A minimal in-test Venue: a dict of what the 'exchange' knows per client order id.

Only for the reconcile/sweep unit tests; the real venues run through the same code in
their own suites."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from guardrails.model import Order
from guardrails.venues.base import (
    Accepted,
    FillBatch,
    SubmitResult,
    VenueError,
    VenueOrderState,
    VenueOrderStatus,
)


class FakeVenue:
    name = "fake"

    def __init__(self) -> None:
        self.status: dict[str, VenueOrderStatus] = {}
        self.broken: set[str] = set()
        self.lookups: list[tuple[str, int | None]] = []

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def submit(self, order: Order) -> SubmitResult:
        self.status[order.client_order_id] = VenueOrderStatus(
            order.client_order_id, VenueOrderState.OPEN
        )
        return Accepted(f"v-{order.client_order_id}")

    async def cancel(self, client_order_id: str) -> SubmitResult:
        return Accepted(f"v-{client_order_id}")

    async def lookup(
        self, client_order_id: str, *, deadline_ms: int | None = None
    ) -> VenueOrderStatus:
        self.lookups.append((client_order_id, deadline_ms))
        if client_order_id in self.broken:
            raise VenueError("venue is down")
        return self.status.get(
            client_order_id,
            VenueOrderStatus(client_order_id, VenueOrderState.NOT_FOUND, can_still_arrive=True),
        )

    async def fills_since(self, cursor: str | None) -> FillBatch:
        return FillBatch((), cursor or "")

    async def marks(self, symbols: Sequence[str]) -> dict[str, Decimal]:
        return {}

    async def balances(self) -> dict[str, Decimal]:
        return {}
