"""The one table from venue facts to ledger states (``ledger.submit_target``,
``ledger.settle_step``) and the two ledger methods that carry it out
(``Ledger.record_submit``, ``Ledger.settle``).

Three layers: the pure table against a written-out matrix covering every venue state and
every ledger state; every venue fact applied to a real order (admitted by the real gate
on a real redis-server), checking the state, the fills and the reservation; and the
same venue fact reaching the ledger through the Context (submit, cancel) and through
reconciliation, leaving identical ledger state.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest
import redis.asyncio as aioredis

from guardrails.gate import OrderGate
from guardrails.keys import AccountKeys
from guardrails.ledger import (
    Ledger,
    OrderRecord,
    Settlement,
    SettleStep,
    Transition,
    settle_step,
    submit_target,
)
from guardrails.model import (
    TERMINAL_STATES,
    Accepted,
    Admitted,
    Fill,
    Order,
    OrderState,
    Rejected,
    Side,
    SubmitResult,
    Unknown,
    VenueOrderState,
    VenueOrderStatus,
    client_order_id_for,
)
from guardrails.reconcile import ReconcileReport, reconcile_order
from guardrails.runtime.context import Context, MarkBook, cancel_order
from tests.fakevenue import FakeVenue
from tests.gatekit import HOLDER, SYMBOL, TOKEN, account_keys, buy, risk, seed

LOT = Decimal("0.0001")
TS = 1_767_225_600_000
"""Every fill's execution time (one trading day for every case)."""
INTENT_ID = "i-table"
COID = client_order_id_for(INTENT_ID)
ORDER_LOTS = 10

# -- 1. the pure table ------------------------------------------------------------------

LIVE = (OrderState.PENDING_SUBMIT, OrderState.SUBMITTED, OrderState.UNKNOWN,
        OrderState.PARTIALLY_FILLED)

# What a lookup's answer does to a live order (columns: LIVE, in that order); "-" is no
# state change, "held" keeps the reservation, "problem" is a disagreement left as it is.
STATUS_MATRIX: dict[tuple[VenueOrderState, bool], tuple[str, str, str, str]] = {
    (VenueOrderState.OPEN, False): ("SUBMITTED", "-", "SUBMITTED", "-"),
    (VenueOrderState.FILLED, False): ("problem",) * 4,
    (VenueOrderState.CANCELED, False): ("CANCELED",) * 4,
    (VenueOrderState.REJECTED, False): ("REJECTED",) * 4,
    (VenueOrderState.EXPIRED, False): ("EXPIRED",) * 4,
    (VenueOrderState.NOT_FOUND, True): ("held",) * 4,
    (VenueOrderState.NOT_FOUND, False): ("EXPIRED",) * 4,
}


def record(state: OrderState) -> OrderRecord:
    return OrderRecord(
        client_order_id=COID, intent_id=INTENT_ID, symbol=SYMBOL, side=Side.BUY,
        qty=ORDER_LOTS * LOT, price=Decimal("60000"), state=state, filled_qty=Decimal(0),
        open_qty=Decimal(0) if state.terminal else ORDER_LOTS * LOT, token=TOKEN,
        created_ms=1, updated_ms=1, deadline_ms=2, venue_order_id="", reason="", nonce=None,
    )


def short(step: SettleStep) -> str:
    if step.problem:
        assert step.target is None and not step.held, step
        return "problem"
    if step.held:
        assert step.target is None, step
        return "held"
    return step.target.value if step.target is not None else "-"


def test_status_matrix_when_compared_with_enums_then_every_venue_state_has_a_row() -> None:
    assert {s for s, _ in STATUS_MATRIX} == set(VenueOrderState)
    assert set(LIVE) | TERMINAL_STATES == set(OrderState)


@pytest.mark.parametrize(("venue_state", "arrive"), list(STATUS_MATRIX),
                         ids=[f"{s.value}{'-arrive' if a else ''}" for s, a in STATUS_MATRIX])
@pytest.mark.parametrize("ledger_state", list(OrderState), ids=[s.value for s in OrderState])
def test_settle_step_when_venue_state_meets_ledger_state_then_matrix_row(
    venue_state: VenueOrderState, arrive: bool, ledger_state: OrderState
) -> None:
    status = VenueOrderStatus(COID, venue_state, can_still_arrive=arrive)
    step = settle_step(status, record(ledger_state))
    if ledger_state.terminal:
        assert short(step) == "-"  # terminal is terminal, whatever the venue says
    else:
        assert short(step) == STATUS_MATRIX[(venue_state, arrive)][LIVE.index(ledger_state)]


@pytest.mark.parametrize(("result", "target"), [
    (Accepted("v-1"), OrderState.SUBMITTED),
    (Rejected("post-only would cross"), OrderState.REJECTED),
    (Unknown("read timeout"), OrderState.UNKNOWN),
])
def test_submit_target_when_each_submit_answer_then_its_state(
    result: SubmitResult, target: OrderState
) -> None:
    assert submit_target(result) is target


# -- 2. every venue fact applied to a real order ---------------------------------------


def fill(fid: str, lots: int, coid: str = COID) -> Fill:
    return Fill(fid, coid, SYMBOL, Side.BUY, lots * LOT, Decimal("60000"), ts_ms=TS)


def status(state: VenueOrderState, *fills: Fill, arrive: bool = False,
           coid: str = COID) -> VenueOrderStatus:
    return VenueOrderStatus(coid, state, fills=fills, can_still_arrive=arrive, detail="d")


async def admit(r: aioredis.Redis, keys: AccountKeys) -> Admitted:
    d = await OrderGate(r, keys, risk()).admit(
        buy(str(ORDER_LOTS * LOT)), intent_id=INTENT_ID, token=TOKEN, holder_id=HOLDER
    )
    assert isinstance(d, Admitted) and d.client_order_id == COID, d
    return d


async def bring_to(ledger: Ledger, start: str) -> None:
    """Move the freshly admitted (PENDING_SUBMIT) order to ``start`` the real way."""
    if start in ("submitted", "partial", "filled"):
        assert await ledger.record_submit(COID, Accepted("v-0")) is Transition.APPLIED
    if start == "unknown":
        assert await ledger.record_submit(COID, Unknown("timeout")) is Transition.APPLIED
    if start == "partial":
        assert (await ledger.apply_fill(fill("f-early", 4))).value == "applied"
    if start == "filled":
        assert (await ledger.apply_fill(fill("f-all", ORDER_LOTS))).value == "applied"
    if start == "canceled":
        assert await ledger.mark_canceled(COID, "operator") is Transition.APPLIED


@dataclass(frozen=True)
class Case:
    name: str
    start: str
    fact: SubmitResult | VenueOrderStatus
    state: OrderState
    filled: int
    """Lots filled on the order afterwards."""
    reserved: int
    """Lots still reserved for it (the account's BTC-USD:buy reservation)."""
    position: int
    outcome: Transition | dict[str, Any] = field(default_factory=dict)
    """record_submit's Transition, or the Settlement fields expected of settle."""


CASES = [
    # the answer to a submit
    Case("accepted", "pending", Accepted("v-1"), OrderState.SUBMITTED, 0, 10, 0,
         Transition.APPLIED),
    Case("accepted after unknown", "unknown", Accepted("v-1"), OrderState.SUBMITTED, 0, 10, 0,
         Transition.APPLIED),
    Case("accepted after a fill", "partial", Accepted("v-1"), OrderState.PARTIALLY_FILLED,
         4, 6, 4, Transition.APPLIED),
    Case("rejected", "pending", Rejected("insufficient balance"), OrderState.REJECTED, 0, 0, 0,
         Transition.APPLIED),
    Case("unknown", "pending", Unknown("read timeout"), OrderState.UNKNOWN, 0, 10, 0,
         Transition.APPLIED),
    Case("unknown after a fill", "partial", Unknown("read timeout"),
         OrderState.PARTIALLY_FILLED, 4, 6, 4, Transition.APPLIED),
    Case("accepted when canceled", "canceled", Accepted("v-1"), OrderState.CANCELED, 0, 0, 0,
         Transition.REFUSED_TERMINAL),
    Case("rejected when filled", "filled", Rejected("late"), OrderState.FILLED, 10, 0, 10,
         Transition.REFUSED_TERMINAL),
    # the answer to a lookup
    Case("open", "pending", status(VenueOrderState.OPEN), OrderState.SUBMITTED, 0, 10, 0,
         {"to_state": OrderState.SUBMITTED, "from_state": OrderState.PENDING_SUBMIT}),
    Case("open after unknown", "unknown", status(VenueOrderState.OPEN), OrderState.SUBMITTED,
         0, 10, 0, {"to_state": OrderState.SUBMITTED}),
    Case("open when submitted", "submitted", status(VenueOrderState.OPEN),
         OrderState.SUBMITTED, 0, 10, 0, {"to_state": None}),
    Case("open with a fill", "submitted", status(VenueOrderState.OPEN, fill("f1", 4)),
         OrderState.PARTIALLY_FILLED, 4, 6, 4, {"fills_applied": 1, "to_state": None}),
    Case("open with a fill when pending", "pending",
         status(VenueOrderState.OPEN, fill("f1", 4)), OrderState.PARTIALLY_FILLED, 4, 6, 4,
         {"fills_applied": 1, "to_state": None}),
    Case("filled", "submitted", status(VenueOrderState.FILLED, fill("f1", 10)),
         OrderState.FILLED, 10, 0, 10, {"fills_applied": 1, "to_state": None}),
    Case("filled, first fill seen before", "partial",
         status(VenueOrderState.FILLED, fill("f-early", 4), fill("f-rest", 6)),
         OrderState.FILLED, 10, 0, 10, {"fills_applied": 1}),
    Case("filled without its fills", "submitted", status(VenueOrderState.FILLED),
         OrderState.SUBMITTED, 0, 10, 0, {"problem": "venue says filled but the ledger"}),
    Case("canceled", "submitted", status(VenueOrderState.CANCELED), OrderState.CANCELED,
         0, 0, 0, {"to_state": OrderState.CANCELED}),
    Case("canceled after a fill", "submitted",
         status(VenueOrderState.CANCELED, fill("f1", 4)), OrderState.CANCELED, 4, 0, 4,
         {"fills_applied": 1, "to_state": OrderState.CANCELED,
          "from_state": OrderState.PARTIALLY_FILLED}),
    Case("rejected by lookup", "pending", status(VenueOrderState.REJECTED),
         OrderState.REJECTED, 0, 0, 0, {"to_state": OrderState.REJECTED}),
    Case("expired", "unknown", status(VenueOrderState.EXPIRED), OrderState.EXPIRED, 0, 0, 0,
         {"to_state": OrderState.EXPIRED}),
    Case("not found, can still arrive", "pending",
         status(VenueOrderState.NOT_FOUND, arrive=True), OrderState.PENDING_SUBMIT, 0, 10, 0,
         {"held": True, "to_state": None}),
    Case("not found, can no longer arrive", "pending", status(VenueOrderState.NOT_FOUND),
         OrderState.EXPIRED, 0, 0, 0, {"held": False, "to_state": OrderState.EXPIRED}),
    Case("not found after unknown", "unknown", status(VenueOrderState.NOT_FOUND),
         OrderState.EXPIRED, 0, 0, 0, {"to_state": OrderState.EXPIRED}),
    Case("canceled when filled", "filled", status(VenueOrderState.CANCELED, fill("f-all", 10)),
         OrderState.FILLED, 10, 0, 10, {"fills_applied": 0, "to_state": None}),
    Case("open when canceled", "canceled", status(VenueOrderState.OPEN), OrderState.CANCELED,
         0, 0, 0, {"to_state": None}),
    Case("canceled with an over-fill", "submitted",
         status(VenueOrderState.CANCELED, fill("f-big", 12)), OrderState.SUBMITTED, 0, 10, 0,
         {"fills_applied": 0, "problem": "fill f-big refused", "to_state": None}),
    Case("canceled with another order's fill", "submitted",
         status(VenueOrderState.CANCELED, fill("f-x", 4, coid="c-other")),
         OrderState.SUBMITTED, 0, 10, 0, {"problem": "belongs to order 'c-other'"}),
    Case("an answer about another order", "submitted",
         status(VenueOrderState.CANCELED, coid="c-other"), OrderState.SUBMITTED, 0, 10, 0,
         {"problem": "venue answered for order 'c-other'"}),
]


async def reserved_and_position(r: aioredis.Redis, keys: AccountKeys) -> tuple[int, int]:
    res = await r.hget(keys.reservations, f"{SYMBOL}:buy")
    pos = await r.hget(keys.positions, f"{SYMBOL}:qty")
    return int(res or 0), int(pos or 0)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_venue_fact_when_recorded_then_table_state_fills_and_reservation(
    redis_client: aioredis.Redis, case: Case
) -> None:
    # Arrange: a real admission (10 lots reserved), brought to the case's start state
    keys = account_keys("table")
    await seed(redis_client, keys, risk())
    ledger = Ledger(redis_client, keys, risk())
    await admit(redis_client, keys)
    await bring_to(ledger, case.start)
    # Act
    outcome: Transition | Settlement
    if isinstance(case.fact, VenueOrderStatus):
        outcome = await ledger.settle(COID, case.fact, source="test")
    else:
        outcome = await ledger.record_submit(COID, case.fact)
    # Assert
    rec = await ledger.order(COID)
    assert rec is not None
    assert rec.state is case.state, (rec.state, outcome)
    assert rec.filled_qty == case.filled * LOT
    assert rec.open_qty == case.reserved * LOT
    assert await reserved_and_position(redis_client, keys) == (case.reserved, case.position)
    if isinstance(outcome, Transition):
        assert outcome is case.outcome
        if isinstance(case.fact, Accepted) and outcome is Transition.APPLIED:
            assert rec.venue_order_id == case.fact.venue_order_id
        return
    assert isinstance(case.outcome, dict)
    expected = {"fills_applied": 0, "held": False, "problem": "", **case.outcome}
    for name, want in expected.items():
        got = getattr(outcome, name)
        if name == "problem":
            assert (want in got) if want else got == "", (got, want)
        else:
            assert got == want, (name, outcome)
    if outcome.to_state is not None:
        assert rec.reason == f"test: venue says {case.fact.state.value} (d)"


async def test_settle_when_same_status_twice_then_fills_once_and_no_second_transition(
    redis_client: aioredis.Redis,
) -> None:
    keys = account_keys("twice")
    await seed(redis_client, keys, risk())
    ledger = Ledger(redis_client, keys, risk())
    await admit(redis_client, keys)
    fact = status(VenueOrderState.CANCELED, fill("f1", 4))
    first = await ledger.settle(COID, fact, source="test")
    again = await ledger.settle(COID, fact, source="test")
    assert (first.fills_applied, first.to_state) == (1, OrderState.CANCELED)
    assert (again.fills_applied, again.to_state, again.problem) == (0, None, "")
    assert await reserved_and_position(redis_client, keys) == (0, 4)


# -- 3. the Context and reconciliation record a venue fact identically ------------------


class ScriptedVenue(FakeVenue):
    """Answers a submit with ``answer`` and a lookup with ``status`` (a venue fact fixed by
    the test: what is under test is what the ledger makes of it)."""

    def __init__(self, answer: SubmitResult | None = None) -> None:
        super().__init__()
        self.answer = answer or Accepted("v-0")

    async def submit(self, order: Order) -> SubmitResult:
        return self.answer


@dataclass
class Term:
    token: int = TOKEN
    holder_id: str = HOLDER

    def valid(self) -> bool:
        return True


def context(r: aioredis.Redis, keys: AccountKeys, venue: ScriptedVenue) -> Context:
    return Context("s1", gate=OrderGate(r, keys, risk()), ledger=Ledger(r, keys, risk()),
                   venue=venue, leadership=Term(), risk=risk(), marks=MarkBook())


async def settled_state(r: aioredis.Redis, keys: AccountKeys, *, drop: tuple[str, ...]
                        ) -> dict[str, Any]:
    """The account's ledger state after a fact: the order record (without its times and
    ``drop``), the open set, reservations, positions, fills, aggregates, the days."""
    order = await r.hgetall(keys.order(COID))
    for f in ("created_ms", "updated_ms", "deadline_ms", *drop):
        order.pop(f, None)
    days = sorted(await r.keys(keys.day("*").replace("{", "[{]")))
    return {
        "order": order,
        "open": sorted(await r.smembers(keys.open_orders)),
        "reservations": await r.hgetall(keys.reservations),
        "positions": await r.hgetall(keys.positions),
        "fills": await r.hgetall(keys.fills),
        "aggregates": await r.hgetall(keys.aggregates),
        "days": [await r.hgetall(d) for d in days],
    }


async def by_reconcile(r: aioredis.Redis, keys: AccountKeys, fact: VenueOrderStatus,
                       *, submitted: bool) -> ReconcileReport:
    ledger = Ledger(r, keys, risk())
    await admit(r, keys)
    if submitted:
        await ledger.record_submit(COID, Accepted("v-0"))
    venue = ScriptedVenue()
    venue.status[COID] = fact
    rec = await ledger.order(COID)
    assert rec is not None
    report = ReconcileReport()
    await reconcile_order(ledger, venue, rec, report)
    return report


SUBMIT_PAIRS = [
    ("accepted ~ open", Accepted("v-9"), status(VenueOrderState.OPEN), ("venue_order_id",)),
    ("rejected ~ rejected", Rejected("insufficient balance"),
     VenueOrderStatus(COID, VenueOrderState.REJECTED, detail="insufficient balance"), ()),
]


@pytest.mark.parametrize(("name", "answer", "fact", "drop"), SUBMIT_PAIRS,
                         ids=[p[0] for p in SUBMIT_PAIRS])
async def test_submit_answer_when_context_or_reconcile_records_it_then_same_ledger_state(
    redis_client: aioredis.Redis, name: str, answer: SubmitResult, fact: VenueOrderStatus,
    drop: tuple[str, ...],
) -> None:
    # Arrange: two accounts with the same limits and the same order
    a, b = account_keys("via-context"), account_keys("via-reconcile")
    for k in (a, b):
        await seed(redis_client, k, risk())
    # Act: the Context sends the order and records the venue's answer; reconciliation
    # looks the same order up and records the venue's record of the same outcome
    decision = await context(redis_client, a, ScriptedVenue(answer)).submit(
        buy(str(ORDER_LOTS * LOT), intent_id=INTENT_ID)
    )
    report = await by_reconcile(redis_client, b, fact, submitted=False)
    # Assert (the reason says who recorded it; a lookup carries no venue order id)
    assert isinstance(decision, Admitted) and report.ok, report
    drop = ("reason", *drop)
    assert await settled_state(redis_client, a, drop=drop) == await settled_state(
        redis_client, b, drop=drop)


CANCEL_FACTS = [
    ("canceled", status(VenueOrderState.CANCELED)),
    ("canceled after a fill", status(VenueOrderState.CANCELED, fill("f1", 4))),
    ("expired after a fill", status(VenueOrderState.EXPIRED, fill("f1", 3))),
    ("rejected", status(VenueOrderState.REJECTED)),
    ("filled before the cancel", status(VenueOrderState.FILLED, fill("f1", 4), fill("f2", 6))),
    ("open with a fill", status(VenueOrderState.OPEN, fill("f1", 2))),
    ("not found, can no longer arrive", status(VenueOrderState.NOT_FOUND)),
    ("over-fill", status(VenueOrderState.CANCELED, fill("f-big", 12))),
]


@pytest.mark.parametrize(("name", "fact"), CANCEL_FACTS, ids=[c[0] for c in CANCEL_FACTS])
async def test_lookup_when_context_cancel_or_reconcile_records_it_then_same_ledger_state(
    redis_client: aioredis.Redis, name: str, fact: VenueOrderStatus
) -> None:
    # Arrange: the same submitted order on two accounts
    a, b = account_keys("via-cancel"), account_keys("via-reconcile")
    for k in (a, b):
        await seed(redis_client, k, risk())
    venue = ScriptedVenue(Accepted("v-0"))
    ctx = context(redis_client, a, venue)
    assert isinstance(await ctx.submit(buy(str(ORDER_LOTS * LOT), intent_id=INTENT_ID)),
                      Admitted)
    venue.status[COID] = fact
    # Act: a strategy cancels (the venue confirms, then its lookup says ``fact``) on one;
    # reconciliation finds ``fact`` on the other
    confirmed = await ctx.cancel(COID)
    await by_reconcile(redis_client, b, fact, submitted=True)
    # Assert: the same ledger state; only the recorded reason names its source
    assert confirmed is True
    assert await settled_state(redis_client, a, drop=("reason",)) == await settled_state(
        redis_client, b, drop=("reason",))
    via_cancel = await Ledger(redis_client, a, risk()).order(COID)
    via_reconcile = await Ledger(redis_client, b, risk()).order(COID)
    assert via_cancel is not None and via_reconcile is not None
    if via_cancel.state is not OrderState.SUBMITTED and via_cancel.state.terminal and (
        fact.state is not VenueOrderState.FILLED
    ):
        assert via_cancel.reason == f"canceled by s1: venue says {fact.state.value} (d)"
        assert via_reconcile.reason == f"reconcile: venue says {fact.state.value} (d)"


async def test_cancel_order_when_kill_switch_cancels_then_settled_through_the_same_table(
    redis_client: aioredis.Redis,
) -> None:
    """The runtime's kill-switch path calls ``cancel_order`` directly (no Context)."""
    keys = account_keys("kill")
    await seed(redis_client, keys, risk())
    ledger = Ledger(redis_client, keys, risk())
    await admit(redis_client, keys)
    await ledger.record_submit(COID, Accepted("v-0"))
    venue = ScriptedVenue()
    venue.status[COID] = status(VenueOrderState.EXPIRED, fill("f1", 3))
    assert await cancel_order(ledger, venue, COID, reason="kill switch: test",
                              log=logging.getLogger("test")) is True
    rec = await ledger.order(COID)
    assert rec is not None and rec.state is OrderState.EXPIRED  # the venue's word
    assert rec.reason == "kill switch: test: venue says expired (d)"
    assert await reserved_and_position(redis_client, keys) == (0, 3)
