"""The strategy API: ``Strategy`` and ``Context``, the only door a strategy has.

Invariants upheld here: *one writer per account* and *risk is shared*. A strategy
never sees Redis, the venue or a key; every order it wants goes through ``submit``,
which asks the fenced gate (one atomic Redis step that checks the current fencing
token and a live lease, the kill switch and every limit, and reserves the exposure)
*before* anything reaches the venue. What a strategy reads — positions, budget —
is the account's combined state in Redis, not this process's view.

``submit`` never retries blindly: a venue answer that is not a clear accept or
reject is recorded as UNKNOWN and left to reconciliation, which looks the order up
by client order id. An admitted order that can no longer be sent in time (the
leadership was lost, or its permit deadline passed) is not sent and is expired in
the ledger, so its reservation is released truthfully.

Reads fail closed with one exception type: ``ContextUnavailable`` (Redis or the venue
could not answer, or the account's state could not be read) — never a raw
``redis.ConnectionError``. A strategy that lets it escape is restarted by the runtime
with backoff, within the same term. ``submit`` never raises for a bad intent: a float
qty, a str side, NaN, an over-long symbol or id or a decimal the gate cannot hold
exactly is ``Denied(bad_order)`` before anything reaches Redis.

What this does NOT guarantee: that the venue executes an admitted order, or that a
strategy sees its own fills before its next decision (the runtime's pump applies
fills a little later).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Protocol, TypeVar, runtime_checkable

import redis.exceptions

from guardrails import logs
from guardrails.config import InstrumentConfig, RiskConfig
from guardrails.gate import GateOutcomeUnknown, GateUnavailable
from guardrails.ledger import LedgerError, Transition, submit_target
from guardrails.model import (
    Admitted,
    Decision,
    Denied,
    DenyReason,
    Intent,
    Order,
    OrderState,
    intent_problem,
)
from guardrails.venues.base import (
    Accepted,
    Rejected,
    SubmitResult,
    Unknown,
    Venue,
    VenueError,
    VenueOrderState,
)

if TYPE_CHECKING:
    from guardrails.gate import OrderGate
    from guardrails.ledger import BudgetView, Ledger, OrderRecord, PositionView

_INFRA_ERRORS = (redis.exceptions.RedisError, OSError, asyncio.TimeoutError, LedgerError)
"""Failures to record a fact: logged, and left for reconciliation (never retried blindly)."""
T = TypeVar("T")
SENT_MEMORY = 10_000
"""How many sent client order ids a context remembers (to cancel them if its strategy crashes)."""


class ContextUnavailable(Exception):
    """A ``Context`` read could not be answered: Redis or the venue is unreachable or
    too slow, or the account's state in Redis has an unexpected shape. Nothing about the
    account is known, so a strategy must not act on a guess; letting it escape ``run``
    is fine — the runtime restarts the strategy with backoff while the term lasts.
    ``__cause__`` is the underlying error."""


_READ_ERRORS = (*_INFRA_ERRORS, VenueError)


def checkpoint() -> None:
    """Raise ``CancelledError`` if the current task has been asked to stop.

    Why: on Python 3.11 ``asyncio.wait_for`` — which redis-py uses for its socket
    timeout — swallows a cancellation that arrives just as the wrapped operation
    completes. The request stays recorded in ``Task.cancelling()``, so every loop of
    the runtime and every ``Context`` call checks it; otherwise a strategy could keep
    trading after its term was cancelled, and the lease would never be released.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError("cancellation requested (re-raised at checkpoint)")


STOPPING_PAUSE_S = 0.05


async def stopping_pause() -> None:
    """``checkpoint()`` at the start of a ``Context`` call, but a task being stopped first
    yields for ``STOPPING_PAUSE_S``: a strategy that swallows the ``CancelledError`` in a
    loop of Context calls then cannot spin the event loop and starve the very stop it
    ignores (the runtime abandons it after ``runtime.strategy_stop_timeout``)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        await asyncio.sleep(STOPPING_PAUSE_S)
        raise asyncio.CancelledError("cancellation requested (re-raised at checkpoint)")


@runtime_checkable
class Strategy(Protocol):
    """A strategy: constructed with its config ``params``, then ``await run(ctx)``.

    ``run`` is cancelled when this instance stops being active or is stopped; it
    must not swallow ``asyncio.CancelledError`` (one that does is abandoned after
    ``runtime.strategy_stop_timeout`` and never started again by this process). Anything
    else it raises — ``SystemExit`` and ``KeyboardInterrupt`` included — is this strategy
    crashing; ``ContextUnavailable`` escaping it gets it restarted with backoff.
    """

    async def run(self, ctx: Context) -> None: ...


class LeadershipView(Protocol):
    """What the context needs of ``lease.Leadership``: the token and whether it still holds."""

    @property
    def token(self) -> int: ...

    @property
    def holder_id(self) -> str: ...

    def valid(self) -> bool: ...


class MarkBook:
    """The latest marks the runtime's pump fetched from the venue (shared by all contexts)."""

    def __init__(self) -> None:
        self._marks: dict[str, Decimal] = {}

    def update(self, marks: dict[str, Decimal]) -> None:
        self._marks.update(marks)

    def get(self, symbol: str) -> Decimal | None:
        return self._marks.get(symbol)

    def snapshot(self) -> dict[str, Decimal]:
        return dict(self._marks)


class HandedOver:
    """The client order ids one term handed to the venue (``Context._send``), shared by
    all the term's contexts, each until its permit deadline has passed.

    Invariant upheld: *one admission, one order* — a repeat of an intent id whose first
    send is still in flight (its record still PENDING_SUBMIT: the venue has not answered,
    or the caller's own timeout cancelled the wait) is never sent again. A second POST of
    the same client order id is not always refused by a venue (Binance refuses only the
    ids of *open* orders), so it could be a second, unreserved order. Such an order stays
    in doubt until ``settle_in_doubt`` looks it up by client order id after its deadline.
    After the deadline nothing is re-sent anyway (``_unsent``), so an id is forgotten then.
    """

    def __init__(self, clock_ms: Callable[[], int] | None = None) -> None:
        self._deadlines: dict[str, int] = {}
        self._clock_ms = clock_ms or (lambda: int(time.time() * 1000))

    def __contains__(self, coid: object) -> bool:
        return coid in self._deadlines

    def add(self, coid: str, deadline_ms: int) -> None:
        if len(self._deadlines) >= 1024:  # forget the ones whose deadline has passed
            now = self._clock_ms()
            self._deadlines = {c: d for c, d in self._deadlines.items() if d >= now}
        self._deadlines[coid] = deadline_ms


class Context:
    """One strategy's door to the account, for one term of leadership."""

    def __init__(
        self,
        name: str,
        *,
        gate: OrderGate,
        ledger: Ledger,
        venue: Venue,
        leadership: LeadershipView,
        risk: RiskConfig,
        marks: MarkBook,
        allocate_nonce: bool = False,
        clock_ms: Callable[[], int] | None = None,
        handed: HandedOver | None = None,
    ) -> None:
        self.name = name
        self.log = logging.getLogger(f"strategy.{name}")
        self._gate = gate
        self._ledger = ledger
        self._venue = venue
        self._leadership = leadership
        self._risk = risk
        self._marks = marks
        self._allocate_nonce = allocate_nonce
        self._clock_ms = clock_ms or (lambda: int(time.time() * 1000))
        self._sent: deque[str] = deque(maxlen=SENT_MEMORY)
        self._handed = handed if handed is not None else HandedOver(self._clock_ms)
        """What this term handed to the venue (shared by the term's contexts)."""
        self._rlog = logging.getLogger("guardrails.orders")

    # -- reading the account's combined state ------------------------------------

    async def position(self, symbol: str) -> Decimal:
        """The account's combined signed position in ``symbol`` (0 if none).
        Raises ``ContextUnavailable`` when it cannot be read."""
        view = (await self.positions()).get(symbol)
        return view.qty if view is not None else Decimal(0)

    async def positions(self) -> dict[str, PositionView]:
        """The account's combined positions (qty, avg cost, PnL, mark) per symbol.
        Raises ``ContextUnavailable`` when they cannot be read."""
        return await self._read("positions", self._ledger.positions())

    async def budget(self) -> BudgetView:
        """Today's loss budget of the account: realized, unrealized, reserved, limit.
        Raises ``ContextUnavailable`` when it cannot be read."""
        return await self._read("budget", self._ledger.budget())

    async def mark(self, symbol: str) -> Decimal:
        """The latest mark price of ``symbol``. Raises ``KeyError`` if the venue has none,
        ``ContextUnavailable`` if the venue cannot be asked."""
        await stopping_pause()
        cached = self._marks.get(symbol)
        if cached is not None:
            return cached
        fresh = await self._read("mark", self._venue.marks([symbol]))
        self._marks.update(fresh)
        return fresh[symbol]

    async def _read(self, what: str, call: Awaitable[T]) -> T:
        """Await one read for the strategy: cancellation passes, infrastructure failures
        become ``ContextUnavailable`` (one type for strategy code to handle)."""
        try:
            await stopping_pause()
            result = await call
        except _READ_ERRORS as e:
            raise ContextUnavailable(f"{what}: {type(e).__name__}: {e}") from e
        finally:
            if inspect.iscoroutine(call):
                call.close()  # never awaited when checkpoint() raised first: no warning
        checkpoint()
        return result

    def instrument(self, symbol: str) -> InstrumentConfig:
        """Tick, lot and max position of ``symbol`` (raises ``KeyError`` if not configured)."""
        return self._risk.instruments[symbol]

    async def open_orders(self, symbol: str | None = None) -> list[OrderRecord]:
        """The account's non-terminal orders (all strategies), optionally one symbol's.
        Raises ``ContextUnavailable`` when they cannot be read."""
        records = await self._read("open_orders", self._ledger.open_orders())
        return [r for r in records if symbol is None or r.symbol == symbol]

    def sent_client_order_ids(self) -> list[str]:
        """Client order ids this context sent to the venue in this term (the latest
        ``SENT_MEMORY``), oldest first."""
        return list(self._sent)

    async def sleep(self, seconds: float) -> None:
        """Sleep; raises ``CancelledError`` (after a short pause) if this strategy is being
        stopped."""
        await stopping_pause()
        await asyncio.sleep(seconds)

    # -- acting -------------------------------------------------------------------

    async def submit(self, intent: Intent) -> Decision:
        """Gate, then venue. Returns the gate's decision (a value, never an exception).

        An ``Admitted`` with ``duplicate=True`` was decided before (same intent id):
        nothing new was reserved. It is sent only if this term admitted it and it never
        left the process (still PENDING_SUBMIT before its deadline — e.g. the gate's reply
        was lost); the venue dedupes the client order id, so that send is never a second
        order.
        """
        await stopping_pause()
        problem = intent_problem(intent, self.name)
        if problem is not None:
            await asyncio.sleep(0)  # a local denial yields too (see _admit)
            return self._bad_order(intent, problem)
        intent_id = intent.resolved_intent_id(self.name)
        decision = await self._admit(intent, intent_id)
        if isinstance(decision, Denied):
            logs.event(
                self._rlog, "order.denied", strategy=self.name, intent_id=intent_id,
                symbol=intent.symbol, side=intent.side.value, qty=intent.qty, price=intent.price,
                reason=decision.reason.value, detail=decision.detail or None,
                token=self._leadership.token,
            )
            return decision
        logs.event(
            self._rlog, "order.admitted", strategy=self.name, intent_id=intent_id,
            client_order_id=decision.client_order_id, symbol=intent.symbol,
            side=intent.side.value, qty=intent.qty, price=intent.price, token=decision.token,
            duplicate=decision.duplicate or None,
        )
        # What leaves the process is the order the gate recorded, never ``intent``: a
        # repeat of an intent id can only re-send what was admitted under it.
        if decision.duplicate:
            order = await self._unsent(decision)
        elif decision.order is not None:
            order = decision.order
        else:
            recorded = await self._recorded(decision)
            order = recorded[0] if recorded is not None else None
        if order is not None:
            await self._send(order)
        elif not decision.duplicate:  # reserved, never sent: reconciliation expires it
            logs.event(self._rlog, "order.not_sent", logging.WARNING, strategy=self.name,
                       client_order_id=decision.client_order_id,
                       reason="not sent: the admitted order record could not be read")
        checkpoint()
        return decision

    def _bad_order(self, intent: object, problem: str) -> Denied:
        """A denial for an intent that never reached the gate (its fields are not logged
        raw: they may be anything, of any size)."""
        raw_id = getattr(intent, "intent_id", None)
        intent_id = raw_id if isinstance(raw_id, str) and len(raw_id) <= 128 else ""
        logs.event(self._rlog, "order.denied", strategy=self.name, intent_id=intent_id or None,
                   reason=DenyReason.BAD_ORDER.value, detail=problem,
                   token=self._leadership.token)
        return Denied(intent_id, DenyReason.BAD_ORDER, problem)

    async def _admit(self, intent: Intent, intent_id: str) -> Decision:
        if not self._leadership.valid():
            # A local denial still yields once: a bot looping on submit with no other
            # await would otherwise never let the lease loop (or its own stop) run.
            await asyncio.sleep(0)
            return Denied(intent_id, DenyReason.NOT_ACTIVE, "this instance does not hold the lease")
        try:
            return await self._gate.admit(
                intent,
                intent_id=intent_id,
                token=self._leadership.token,
                holder_id=self._leadership.holder_id,
                allocate_nonce=self._allocate_nonce,
            )
        except GateOutcomeUnknown as e:
            # The reply was lost and Redis could not be asked again: the intent MAY be
            # admitted. Nothing is sent; re-submitting the same intent returns the truth.
            logs.event(self._rlog, "order.admission_unknown", logging.WARNING,
                       strategy=self.name, intent_id=intent_id, error=str(e))
            return Denied(intent_id, DenyReason.REDIS_UNAVAILABLE, f"outcome unknown: {e}")
        except GateUnavailable as e:
            return Denied(intent_id, DenyReason.REDIS_UNAVAILABLE, str(e))

    async def _unsent(self, admitted: Admitted) -> Order | None:
        """The recorded order of a duplicate admission of this term that never left
        the process (still PENDING_SUBMIT, before its deadline, and not handed to the
        venue by this term: ``HandedOver``), else None."""
        if admitted.token != self._leadership.token:
            return None
        if self._clock_ms() >= admitted.submit_deadline_ms:
            return None
        if admitted.client_order_id in self._handed:
            return None
        recorded = await self._recorded(admitted)
        if recorded is None or recorded[1] is not OrderState.PENDING_SUBMIT:
            return None
        return recorded[0]

    async def _recorded(self, admitted: Admitted) -> tuple[Order, OrderState] | None:
        """The admitted order as its record in Redis holds it, and its state (None if
        the record is missing or unreadable)."""
        try:
            record = await self._ledger.order(admitted.client_order_id)
        except _INFRA_ERRORS:
            return None
        if record is None:
            return None
        order = Order(
            client_order_id=record.client_order_id, symbol=record.symbol, side=record.side,
            qty=record.qty, price=record.price, token=record.token,
            submit_deadline_ms=record.deadline_ms, nonce=record.nonce,
        )
        return order, record.state

    async def _send(self, order: Order) -> None:
        coid = order.client_order_id
        # Re-check just before the order leaves the process: a term that ended (or a
        # permit that ran out) while we waited for the gate must not reach the venue.
        why_not = None
        if not self._leadership.valid():
            why_not = "not sent: leadership lost after admission"
        elif self._clock_ms() >= order.submit_deadline_ms:
            why_not = "not sent: permit deadline passed before sending"
        if why_not is not None:
            logs.event(self._rlog, "order.not_sent", logging.WARNING, strategy=self.name,
                       client_order_id=coid, reason=why_not)
            await self._record(coid, OrderState.EXPIRED, self._ledger.mark_expired(coid, why_not))
            return
        if coid in self._handed:
            # handed to the venue already in this term (a repeat of its intent while the
            # first send is unanswered): never a second send; it stays in doubt until the
            # venue answers or settle_in_doubt looks it up after its deadline
            logs.event(self._rlog, "order.not_resent", strategy=self.name, client_order_id=coid,
                       reason="already handed to the venue in this term; its outcome is pending")
            return
        self._handed.add(coid, order.submit_deadline_ms)
        self._sent.append(coid)
        result: SubmitResult
        try:
            result = await self._venue.submit(order)
        except Exception as e:  # the protocol says "never raises"; if it does, we cannot know
            result = Unknown(f"submit raised {type(e).__name__}: {e}")
        if isinstance(result, Accepted):
            logs.event(self._rlog, "order.submitted", strategy=self.name, client_order_id=coid,
                       venue_order_id=result.venue_order_id, token=order.token)
        elif isinstance(result, Rejected):
            logs.event(self._rlog, "order.rejected", strategy=self.name, client_order_id=coid,
                       reason=result.reason)
        else:
            # Unknown: keep the reservation; reconciliation looks it up by coid. Never resend.
            logs.event(self._rlog, "order.unknown", logging.WARNING, strategy=self.name,
                       client_order_id=coid, reason=result.reason)
        await self._record(coid, submit_target(result), self._ledger.record_submit(coid, result))

    async def _record(self, coid: str, target: OrderState, step: Awaitable[Transition]) -> None:
        """Await one ledger write of a venue outcome; a failure to record it is logged
        and left to reconciliation (which looks the order up by client order id)."""
        try:
            await step
        except _INFRA_ERRORS as e:
            logs.event(self._rlog, "order.record_failed", logging.WARNING, client_order_id=coid,
                       transition=target.value, error=f"{type(e).__name__}: {e}",
                       note="left for reconciliation")

    async def cancel(self, client_order_id: str) -> bool:
        """Ask the venue to cancel; True once the venue confirmed it is no longer live."""
        await stopping_pause()
        if not self._leadership.valid():
            logs.event(self._rlog, "order.cancel_refused", strategy=self.name,
                       client_order_id=client_order_id, reason=DenyReason.NOT_ACTIVE.value)
            return False
        return await cancel_order(
            self._ledger, self._venue, client_order_id, reason=f"canceled by {self.name}",
            log=self._rlog,
        )


async def cancel_order(
    ledger: Ledger, venue: Venue, client_order_id: str, *, reason: str, log: logging.Logger
) -> bool:
    """Cancel at the venue, then settle the ledger from the venue's record of the order.

    After a confirmed cancel the order is looked up and settled through the ledger's one
    table (``Ledger.settle``, exactly as reconciliation does): fills it got first are
    applied (once per fill id), and only a venue-side CANCELED/EXPIRED/REJECTED releases
    the rest of the reservation — a cancel that raced a fill never loses the fill.
    """
    try:
        result = await venue.cancel(client_order_id)
    except (VenueError, *_INFRA_ERRORS) as e:
        logs.event(log, "order.cancel_failed", logging.WARNING, client_order_id=client_order_id,
                   error=f"{type(e).__name__}: {e}")
        return False
    if not isinstance(result, Accepted):
        logs.event(log, "order.cancel_failed", logging.WARNING, client_order_id=client_order_id,
                   error=result.reason)
        return False
    try:
        status = await venue.lookup(client_order_id)
        settled = await ledger.settle(client_order_id, status, source=reason)
    except (VenueError, *_INFRA_ERRORS) as e:
        logs.event(log, "order.cancel_record_failed", logging.WARNING,
                   client_order_id=client_order_id, error=f"{type(e).__name__}: {e}",
                   note="left for reconciliation")
        return True
    if not settled.ok:
        logs.event(log, "order.cancel_record_failed", logging.WARNING,
                   client_order_id=client_order_id, error=settled.problem,
                   note="left for reconciliation")
    elif status.state in (VenueOrderState.CANCELED, VenueOrderState.EXPIRED):
        logs.event(log, "order.canceled", client_order_id=client_order_id, reason=reason)
    else:  # the order was already final (e.g. filled) when the cancel arrived
        logs.event(log, "order.cancel_too_late", client_order_id=client_order_id,
                   venue_state=status.state.value)
    return True
