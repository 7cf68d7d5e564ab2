"""The venue contract every adapter (paper, http, evm, yours) implements.

Invariant upheld: *every side effect is idempotent and every error is classified*.
A venue call either certainly did not and will not execute (``Rejected``) or its
outcome is not known (``Unknown``): the runtime never retries an unknown outcome
blindly — it keeps the reservation and reconciles by client order id.

Adapters must pass the shared conformance suite in ``tests/venue_conformance.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Protocol, runtime_checkable

# The venue facts live in the core (``model``: the ledger records them); re-exported here,
# where adapters and their callers have always imported them.
from guardrails.model import Accepted as Accepted
from guardrails.model import Fill, Order
from guardrails.model import Rejected as Rejected
from guardrails.model import SubmitResult as SubmitResult
from guardrails.model import Unknown as Unknown
from guardrails.model import VenueOrderState as VenueOrderState
from guardrails.model import VenueOrderStatus as VenueOrderStatus


@dataclass(frozen=True, slots=True)
class FillBatch:
    fills: Sequence[Fill]
    cursor: str
    """Opaque position to pass to the next ``fills_since`` call."""


class VenueError(Exception):
    """Infrastructure failure talking to the venue (not an order outcome)."""


def venue_number(value: object, what: str) -> Decimal:
    """A number from a venue's answer as a finite ``Decimal``. ``ValueError`` naming
    ``what`` for anything else (NaN, infinities, text, a bool, null): an adapter reports
    it as a malformed answer, and no ledger entry is made from it."""
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        raise ValueError(f"{what} is not a number ({str(value)[:40]!r})")
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"{what} is not a number ({str(value)[:40]!r})") from None
    if not d.is_finite():
        raise ValueError(f"{what} is not finite")
    return d


@dataclass(frozen=True, slots=True)
class ExchangeAccount:
    """Which account at an API-key exchange a started venue trades (the ccxt venue's
    ``exchange_account``): what ``runtime.identity.claim_account`` binds to one account
    id. ``kind`` is ``"uid"`` (``ref``: the account id the exchange reported) or ``"key"``
    (it reported none: ``ref`` is a domain-separated SHA-256 hex of the API key)."""

    exchange: str
    """The ccxt id, with ``-sandbox`` in sandbox mode (a test network's own accounts)."""
    kind: str
    ref: str

    def __str__(self) -> str:
        if self.kind == "uid":
            return f"{self.exchange} account uid {self.ref}"
        return (f"{self.exchange} API key sha256:{self.ref[:12]}… (no account uid from "
                f"{self.exchange}, so the key stands for the account)")


@runtime_checkable
class Venue(Protocol):
    """One account at one venue. Methods are safe to call from any instance."""

    name: str

    async def start(self) -> None:
        """Open connections. Idempotent."""

    async def close(self) -> None:
        """Close connections. Idempotent."""

    async def submit(self, order: Order) -> SubmitResult:
        """Send an admitted order. Must carry ``order.client_order_id`` so the venue
        dedupes a re-send, and ``order.submit_deadline_ms`` as its expiry where the
        venue supports one. Never raises for an order outcome: returns a result."""

    async def cancel(self, client_order_id: str) -> SubmitResult:
        """Request cancellation. ``Accepted`` means the order can never execute: the
        venue confirmed the cancel, the order was already final, or — for an id it has
        not seen — it recorded a tombstone so a later arrival is refused (a cancel is
        never overtaken by its order); ``Unknown`` means it may still be live."""

    async def lookup(
        self, client_order_id: str, *, deadline_ms: int | None = None
    ) -> VenueOrderStatus:
        """The venue's record of one order, with all its fills. Raises ``VenueError``
        when the venue cannot be asked. ``deadline_ms`` is the order's submit deadline
        (the ledger knows it): with ``NOT_FOUND`` the venue sets ``can_still_arrive`` to
        whether that deadline has not yet passed by the venue's clock; without it, to
        True (it cannot know). Reconcilers should always pass it."""

    async def fills_since(self, cursor: str | None) -> FillBatch:
        """Fills of this account after ``cursor`` (``None``: from the beginning)."""

    async def marks(self, symbols: Sequence[str]) -> dict[str, Decimal]:
        """Current mark (mid) price of each symbol the venue quotes."""

    async def balances(self) -> dict[str, Decimal]:
        """The account's holdings per symbol/asset as the venue sees them."""


class VenueReader:
    """What a bot may do with its account's venue outside the gate: read. Marks, balances
    and an order's record — not ``submit`` or ``cancel``, nor ``fills_since`` (the runtime's
    fill pump owns the fill stream). An order goes through the gate (``Context.submit``, or
    ``guardrails.ccxt.guarded``), a cancel through the ledger (``Context.cancel``): a
    submit here would trade outside every limit. ``Guard.venue`` hands this out."""

    __slots__ = ("_venue",)

    def __init__(self, venue: Venue) -> None:
        self._venue = venue

    @property
    def name(self) -> str:
        return self._venue.name

    async def marks(self, symbols: Sequence[str]) -> dict[str, Decimal]:
        """Current mark (mid) price of each symbol the venue quotes."""
        return await self._venue.marks(symbols)

    async def balances(self) -> dict[str, Decimal]:
        """The account's holdings per symbol/asset as the venue sees them."""
        return await self._venue.balances()

    async def lookup(self, client_order_id: str, *,
                     deadline_ms: int | None = None) -> VenueOrderStatus:
        """The venue's record of one order (``Venue.lookup``)."""
        return await self._venue.lookup(client_order_id, deadline_ms=deadline_ms)

    def __getattr__(self, name: str) -> object:
        raise AttributeError(
            f"guard.venue is read-only: {name!r} is not offered (marks, balances, lookup "
            f"are); orders go through the gate (Context.submit, Context.cancel)")

    def __repr__(self) -> str:
        return f"VenueReader({self._venue.name})"
