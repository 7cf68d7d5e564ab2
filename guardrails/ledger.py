"""The ledger: the only writer of order lifecycles, fills, positions and marks.

Invariants upheld: *terminal is terminal* — ``lua/ledger_transition.lua`` refuses (and
journals) any move out of FILLED, CANCELED, REJECTED or EXPIRED, whoever asks; and
*every side effect is idempotent* — ``lua/ledger_fill.lua`` applies a fill once per
fill id, moving its quantity from the order's reservation to the position and updating
the cost basis and realized PnL. Venue events are facts any instance may record (no
lease needed), but only through these scripts.

*One table from venue facts to ledger states*: what a venue's answer does to an order is
decided here and nowhere else — ``submit_target`` for the answer to a submit
(``Accepted``/``Rejected``/``Unknown``), ``settle_step`` for a ``VenueOrderStatus`` (the
answer to a lookup). ``Ledger.record_submit`` and ``Ledger.settle`` write them; the
Context's submit and cancel and reconciliation all go through these two.

Amounts in Redis are integers (docs/keys.md): quantities in lots, prices in ticks,
money in units of 10^-quote_decimals. This module converts them to exact ``Decimal``
and back; a fill's value is rounded against the account (a buy's cost up, a sell's
proceeds down, fees up) when the venue's price is finer than the money unit.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal
from enum import StrEnum
from typing import Any, assert_never
from zoneinfo import ZoneInfo

import redis.asyncio as aioredis

from guardrails import redacted, scripts
from guardrails.config import RiskConfig
from guardrails.keys import AccountKeys
from guardrails.limits import per_lot_tick
from guardrails.model import (
    Accepted,
    Fill,
    OrderState,
    Rejected,
    Side,
    SubmitResult,
    Unknown,
    VenueOrderState,
    VenueOrderStatus,
)
from guardrails.tradingday import ClockMs, TradingDay, trading_day_of, wall_clock_ms


class LedgerError(Exception):
    """The ledger could not apply a fact: a key has the wrong shape, a stored field is
    malformed, a release would drive a reservation below zero, or an overflow. The
    script checked before its first write, so nothing was written (but a journal entry
    ``ev=bad_state`` / ``fill_bad_state``); a retry after the repair applies it once."""


class Transition(StrEnum):
    APPLIED = "applied"
    REFUSED_TERMINAL = "refused_terminal"
    """The order is terminal; nothing changed (the attempt is journaled)."""
    UNKNOWN_ORDER = "unknown_order"
    REFUSED_INVALID = "refused_invalid"
    """The target state cannot be set this way (PENDING_SUBMIT, FILLED, PARTIALLY_FILLED)."""


class FillOutcome(StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    REFUSED = "refused"
    """Nothing changed (journaled ``ev=fill_refused``): the fill's symbol/side differ from
    the order's, its numbers are malformed, the order is terminal, or the fill is larger
    than the order's open quantity (an over-fill)."""
    UNKNOWN_ORDER = "unknown_order"


_TRANSITION_CODES = {
    0: Transition.APPLIED,
    1: Transition.REFUSED_TERMINAL,
    2: Transition.UNKNOWN_ORDER,
    3: Transition.REFUSED_INVALID,
}
_UNSAFE_FEE_TEXT = re.compile(r"[^A-Za-z0-9._-]")
"""What ``fees_uncounted_text`` replaces in a venue's fee currency or amount."""

_FILL_CODES = {
    0: FillOutcome.APPLIED,
    1: FillOutcome.DUPLICATE,
    2: FillOutcome.UNKNOWN_ORDER,
    3: FillOutcome.REFUSED,
}
_BAD_STATE = 4


@dataclass(frozen=True, slots=True)
class OrderRecord:
    client_order_id: str
    intent_id: str
    symbol: str
    side: Side
    qty: Decimal
    price: Decimal
    state: OrderState
    filled_qty: Decimal
    open_qty: Decimal
    """Quantity still reserved (0 once terminal)."""
    token: int
    created_ms: int
    updated_ms: int
    deadline_ms: int
    venue_order_id: str
    reason: str
    nonce: int | None


@dataclass(frozen=True, slots=True)
class PositionView:
    symbol: str
    qty: Decimal
    """Signed combined position (negative = short)."""
    cost_basis: Decimal
    """Signed money paid for the open position (negative for a short: money received)."""
    avg_cost: Decimal | None
    """cost_basis / qty, rounded half-even to four decimals finer than the tick (a
    derived figure for people; ``cost_basis`` is the exact one)."""
    realized_pnl: Decimal
    """Cumulative realized PnL in this symbol, fees included (all days)."""
    mark: Decimal | None
    unrealized: Decimal
    reserved_buy: Decimal
    reserved_sell: Decimal


PNL_HISTORY_MAX = 17_280
"""Samples kept per trading day (a day at one every 5 s)."""
PNL_HISTORY_TTL_MS = 3 * 86_400_000
"""A day's P&L history is kept three days."""


@dataclass(frozen=True, slots=True)
class BudgetView:
    trading_day: str
    realized_pnl: Decimal
    realized_loss: Decimal
    unrealized_loss: Decimal
    reserved_worst_loss: Decimal
    limit: Decimal
    used: Decimal
    """realized_loss + unrealized_loss + reserved_worst_loss (what the gate compares)."""
    fees_uncounted: int = 0
    """Fills of the day applied with a fee the venue could not value (``Fill.fees_uncounted``):
    realized_loss, and so ``used``, leave those fees out."""

    @property
    def remaining(self) -> Decimal:
        return self.limit - self.used


# -- the one table: venue facts -> ledger states ----------------------------------------


def submit_target(result: SubmitResult) -> OrderState:
    """The state a venue's answer to a submit moves the order to.

    ``Accepted`` -> SUBMITTED (``ledger_transition.lua`` keeps a PARTIALLY_FILLED order
    as it is: a fill already proved it at the venue); ``Rejected`` -> REJECTED (releases
    the reservation: the order certainly never executes); ``Unknown`` -> UNKNOWN (the
    reservation stays until a lookup tells; never re-sent)."""
    match result:
        case Accepted():
            return OrderState.SUBMITTED
        case Rejected():
            return OrderState.REJECTED
        case Unknown():
            return OrderState.UNKNOWN
        case _:
            assert_never(result)


_RELEASED_AT_VENUE = {
    VenueOrderState.CANCELED: OrderState.CANCELED,
    VenueOrderState.REJECTED: OrderState.REJECTED,
    VenueOrderState.EXPIRED: OrderState.EXPIRED,
}
"""Venue states that guarantee the order never executes again: the ledger takes the
venue's word for which terminal state it is (after applying the fills it reported)."""


@dataclass(frozen=True, slots=True)
class SettleStep:
    """What a ``VenueOrderStatus`` does to an order once its fills are applied."""

    target: OrderState | None = None
    """The transition to ask ``ledger_transition.lua`` for (None: no state change)."""
    held: bool = False
    """NOT_FOUND but the order can still arrive: its reservation is kept."""
    problem: str = ""
    """The venue's record and the ledger's disagree (the order is left as it is)."""


def settle_step(status: VenueOrderStatus, order: OrderRecord) -> SettleStep:
    """The table row for ``status`` given the order as the ledger holds it *after* the
    status's fills were applied. Pure; ``Ledger.settle`` carries it out.

    | venue says | ledger order | step |
    |---|---|---|
    | any | terminal | nothing (terminal is terminal) |
    | OPEN | PENDING_SUBMIT, UNKNOWN | SUBMITTED (the send that was in doubt arrived) |
    | OPEN | SUBMITTED, PARTIALLY_FILLED | nothing |
    | FILLED | live | problem: the venue's fills did not fill the ledger's order |
    | CANCELED / REJECTED / EXPIRED | live | the same terminal state (rest released) |
    | NOT_FOUND, can still arrive | live | held (reservation kept) |
    | NOT_FOUND, can no longer arrive | live | EXPIRED |
    """
    if order.state.terminal:
        return SettleStep()
    match status.state:
        case VenueOrderState.OPEN:
            if order.state in (OrderState.PENDING_SUBMIT, OrderState.UNKNOWN):
                return SettleStep(OrderState.SUBMITTED)
            return SettleStep()
        case VenueOrderState.FILLED:
            return SettleStep(problem=(
                f"venue says filled but the ledger has {order.filled_qty} of {order.qty}"
            ))
        case VenueOrderState.CANCELED | VenueOrderState.REJECTED | VenueOrderState.EXPIRED:
            return SettleStep(_RELEASED_AT_VENUE[status.state])
        case VenueOrderState.NOT_FOUND:
            if status.can_still_arrive:
                return SettleStep(held=True)
            return SettleStep(OrderState.EXPIRED)
        case _:
            assert_never(status.state)


@dataclass(frozen=True, slots=True)
class Settlement:
    """What ``Ledger.settle`` did with one venue status."""

    client_order_id: str
    fills_applied: int = 0
    from_state: OrderState | None = None
    """The order's state after the fills, before the transition (None: never read)."""
    to_state: OrderState | None = None
    """The state a transition set (None: no transition applied)."""
    held: bool = False
    problem: str = ""
    """Why the order is not settled as far as the venue's fact allows ('' = it is):
    a fill the ledger did not take, a transition refused as bad state, a record that
    vanished, or a venue record that disagrees with the ledger's. Reconciliation
    reports it and stays fail-closed; the next pass retries (everything is idempotent)."""

    @property
    def ok(self) -> bool:
        return not self.problem


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _i(v: Any, what: str = "field") -> int:
    """A stored integer (absent = 0), exactly as the scripts define one (lib/int.lua)."""
    try:
        return scripts.stored_int(v, what)
    except ValueError as e:
        raise LedgerError(str(e)) from None


def _ints(raw: dict[Any, Any], what: str) -> dict[str, int]:
    return {_s(k): _i(v, f"{what} {_s(k)}") for k, v in raw.items()}


class Ledger:
    """Records venue facts for one account through the ledger scripts."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: AccountKeys,
        risk: RiskConfig,
        *,
        clock_ms: ClockMs | None = None,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.risk = risk
        self._day = TradingDay(risk.timezone, clock_ms)
        self._tz = ZoneInfo(risk.timezone)
        self._transition = scripts.register(redis, "ledger_transition")
        self._fill = scripts.register(redis, "ledger_fill")
        self._marks = scripts.register(redis, "ledger_marks")
        self._adopt = scripts.register(redis, "ledger_adopt")

    def trading_day(self) -> str:
        return self._day.today()

    # -- lifecycle ---------------------------------------------------------------------

    async def transition(
        self, coid: str, target: OrderState, reason: str = "", venue_order_id: str = ""
    ) -> Transition:
        """Move ``coid`` to ``target`` through the script (refused if it is terminal).

        ``reason`` is stored (the order's hash, the journal) masked by
        ``redacted.mask_text``: it is often a venue's error answer, which can echo the
        signed request it refused (a signature, an API key) or a URL with a key in it."""
        k = self.keys
        raw = await self._transition(
            keys=[k.order(coid), k.open_orders, k.reservations, k.journal, k.positions,
                  k.marks, k.limits, k.aggregates],
            args=[coid, target.value, redacted.mask_text(reason), venue_order_id],
        )
        code = int(raw[0])
        if code == _BAD_STATE:
            raise LedgerError(f"order {coid}: {_s(raw[1])}")
        try:
            return _TRANSITION_CODES[code]
        except KeyError:
            raise LedgerError(f"ledger_transition returned unknown code {code}") from None

    async def record_submit(self, coid: str, result: SubmitResult) -> Transition:
        """Record the venue's answer to submitting ``coid`` (``submit_target``): an
        ``Accepted`` with its venue order id, a ``Rejected``/``Unknown`` with its reason."""
        target = submit_target(result)
        if isinstance(result, Accepted):
            return await self.transition(coid, target, "", result.venue_order_id)
        return await self.transition(coid, target, result.reason)

    async def settle(self, coid: str, status: VenueOrderStatus, *, source: str) -> Settlement:
        """Bring ``coid`` up to date with the venue's record of it (``settle_step``).

        Every fill first, once per fill id. A fill the ledger does not take (refused,
        unknown order, bad state) stops here: finalising the order now would release its
        reservation and lose the fill. Then the order is read again and the table's
        step is applied; the reason recorded is ``"<source>: venue says <state>"`` with
        the venue's detail. Ledger problems come back as ``Settlement.problem`` (nothing
        half-written: each script checks before it writes); Redis errors raise."""
        if status.client_order_id != coid:
            return Settlement(coid, problem=(
                f"venue answered for order {status.client_order_id!r}, not {coid!r}"
            ))
        applied = 0
        for fill in status.fills:
            if fill.client_order_id != coid:
                return Settlement(coid, applied, problem=(
                    f"fill {fill.fill_id} belongs to order {fill.client_order_id!r}"
                ))
            try:
                outcome = await self.apply_fill(fill)
            except LedgerError as e:
                return Settlement(coid, applied, problem=f"fill {fill.fill_id} not applied: {e}")
            if outcome is FillOutcome.APPLIED:
                applied += 1
            elif outcome is not FillOutcome.DUPLICATE:
                return Settlement(coid, applied, problem=(
                    f"fill {fill.fill_id} {outcome.value}: order left as it is"
                ))
        try:
            after = await self.order(coid)
        except LedgerError as e:
            return Settlement(coid, applied, problem=f"order record unreadable: {e}")
        if after is None:
            return Settlement(coid, applied, problem="order record vanished")
        step = settle_step(status, after)
        done = Settlement(coid, applied, after.state, held=step.held, problem=step.problem)
        if step.target is None:
            return done
        reason = f"{source}: venue says {status.state.value}"
        if status.detail:
            reason += f" ({status.detail})"
        try:
            result = await self.transition(coid, step.target, reason)
        except LedgerError as e:
            return Settlement(coid, applied, after.state, problem=(
                f"transition to {step.target.value} not applied: {e}"
            ))
        if result is Transition.APPLIED:
            return Settlement(coid, applied, after.state, step.target)
        return done

    # Direct transitions, for callers that decide a state themselves (not from a venue
    # answer): an admitted order that was never sent, an operator's repair, tests.

    async def mark_submitted(self, coid: str, venue_order_id: str) -> Transition:
        return await self.record_submit(coid, Accepted(venue_order_id))

    async def mark_unknown(self, coid: str, reason: str) -> Transition:
        """An ambiguous submit: the reservation stays until reconciliation knows."""
        return await self.record_submit(coid, Unknown(reason))

    async def mark_canceled(self, coid: str, reason: str) -> Transition:
        return await self.transition(coid, OrderState.CANCELED, reason)

    async def mark_rejected(self, coid: str, reason: str) -> Transition:
        return await self.record_submit(coid, Rejected(reason))

    async def mark_expired(self, coid: str, reason: str) -> Transition:
        """Only when the order can no longer execute (e.g. it was never sent and its
        permit deadline passed)."""
        return await self.transition(coid, OrderState.EXPIRED, reason)

    # -- fills ---------------------------------------------------------------------------

    def fill_amounts(self, fill: Fill) -> tuple[int, int, int, int]:
        """(lots, value, fee, price_ticks) of ``fill`` as the script's integers.

        Raises ``ValueError`` for a quantity that is not a whole number of lots."""
        inst = self.risk.instruments.get(fill.symbol)
        if inst is None:
            raise ValueError(f"fill {fill.fill_id}: symbol {fill.symbol} is not configured")
        for what, v in (("qty", fill.qty), ("price", fill.price), ("fee", fill.fee)):
            if not isinstance(v, Decimal) or not v.is_finite() or v < 0:
                raise ValueError(f"fill {fill.fill_id}: {what} {v!r} is not a finite Decimal >= 0")
        lots_d = fill.qty / inst.lot
        if lots_d != lots_d.to_integral_value() or lots_d <= 0:
            raise ValueError(f"fill {fill.fill_id}: qty {fill.qty} is not a positive lot multiple")
        qd = self.risk.quote_decimals
        exact = (fill.qty * fill.price).scaleb(qd)
        rounding = ROUND_CEILING if fill.side is Side.BUY else ROUND_FLOOR
        value = int(exact.to_integral_value(rounding=rounding))
        fee = int(fill.fee.scaleb(qd).to_integral_value(rounding=ROUND_CEILING))
        ticks = int((fill.price / inst.tick).to_integral_value(rounding=ROUND_HALF_EVEN))
        return int(lots_d), value, fee, ticks

    @staticmethod
    def fees_uncounted_text(fill: Fill) -> str:
        """``fill.fees_uncounted`` as ``ledger_fill.lua``'s ARGV[11]: ``<currency>:<amount>``
        entries joined by ``,`` ('' for none). What the venue reported is anyone's text, so
        a character outside ``[A-Za-z0-9._-]`` becomes ``?``, each part is cut to 40
        characters and at most 16 entries are kept: the text always passes the script's
        check, and a fill is never held back by its fee's spelling."""
        def part(text: str) -> str:
            return _UNSAFE_FEE_TEXT.sub("?", str(text))[:40] or "?"
        return ",".join(f"{part(c)}:{part(a)}" for c, a in fill.fees_uncounted[:16])

    def fill_day(self, fill: Fill) -> str:
        """The trading day a fill's realized PnL and fees count toward: the day it
        *executed* (``fill.ts_ms``, the venue's time) in the account's timezone — not the
        day it is applied, which may be after midnight for a fill made before it.

        Raises ``ValueError`` for a fill without a positive execution time."""
        ts = fill.ts_ms
        if not isinstance(ts, int) or isinstance(ts, bool) or ts <= 0:
            raise ValueError(f"fill {fill.fill_id}: execution time ts_ms {ts!r} is not a "
                             "positive Unix ms (cannot tell its trading day)")
        return trading_day_of(ts, self._tz)

    async def apply_fill(self, fill: Fill) -> FillOutcome:
        """Apply ``fill`` once per fill id (a second application is ``DUPLICATE``), to
        the trading day it executed. A fill on a terminal order or larger than the
        order's open quantity is ``REFUSED`` and changes nothing. Raises
        ``LedgerError`` when a key has an unexpected shape (nothing is written)."""
        try:
            lots, value, fee, ticks = self.fill_amounts(fill)
            day = self.fill_day(fill)
        except ValueError as e:
            raise LedgerError(str(e)) from None
        k = self.keys
        raw = await self._fill(
            keys=[
                k.order(fill.client_order_id), k.open_orders, k.fills, k.positions,
                k.reservations, k.day(day), k.journal, k.marks, k.limits, k.aggregates,
            ],
            args=[
                fill.fill_id, fill.client_order_id, fill.symbol, fill.side.value,
                lots, value, fee, ticks, fill.ts_ms, day, self.fees_uncounted_text(fill),
            ],
        )
        code = int(raw[0])
        if code == _BAD_STATE:
            raise LedgerError(f"fill {fill.fill_id}: {_s(raw[1])}")
        try:
            return _FILL_CODES[code]
        except KeyError:
            raise LedgerError(f"ledger_fill returned unknown code {code}") from None

    async def adopt(self, fills: Sequence[Fill]) -> bool:
        """Give the venue order of ``fills`` (one client order id, one symbol and side) a
        record when the ledger has none — its history was lost — for the quantity the
        venue filled, so the fills can then be applied with ``apply_fill`` like any other
        (``lua/ledger_adopt.lua``). True if a record was written, False if one existed.
        Raises ``LedgerError`` for fills that are not one order's, or a key of an
        unexpected shape (nothing written)."""
        if not fills:
            raise LedgerError("adopt: no fills")
        first = fills[0]
        if any((f.client_order_id, f.symbol, f.side) != (first.client_order_id, first.symbol,
                                                          first.side) for f in fills):
            raise LedgerError(f"adopt {first.client_order_id}: fills of more than one order")
        try:
            day = self.fill_day(first)
        except ValueError as e:
            raise LedgerError(str(e)) from None
        qty = sum((f.qty for f in fills), Decimal(0))
        return await self.adopt_order(first.client_order_id, first.symbol, first.side, qty,
                                      first.price, day=day)

    async def adopt_order(self, coid: str, symbol: str, side: Side, qty: Decimal,
                          price: Decimal, *, day: str | None = None) -> bool:
        """Give a venue order the ledger has no record of (its history was lost) a
        SUBMITTED record for ``qty`` at ``price``, reserved, as the venue's records show
        it; ``reconcile_order`` then brings it to the venue's state (fills, terminal).
        True if written, False if a record existed. ``LedgerError`` for a quantity or
        price the instrument cannot hold, or a key of an unexpected shape."""
        inst = self.risk.instruments.get(symbol)
        if inst is None:
            raise LedgerError(f"adopt {coid}: symbol {symbol} is not configured")
        lots_d, ticks_d = qty / inst.lot, price / inst.tick
        if (lots_d != lots_d.to_integral_value() or lots_d <= 0
                or ticks_d != ticks_d.to_integral_value() or ticks_d <= 0):
            raise LedgerError(f"adopt {coid}: {qty} @ {price} is not whole lots and ticks")
        k = self.keys
        raw = await self._adopt(
            keys=[k.order(coid), k.open_orders, k.reservations, k.journal, k.aggregates],
            args=[coid, symbol, side.value, int(lots_d), int(ticks_d), wall_clock_ms(),
                  day or self.trading_day(), str(qty), str(price)],
        )
        code = int(raw[0])
        if code == 0:
            return True
        if code == 1:
            return False
        raise LedgerError(f"adopt {coid}: {_s(raw[1])}")

    # -- marks ---------------------------------------------------------------------------

    async def update_marks(self, marks: dict[str, Decimal]) -> None:
        """Store marks (rounded half-even to the instrument tick); unknown symbols ignored.
        One script step that also moves the maintained aggregates (lib/agg.lua)."""
        fields: dict[str, str] = {}
        for sym, px in marks.items():
            inst = self.risk.instruments.get(sym)
            if inst is None or not isinstance(px, Decimal) or not px.is_finite() or px <= 0:
                continue
            ticks = int((px / inst.tick).to_integral_value(rounding=ROUND_HALF_EVEN))
            if ticks > 0:
                fields[sym] = str(ticks)
        if fields:
            k = self.keys
            raw = await self._marks(
                keys=[k.marks, k.positions, k.reservations, k.limits, k.aggregates],
                args=[x for kv in fields.items() for x in kv],
            )
            if int(raw[0]) != 0:
                raise LedgerError(f"marks: {_s(raw[1])}")

    async def marks(self) -> dict[str, Decimal]:
        raw = await self.redis.hgetall(self.keys.marks)
        out: dict[str, Decimal] = {}
        for k, v in raw.items():
            sym = _s(k)
            inst = self.risk.instruments.get(sym)
            if inst is not None:
                out[sym] = Decimal(_s(v)) * inst.tick
        return out

    # -- reading ----------------------------------------------------------------------------

    async def order(self, coid: str) -> OrderRecord | None:
        raw = await self.redis.hgetall(self.keys.order(coid))
        if not raw:
            return None
        return self._record({_s(k): _s(v) for k, v in raw.items()})

    def _record(self, h: dict[str, str]) -> OrderRecord:
        inst = self.risk.instruments.get(h["symbol"])
        lot = inst.lot if inst is not None else Decimal(0)
        nonce = h.get("nonce", "-")
        o = f"order {h.get('coid', '?')} ({self.keys.order(h.get('coid', '?'))})"
        return OrderRecord(
            client_order_id=h["coid"],
            intent_id=h.get("intent_id", ""),
            symbol=h["symbol"],
            side=Side(h["side"]),
            qty=Decimal(h["qty"]),
            price=Decimal(h["price"]),
            state=OrderState(h["state"]),
            filled_qty=_i(h.get("filled_lots"), f"{o} filled_lots") * lot,
            open_qty=_i(h.get("open_lots"), f"{o} open_lots") * lot,
            token=_i(h.get("token"), f"{o} token"),
            created_ms=_i(h.get("created_ms"), f"{o} created_ms"),
            updated_ms=_i(h.get("updated_ms"), f"{o} updated_ms"),
            deadline_ms=_i(h.get("deadline_ms"), f"{o} deadline_ms"),
            venue_order_id=h.get("venue_order_id", ""),
            reason=h.get("reason", ""),
            nonce=None if nonce in ("-", "") else _i(nonce, f"{o} nonce"),
        )

    async def open_orders(self) -> list[OrderRecord]:
        """Every non-terminal order of the account (all strategies), oldest first."""
        coids = sorted(_s(c) for c in await self.redis.smembers(self.keys.open_orders))
        if not coids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for c in coids:
                pipe.hgetall(self.keys.order(c))
            rows = await pipe.execute()
        out = [self._record({_s(k): _s(v) for k, v in row.items()}) for row in rows if row]
        return sorted(out, key=lambda r: (r.created_ms, r.client_order_id))

    async def positions(self) -> dict[str, PositionView]:
        """Combined position per symbol with cost, PnL and mark (exact Decimals)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.positions)
            pipe.hgetall(self.keys.reservations)
            pipe.hgetall(self.keys.marks)
            pos_raw, res_raw, marks_raw = await pipe.execute()
        pos = _ints(pos_raw, "position")
        res = _ints(res_raw, "reservation")
        marks = _ints(marks_raw, "mark")
        qd = self.risk.quote_decimals
        out: dict[str, PositionView] = {}
        syms = {f.rsplit(":", 1)[0] for f in pos} | {f.rsplit(":", 1)[0] for f in res}
        for sym in sorted(syms):
            inst = self.risk.instruments.get(sym)
            if inst is None:
                continue
            lots = pos.get(f"{sym}:qty", 0)
            cost = pos.get(f"{sym}:cost", 0)
            qty = lots * inst.lot
            cost_d = Decimal(cost).scaleb(-qd)
            mark_t = marks.get(sym)
            mark = mark_t * inst.tick if mark_t is not None else None
            unreal = Decimal(0)
            if mark_t is not None:
                unreal = Decimal(lots * mark_t * per_lot_tick(self.risk, sym) - cost).scaleb(-qd)
            out[sym] = PositionView(
                symbol=sym,
                qty=qty,
                cost_basis=cost_d,
                avg_cost=(cost_d / qty).quantize(inst.tick.scaleb(-4)) if lots else None,
                realized_pnl=Decimal(pos.get(f"{sym}:rpnl", 0)).scaleb(-qd),
                mark=mark,
                unrealized=unreal,
                reserved_buy=res.get(f"{sym}:buy", 0) * inst.lot,
                reserved_sell=res.get(f"{sym}:sell", 0) * inst.lot,
            )
        return out

    async def record_pnl_sample(self, b: BudgetView, at_ms: int) -> None:
        """Append ``b`` to the day's P&L history (``keys.pnl_history``): capped at a day of
        samples at the report interval, expiring a few days after its day."""
        key = self.keys.pnl_history(b.trading_day)
        sample = json.dumps({"t": at_ms, "realized_pnl": str(b.realized_pnl),
                             "unrealized_loss": str(b.unrealized_loss), "used": str(b.used),
                             "limit": str(b.limit)}, separators=(",", ":"))
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.rpush(key, sample)
            pipe.ltrim(key, -PNL_HISTORY_MAX, -1)
            pipe.pexpire(key, PNL_HISTORY_TTL_MS)
            await pipe.execute()

    async def budget(self) -> BudgetView:
        """Today's loss budget exactly as the gate computes it (docs/gate.md)."""
        day = self._day.today()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(self.keys.day(day), "realized_pnl", "fees_uncounted")
            pipe.hgetall(self.keys.positions)
            pipe.hgetall(self.keys.reservations)
            pipe.hgetall(self.keys.marks)
            pipe.hget(self.keys.limits, "daily_loss_limit")
            (rp_raw, unc_raw), pos_raw, res_raw, marks_raw, limit_raw = await pipe.execute()
        qd = self.risk.quote_decimals
        rp = _i(rp_raw, "day realized_pnl")
        uncounted = _i(unc_raw, "day fees_uncounted")
        pos = _ints(pos_raw, "position")
        res = _ints(res_raw, "reservation")
        marks = _ints(marks_raw, "mark")
        unreal_loss = 0
        for f, lots in pos.items():
            sym, _, kind = f.rpartition(":")
            if kind != "qty" or sym not in self.risk.instruments:
                continue
            cost = pos.get(f"{sym}:cost", 0)
            if (lots or cost) and sym in marks:
                u = lots * marks[sym] * per_lot_tick(self.risk, sym) - cost
                unreal_loss += max(0, -u)
        reserved = sum(v for f, v in res.items() if f.endswith(":loss"))
        realized_loss = max(0, -rp)
        limit = _i(limit_raw, "limits daily_loss_limit") if limit_raw is not None else None
        limit_d = (
            Decimal(limit).scaleb(-qd) if limit is not None else self.risk.daily_loss_limit
        )
        return BudgetView(
            trading_day=day,
            realized_pnl=Decimal(rp).scaleb(-qd),
            realized_loss=Decimal(realized_loss).scaleb(-qd),
            unrealized_loss=Decimal(unreal_loss).scaleb(-qd),
            reserved_worst_loss=Decimal(reserved).scaleb(-qd),
            limit=limit_d,
            used=Decimal(realized_loss + unreal_loss + reserved).scaleb(-qd),
            fees_uncounted=uncounted,
        )
