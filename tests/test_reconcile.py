"""Reconciliation and the sweep against a real redis-server and an in-test fake venue."""

from __future__ import annotations

from decimal import Decimal

import pytest
import redis.asyncio as aioredis

from guardrails.gate import OrderGate
from guardrails.keys import AccountKeys
from guardrails.ledger import Ledger, LedgerError
from guardrails.model import Admitted, Fill, OrderState, Side
from guardrails.reconcile import reconcile, sweep
from guardrails.venues.base import VenueOrderState, VenueOrderStatus
from tests.fakevenue import FakeVenue
from tests.gatekit import HOLDER, SYMBOL, TOKEN, account_keys, buy, risk, seed


@pytest.fixture
async def acct(redis_client: aioredis.Redis) -> AccountKeys:
    keys = account_keys()
    await seed(redis_client, keys, risk())
    return keys


async def place(r: aioredis.Redis, keys: AccountKeys, qty: str, iid: str) -> str:
    d = await OrderGate(r, keys, risk()).admit(
        buy(qty), intent_id=iid, token=TOKEN, holder_id=HOLDER
    )
    assert isinstance(d, Admitted)
    return d.client_order_id


def status(
    coid: str, state: VenueOrderState, *fills: Fill, arrive: bool = False
) -> VenueOrderStatus:
    return VenueOrderStatus(coid, state, fills=fills, can_still_arrive=arrive)


async def test_reconcile_when_venue_knows_outcomes_then_ledger_finalised(
    redis_client: aioredis.Redis, acct: AccountKeys
) -> None:
    # Arrange: four orders the previous holder left non-terminal
    ledger = Ledger(redis_client, acct, risk())
    open_, filled, gone, inflight = [
        await place(redis_client, acct, "0.0100", f"o{i}") for i in range(4)
    ]
    for c in (open_, filled, gone, inflight):
        await ledger.mark_unknown(c, "submit timed out")
    venue = FakeVenue()
    venue.status[open_] = status(open_, VenueOrderState.OPEN)
    f = Fill("vf1", filled, SYMBOL, Side.BUY, Decimal("0.0100"), Decimal("59990"), ts_ms=5)
    venue.status[filled] = status(filled, VenueOrderState.FILLED, f)
    venue.status[gone] = status(gone, VenueOrderState.NOT_FOUND, arrive=False)
    venue.status[inflight] = status(inflight, VenueOrderState.NOT_FOUND, arrive=True)
    # Act
    report = await reconcile(ledger, venue, now_ms=0)
    # Assert
    assert report.ok and report.checked == 4 and report.fills_applied == 1
    records = {c: await ledger.order(c) for c in (open_, filled, gone, inflight)}
    states = {c: r.state for c, r in records.items() if r is not None}
    assert states == {
        open_: OrderState.SUBMITTED, filled: OrderState.FILLED,
        gone: OrderState.EXPIRED, inflight: OrderState.UNKNOWN,
    }
    assert report.held == [inflight]
    res = await redis_client.hgetall(acct.reservations)
    assert res[f"{SYMBOL}:buy"] == "200"  # open_ and inflight keep theirs
    assert (await ledger.positions())[SYMBOL].qty == Decimal("0.0100")
    # the deadline of the order was passed to the venue
    assert all(d is not None for _, d in venue.lookups)


async def test_reconcile_when_venue_unreachable_then_not_ok_and_reservation_kept(
    redis_client: aioredis.Redis, acct: AccountKeys
) -> None:
    ledger = Ledger(redis_client, acct, risk())
    coid = await place(redis_client, acct, "0.0100", "down")
    venue = FakeVenue()
    venue.broken.add(coid)
    report = await reconcile(ledger, venue, now_ms=0)
    assert not report.ok and report.failures[0][0] == coid
    assert (await ledger.order(coid)).state is OrderState.PENDING_SUBMIT  # type: ignore[union-attr]
    assert (await redis_client.hgetall(acct.reservations))[f"{SYMBOL}:buy"] == "100"


async def test_sweep_when_orders_stranded_then_reported_and_fix_repairs(
    redis_client: aioredis.Redis, acct: AccountKeys
) -> None:
    # Arrange: one order the venue canceled long ago, plus a corrupted reservation total
    ledger = Ledger(redis_client, acct, risk())
    stranded = await place(redis_client, acct, "0.0100", "s1")
    live = await place(redis_client, acct, "0.0200", "s2")
    await ledger.mark_submitted(stranded, "v1")
    await ledger.mark_submitted(live, "v2")
    venue = FakeVenue()
    venue.status[stranded] = status(stranded, VenueOrderState.CANCELED)
    venue.status[live] = status(live, VenueOrderState.OPEN)
    await redis_client.hincrby(acct.reservations, f"{SYMBOL}:buy", 999)
    # Act: report only
    report = await sweep(ledger, venue, fix=False)
    # Assert: found, nothing changed
    assert report.stranded == [stranded] and not report.fixed
    assert report.reservation_mismatches == [f"{SYMBOL}:buy: stored 1299, expected 300"]
    assert (await ledger.order(stranded)).state is OrderState.SUBMITTED  # type: ignore[union-attr]
    # Act: fix
    fixed = await sweep(ledger, venue, fix=True)
    assert fixed.fixed
    assert (await ledger.order(stranded)).state is OrderState.CANCELED  # type: ignore[union-attr]
    res = await redis_client.hgetall(acct.reservations)
    assert res[f"{SYMBOL}:buy"] == "200"
    assert res[f"{SYMBOL}:loss"] == str(200 * 300_000)
    assert (await sweep(ledger, venue, fix=False)).clean


async def test_sweep_when_open_index_disagrees_then_fix_rebuilds_index(
    redis_client: aioredis.Redis, acct: AccountKeys
) -> None:
    ledger = Ledger(redis_client, acct, risk())
    a = await place(redis_client, acct, "0.0100", "x1")
    await redis_client.srem(acct.open_orders, a)
    await redis_client.sadd(acct.open_orders, "c-ghost")
    venue = FakeVenue()
    venue.status[a] = status(a, VenueOrderState.OPEN)
    report = await sweep(ledger, venue, fix=False)
    assert report.missing_from_index == [a] and report.dangling_in_index == ["c-ghost"]
    await sweep(ledger, venue, fix=True)
    assert await redis_client.smembers(acct.open_orders) == {a}
    assert (await ledger.order(a)).state is OrderState.SUBMITTED  # type: ignore[union-attr]


async def test_reconcile_when_venue_reports_unusable_fill_then_not_ok_and_order_kept(
    redis_client: aioredis.Redis, acct: AccountKeys
) -> None:
    ledger = Ledger(redis_client, acct, risk())
    coid = await place(redis_client, acct, "0.0100", "bad")
    venue = FakeVenue()
    odd = Fill("odd", coid, SYMBOL, Side.BUY, Decimal("0.00015"), Decimal("60000"), ts_ms=1)
    venue.status[coid] = status(coid, VenueOrderState.FILLED, odd)
    report = await reconcile(ledger, venue, now_ms=0)
    assert not report.ok and "not applied" in report.failures[0][1]
    assert (await ledger.order(coid)).state is OrderState.PENDING_SUBMIT  # type: ignore[union-attr]


async def test_rebuild_when_order_record_malformed_then_ledger_error_and_nothing_written(
    redis_client: aioredis.Redis, acct: AccountKeys
) -> None:
    # Arrange: a reservation total to repair, but one order record has a malformed field
    from guardrails.reconcile import _rebuild

    ledger = Ledger(redis_client, acct, risk())
    await place(redis_client, acct, "0.0100", "r1")
    b = await place(redis_client, acct, "0.0100", "r2")
    await redis_client.hincrby(acct.reservations, f"{SYMBOL}:buy", 7)
    await redis_client.hset(acct.order(b), "wl", "1.5")
    before = (await redis_client.hgetall(acct.reservations),
              await redis_client.smembers(acct.open_orders), await redis_client.xlen(acct.journal))
    # Act + Assert: the rebuild script refuses before its first write
    with pytest.raises(LedgerError, match="wl"):
        await _rebuild(ledger)
    after = (await redis_client.hgetall(acct.reservations),
             await redis_client.smembers(acct.open_orders), await redis_client.xlen(acct.journal))
    assert after == before


@pytest.mark.parametrize("venue_state", [VenueOrderState.CANCELED, VenueOrderState.EXPIRED,
                                         VenueOrderState.OPEN])
@pytest.mark.parametrize("bad", ["over-fill", "wrong side", "other order"])
async def test_reconcile_when_fill_not_applied_then_order_not_finalised_and_reported(
    redis_client: aioredis.Redis, acct: AccountKeys, venue_state: VenueOrderState, bad: str
) -> None:
    # Arrange: the venue ended the order and reports a fill the ledger will not take
    ledger = Ledger(redis_client, acct, risk())
    coid = await place(redis_client, acct, "0.0100", "nf")
    await ledger.mark_unknown(coid, "submit timed out")
    qty, side, target = Decimal("0.0100"), Side.BUY, coid
    if bad == "over-fill":
        qty = Decimal("0.0200")
    elif bad == "wrong side":
        side = Side.SELL
    else:
        target = "c-not-in-the-ledger"
    f = Fill("nf1", target, SYMBOL, side, qty, Decimal("60000"), ts_ms=1_780_000_000_000)
    venue = FakeVenue()
    venue.status[coid] = status(coid, venue_state, f)
    reserved = await redis_client.hgetall(acct.reservations)
    # Act
    report = await reconcile(ledger, venue, now_ms=0)
    # Assert: reported (fail closed), the order and its reservation untouched
    assert not report.ok and report.failures[0][0] == coid and "nf1" in report.failures[0][1]
    assert report.transitions == []
    rec = await ledger.order(coid)
    assert rec is not None and rec.state is OrderState.UNKNOWN
    assert await redis_client.hgetall(acct.reservations) == reserved
    assert await redis_client.sismember(acct.open_orders, coid)


async def test_reconcile_when_transition_hits_bad_state_then_reported_not_raised(
    redis_client: aioredis.Redis, acct: AccountKeys
) -> None:
    ledger = Ledger(redis_client, acct, risk())
    coid = await place(redis_client, acct, "0.0100", "bs")
    await redis_client.hset(acct.reservations, f"{SYMBOL}:loss", "garbage")
    venue = FakeVenue()
    venue.status[coid] = status(coid, VenueOrderState.CANCELED)
    report = await reconcile(ledger, venue, now_ms=0)
    assert not report.ok and "not an integer" in report.failures[0][1]
    assert (await ledger.order(coid)).state is OrderState.PENDING_SUBMIT  # type: ignore[union-attr]
