"""The ledger scripts against a real redis-server: terminal is terminal, fills once,
exact positions / cost / realized PnL, reservations released, day rollover."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
import redis.asyncio as aioredis

from guardrails.gate import OrderGate
from guardrails.keys import AccountKeys
from guardrails.ledger import FillOutcome, Ledger, LedgerError, Transition
from guardrails.model import Admitted, Denied, DenyReason, Fill, Intent, OrderState, Side
from guardrails.tradingday import TradingDay, trading_day_of, wall_clock_ms
from tests.gatekit import (
    HOLDER,
    SYMBOL,
    TOKEN,
    account_keys,
    buy,
    ledger_state,
    risk,
    seed,
    sell,
)


@pytest.fixture
async def acct(redis_client: aioredis.Redis) -> AccountKeys:
    keys = account_keys()
    await seed(redis_client, keys, risk())
    return keys


async def place(r: aioredis.Redis, keys: AccountKeys, intent: Intent, iid: str,
                clock: object = None) -> str:
    g = OrderGate(r, keys, risk(), clock_ms=clock)  # type: ignore[arg-type]
    d = await g.admit(intent, intent_id=iid, token=TOKEN, holder_id=HOLDER)
    assert isinstance(d, Admitted), d
    return d.client_order_id


def fill(fid: str, coid: str, side: Side, qty: str, price: str, fee: str = "0",
         ts_ms: int | None = None) -> Fill:
    """A fill executed at ``ts_ms`` (default: now, so it counts toward today's budget)."""
    ts = wall_clock_ms() if ts_ms is None else ts_ms
    return Fill(fid, coid, SYMBOL, side, Decimal(qty), Decimal(price), ts_ms=ts,
                fee=Decimal(fee))


@pytest.mark.parametrize("target", [OrderState.SUBMITTED, OrderState.PENDING_SUBMIT,
                                    OrderState.UNKNOWN, OrderState.CANCELED])
async def test_transition_when_order_filled_then_refused_and_journaled(
    redis_client: aioredis.Redis, acct: AccountKeys, target: OrderState
) -> None:
    # Arrange
    ledger = Ledger(redis_client, acct, risk())
    coid = await place(redis_client, acct, buy("0.0100"), "f1")
    await ledger.mark_submitted(coid, "v1")
    applied = await ledger.apply_fill(fill("x1", coid, Side.BUY, "0.0100", "60000"))
    assert applied is FillOutcome.APPLIED
    before = await redis_client.hgetall(acct.order(coid))
    # Act
    result = await ledger.transition(coid, target, "requeue by an error handler")
    # Assert
    assert result is Transition.REFUSED_TERMINAL
    assert await redis_client.hgetall(acct.order(coid)) == before
    assert before["state"] == "FILLED"
    last = (await redis_client.xrevrange(acct.journal, count=1))[0][1]
    assert last["ev"] == "refused_terminal" and last["to"] == target.value


async def test_transition_when_target_is_pending_submit_on_live_order_then_refused_invalid(
    redis_client: aioredis.Redis, acct: AccountKeys
) -> None:
    ledger = Ledger(redis_client, acct, risk())
    coid = await place(redis_client, acct, buy("0.0100"), "p1")
    await ledger.mark_submitted(coid, "v1")
    assert await ledger.transition(coid, OrderState.PENDING_SUBMIT) is Transition.REFUSED_INVALID
    assert await ledger.transition(coid, OrderState.FILLED) is Transition.REFUSED_INVALID
    assert (await ledger.order(coid)).state is OrderState.SUBMITTED  # type: ignore[union-attr]


async def test_transition_when_order_unknown_then_unknown_order(
    redis_client: aioredis.Redis, acct: AccountKeys
) -> None:
    ledger = Ledger(redis_client, acct, risk())
    assert await ledger.mark_canceled("nope", "x") is Transition.UNKNOWN_ORDER


async def test_apply_fill_when_same_fill_id_twice_then_applied_once(
    redis_client: aioredis.Redis, acct: AccountKeys
) -> None:
    ledger = Ledger(redis_client, acct, risk())
    coid = await place(redis_client, acct, buy("0.0200"), "d1")
    f = fill("same", coid, Side.BUY, "0.0100", "60000")
    assert await ledger.apply_fill(f) is FillOutcome.APPLIED
    snap = await redis_client.hgetall(acct.positions)
    assert await ledger.apply_fill(f) is FillOutcome.DUPLICATE
    assert await redis_client.hgetall(acct.positions) == snap
    rec = await ledger.order(coid)
    assert rec is not None and rec.state is OrderState.PARTIALLY_FILLED
    assert rec.filled_qty == Decimal("0.0100") and rec.open_qty == Decimal("0.0100")


async def test_apply_fill_when_partial_then_cancel_then_reservation_fully_released(
    redis_client: aioredis.Redis, acct: AccountKeys
) -> None:
    ledger = Ledger(redis_client, acct, risk())
    coid = await place(redis_client, acct, buy("0.0300"), "pc")
    await ledger.apply_fill(fill("a", coid, Side.BUY, "0.0100", "60000"))
    res = await redis_client.hgetall(acct.reservations)
    assert res[f"{SYMBOL}:buy"] == "200" and res[f"{SYMBOL}:loss"] == str(200 * 300_000)
    assert await ledger.mark_canceled(coid, "user") is Transition.APPLIED
    res = await redis_client.hgetall(acct.reservations)
    assert res[f"{SYMBOL}:buy"] == "0" and res[f"{SYMBOL}:loss"] == "0"
    assert not await redis_client.sismember(acct.open_orders, coid)
    assert (await ledger.positions())[SYMBOL].qty == Decimal("0.0100")


async def test_mark_unknown_when_submit_ambiguous_then_reservation_kept(
    redis_client: aioredis.Redis, acct: AccountKeys
) -> None:
    ledger = Ledger(redis_client, acct, risk())
    coid = await place(redis_client, acct, buy("0.0100"), "u1")
    assert await ledger.mark_unknown(coid, "timeout") is Transition.APPLIED
    assert (await redis_client.hgetall(acct.reservations))[f"{SYMBOL}:buy"] == "100"
    assert await redis_client.sismember(acct.open_orders, coid)


async def test_apply_fill_when_round_trip_then_exact_cost_and_realized_pnl(
    redis_client: aioredis.Redis, acct: AccountKeys
) -> None:
    ledger = Ledger(redis_client, acct, risk())
    b1 = await place(redis_client, acct, buy("0.0300", "60000"), "b1")
    await ledger.apply_fill(fill("b1", b1, Side.BUY, "0.0300", "60000.01", fee="0.000001"))
    s1 = await place(redis_client, acct, sell("0.0400", "61000"), "s1")
    # closes 0.03 (realized) and opens a 0.01 short
    await ledger.apply_fill(fill("s1", s1, Side.SELL, "0.0400", "61000.00", fee="0.5"))
    view = (await ledger.positions())[SYMBOL]
    assert view.qty == Decimal("-0.0100")
    assert view.cost_basis == Decimal("-610.00")
    assert view.avg_cost == Decimal("61000")
    # 0.03 x (61000 - 60000.01) = 29.9997, minus fees 0.000001 + 0.5
    assert view.realized_pnl == Decimal("29.4996990") or view.realized_pnl == Decimal("29.499699")
    budget = await ledger.budget()
    assert budget.realized_pnl == view.realized_pnl and budget.realized_loss == 0


async def test_apply_fill_when_price_finer_than_money_unit_then_rounded_against_account(
    redis_client: aioredis.Redis, acct: AccountKeys
) -> None:
    ledger = Ledger(redis_client, acct, risk())
    # a venue fill at a price finer than the tick: 0.0001 x 60000.005 = 6.0000005
    f_buy = fill("r", "c", Side.BUY, "0.0001", "60000.005", fee="0.0000001")
    f_sell = fill("r", "c", Side.SELL, "0.0001", "60000.005")
    assert ledger.fill_amounts(f_buy)[1:3] == (6_000_001, 1)  # cost and fee rounded up
    assert ledger.fill_amounts(f_sell)[1] == 6_000_000  # proceeds rounded down


@pytest.mark.parametrize("end", ["mark_canceled", "mark_rejected", "mark_expired", "fill"])
async def test_apply_fill_when_order_already_terminal_then_refused_and_nothing_changed(
    redis_client: aioredis.Redis, acct: AccountKeys, end: str
) -> None:
    # Arrange: an order the ledger already ended (the venue said it can no longer execute)
    ledger = Ledger(redis_client, acct, risk())
    coid = await place(redis_client, acct, buy("0.0100"), "late")
    if end == "fill":
        await ledger.apply_fill(fill("full", coid, Side.BUY, "0.0100", "60000"))
    else:
        await getattr(ledger, end)(coid, "venue")
    before = await ledger_state(redis_client, acct, coid)
    # Act: a new fill for it
    outcome = await ledger.apply_fill(fill("lf", coid, Side.BUY, "0.0001", "60000"))
    # Assert: refused, journaled, nothing changed (terminal is terminal)
    assert outcome is FillOutcome.REFUSED
    assert await ledger_state(redis_client, acct, coid) == before
    entry = await last_journal(redis_client, acct)
    assert entry["ev"] == "fill_refused" and entry["fill_id"] == "lf"


async def test_apply_fill_when_side_differs_from_order_then_refused(
    redis_client: aioredis.Redis, acct: AccountKeys
) -> None:
    ledger = Ledger(redis_client, acct, risk())
    coid = await place(redis_client, acct, buy("0.0100"), "mm")
    refused = await ledger.apply_fill(fill("m", coid, Side.SELL, "0.0100", "60000"))
    assert refused is FillOutcome.REFUSED
    assert await ledger.apply_fill(fill("m2", "nope", Side.BUY, "0.0100", "60000")) is (
        FillOutcome.UNKNOWN_ORDER)
    assert await redis_client.hlen(acct.fills) == 0


def _ms(tz: str, y: int, mo: int, d: int, h: int, mi: int) -> int:
    return int(datetime(y, mo, d, h, mi, tzinfo=ZoneInfo(tz)).timestamp()) * 1000


def test_trading_day_when_clock_crosses_local_midnight_then_day_rolls_over() -> None:
    tz = "America/New_York"
    now = [_ms(tz, 2026, 3, 7, 23, 59)]
    day = TradingDay(tz, lambda: now[0])
    assert day.today() == "2026-03-07"
    now[0] += 60_000
    assert day.today() == "2026-03-08"
    # 2026-03-08 is 03:59 UTC on the 8th in New York but still the 7th's evening in UTC+... :
    assert trading_day_of(_ms(tz, 2026, 3, 7, 21, 0), ZoneInfo(tz)) == "2026-03-07"
    assert trading_day_of(_ms(tz, 2026, 3, 7, 21, 0), ZoneInfo("UTC")) == "2026-03-08"


async def test_daily_loss_when_day_rolls_over_in_new_york_then_budget_resets_but_restart_does_not(
    redis_client: aioredis.Redis, acct: AccountKeys
) -> None:
    tz = "America/New_York"
    now = [_ms(tz, 2026, 3, 7, 23, 0)]
    clock = lambda: now[0]  # noqa: E731
    cfg = risk()
    ledger = Ledger(redis_client, acct, cfg, clock_ms=clock)
    # Arrange: realize a 200 loss on 2026-03-07 (New York)
    b = await place(redis_client, acct, buy("0.0400", "60000"), "L1", clock)
    await ledger.apply_fill(fill("L1", b, Side.BUY, "0.0400", "60000", ts_ms=now[0]))
    await ledger.update_marks({SYMBOL: Decimal("55000")})
    s = await place(redis_client, acct, sell("0.0400", "55000"), "L2", clock)
    await ledger.apply_fill(fill("L2", s, Side.SELL, "0.0400", "55000", ts_ms=now[0]))
    assert (await ledger.budget()).realized_loss == Decimal("200")
    big = buy("0.0100", "55000")  # worst case 0.01 x 2750 = 27.5 -> 227.5 ok; 0.02 -> 255 no
    bigger = buy("0.0200", "55000")
    # Act + Assert: denied today; a restart (new objects) still on the same day still denies
    g1 = OrderGate(redis_client, acct, cfg, clock_ms=clock)
    d1 = await g1.admit(bigger, intent_id="x1", token=TOKEN, holder_id=HOLDER)
    assert isinstance(d1, Denied) and d1.reason is DenyReason.DAILY_LOSS
    g2 = OrderGate(redis_client, acct, cfg, clock_ms=clock)
    d2 = await g2.admit(bigger, intent_id="x2", token=TOKEN, holder_id=HOLDER)
    assert isinstance(d2, Denied) and d2.reason is DenyReason.DAILY_LOSS
    assert (await Ledger(redis_client, acct, cfg, clock_ms=clock).budget()).realized_loss == 200
    assert isinstance(await g2.admit(big, intent_id="x3", token=TOKEN, holder_id=HOLDER), Admitted)
    # 23:59 -> 00:01 local: a new trading day, 04:01 UTC (not UTC midnight)
    now[0] = _ms(tz, 2026, 3, 8, 0, 1)
    budget = await Ledger(redis_client, acct, cfg, clock_ms=clock).budget()
    assert budget.trading_day == "2026-03-08" and budget.realized_loss == 0
    d3 = await OrderGate(redis_client, acct, cfg, clock_ms=clock).admit(
        bigger, intent_id="x4", token=TOKEN, holder_id=HOLDER)
    assert isinstance(d3, Admitted)
    assert await redis_client.hget(acct.day("2026-03-07"), "realized_pnl") == "-200000000"


@pytest.mark.parametrize(
    ("qty", "price"),
    [("0.0003", "59999.99"), ("0.0417", "57000.01"), ("0.04", "60000"), ("0.0001", "57000.01")],
)
async def test_apply_fill_when_decimal_amounts_then_round_trip_exactly(
    redis_client: aioredis.Redis, acct: AccountKeys, qty: str, price: str
) -> None:
    cfg = risk(max_order_notional="10000")
    await redis_client.hset(acct.limits, "max_order_notional", "10000000000")
    ledger = Ledger(redis_client, acct, cfg)
    coid = await place(redis_client, acct, buy(qty, price), "rt")
    rec = await ledger.order(coid)
    assert rec is not None and (rec.qty, rec.price) == (Decimal(qty), Decimal(price))
    await ledger.apply_fill(fill("rt", coid, Side.BUY, qty, price))
    view = (await ledger.positions())[SYMBOL]
    assert view.qty == Decimal(qty)
    assert view.cost_basis == Decimal(qty) * Decimal(price)
    assert view.avg_cost == Decimal(price)


def test_sources_when_grepped_then_no_binary_float_in_money_paths() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "guardrails"
    files = ["gate.py", "ledger.py", "limits.py", "reconcile.py", "tradingday.py",
             "lua/gate_admit.lua", "lua/ledger_fill.lua", "lua/ledger_transition.lua",
             "lua/ledger_rebuild.lua", "lua/lib/int.lua", "lua/lib/read.lua", "lua/lib/fence.lua"]
    for name in files:
        text = (root / name).read_text()
        for bad in ("float(", ": float", "-> float", "time.time()", "tostring(lots",
                    "tostring(n)"):
            assert bad not in text, f"{name} contains {bad!r}"


# -- fail closed before the first write (a script is not rolled back on error) --------


async def last_journal(r: aioredis.Redis, keys: AccountKeys) -> dict[str, str]:
    return dict((await r.xrevrange(keys.journal, count=1))[0][1])


async def test_mark_canceled_when_reserved_loss_malformed_then_bad_state_and_retry_releases_once(
    redis_client: aioredis.Redis,
) -> None:
    # Arrange: the reviewer's repro: two orders fill max_position (1000 lots)
    keys = account_keys("partial")
    cfg = risk(max_order_notional="1000000", max_gross_exposure="100000000",
               daily_loss_limit="100000000")
    await seed(redis_client, keys, cfg)
    gate, ledger = OrderGate(redis_client, keys, cfg), Ledger(redis_client, keys, cfg)

    async def adm(iid: str) -> Admitted | Denied:
        return await gate.admit(buy("0.05"), intent_id=iid, token=TOKEN, holder_id=HOLDER)

    a, b = await adm("A"), await adm("B")
    assert isinstance(a, Admitted) and isinstance(b, Admitted)
    good_loss = await redis_client.hget(keys.reservations, f"{SYMBOL}:loss")
    await redis_client.hset(keys.reservations, f"{SYMBOL}:loss", "garbage")
    before = await ledger_state(redis_client, keys, a.client_order_id, b.client_order_id)
    # Act: the caller's record and a reconciliation retry
    for _ in range(2):
        with pytest.raises(LedgerError, match="not an integer"):
            await ledger.mark_canceled(a.client_order_id, "venue says canceled")
        # Assert: nothing written but the journal entry naming the problem
        assert await ledger_state(redis_client, keys, a.client_order_id,
                                  b.client_order_id) == before
        assert (await last_journal(redis_client, keys))["ev"] == "bad_state"
    # Act: the operator repairs the field; the retry releases A exactly once
    await redis_client.hset(keys.reservations, f"{SYMBOL}:loss", str(good_loss))
    assert await ledger.mark_canceled(a.client_order_id, "x") is Transition.APPLIED
    assert (await redis_client.hgetall(keys.reservations))[f"{SYMBOL}:buy"] == "500"
    decisions = [await adm(f"D{i}") for i in range(3)]
    # Assert: exactly one more 0.05 fits under the 1000-lot max
    assert [type(d).__name__ for d in decisions] == ["Admitted", "Denied", "Denied"]
    assert (await redis_client.hgetall(keys.reservations))[f"{SYMBOL}:buy"] == "1000"


def _field(kind: str, field: str, value: str = "1.5") -> tuple[str, str, str]:
    return (kind, field, value)


MALFORMED = [
    _field("positions", f"{SYMBOL}:rpnl"),
    _field("positions", f"{SYMBOL}:qty", "garbage"),
    _field("positions", f"{SYMBOL}:cost", "1e3"),
    _field("reservations", f"{SYMBOL}:buy", "x"),
    _field("reservations", f"{SYMBOL}:loss", " 5"),
    _field("day", "realized_pnl"),
    _field("day", "fees", "nan"),
    _field("day", "fills", "one"),
    _field("order", "filled_lots", "0.5"),
    _field("order", "wl", "-"),
    _field("order", "open_lots", "lots"),
    _field("order", "state", "LIMBO"),
]
WRONG_TYPE = ["open_orders", "journal", "marks", "fills", "day", "positions"]
FILL_TS = 1_780_000_000_000  # 2026-05-28, a fixed execution time


async def test_apply_fill_when_stored_field_malformed_then_bad_state_nothing_written_and_retry_once(
    redis_client: aioredis.Redis, acct: AccountKeys
) -> None:
    ledger = Ledger(redis_client, acct, risk())
    day = ledger.fill_day(fill("x", "c", Side.BUY, "0.0100", "60000", ts_ms=FILL_TS))
    for i, (kind, fld, value) in enumerate(MALFORMED):
        # Arrange: an order, and one stored field the fill would change made malformed
        coid = await place(redis_client, acct, buy("0.0050", tag=str(i)), f"m{i}")
        key = {"positions": acct.positions, "reservations": acct.reservations,
               "day": acct.day(day), "order": acct.order(coid)}[kind]
        good = await redis_client.hget(key, fld)
        await redis_client.hset(key, fld, value)
        before = await ledger_state(redis_client, acct, coid)
        f = fill(f"mf{i}", coid, Side.BUY, "0.0050", "60000", ts_ms=FILL_TS)
        # Act
        with pytest.raises(LedgerError):
            await ledger.apply_fill(f)
        # Assert: nothing written (the fill id is not taken, the release not lost)
        assert await ledger_state(redis_client, acct, coid) == before, (kind, fld)
        assert (await last_journal(redis_client, acct))["ev"] == "fill_bad_state"
        # Act: repaired, the same fill applies exactly once
        if good is None:
            await redis_client.hdel(key, fld)
        else:
            await redis_client.hset(key, fld, good)
        assert await ledger.apply_fill(f) is FillOutcome.APPLIED, (kind, fld)
        assert await ledger.apply_fill(f) is FillOutcome.DUPLICATE
        rec = await ledger.order(coid)
        assert rec is not None and rec.state is OrderState.FILLED and rec.open_qty == 0
    res = await redis_client.hgetall(acct.reservations)
    assert res[f"{SYMBOL}:buy"] == "0" and res[f"{SYMBOL}:loss"] == "0"
    assert (await ledger.positions())[SYMBOL].qty == Decimal("0.0050") * len(MALFORMED)


@pytest.mark.parametrize("name", WRONG_TYPE)
async def test_apply_fill_when_key_has_wrong_type_then_bad_state_and_nothing_written(
    redis_client: aioredis.Redis, acct: AccountKeys, name: str
) -> None:
    ledger = Ledger(redis_client, acct, risk())
    coid = await place(redis_client, acct, buy("0.0100"), "wt")
    f = fill("wt", coid, Side.BUY, "0.0100", "60000", ts_ms=FILL_TS)
    key = acct.day(ledger.fill_day(f)) if name == "day" else getattr(acct, name)
    await redis_client.delete(key)
    await redis_client.rpush(key, "not", "right")
    before = await ledger_state(redis_client, acct, coid)
    before_journal = await redis_client.type(acct.journal)
    with pytest.raises(LedgerError):
        await ledger.apply_fill(f)
    assert await ledger_state(redis_client, acct, coid) == before
    if name != "journal":
        assert (await last_journal(redis_client, acct))["ev"] == "fill_bad_state"
    else:
        assert await redis_client.type(acct.journal) == before_journal


@pytest.mark.parametrize("name", ["open_orders", "journal", "reservations"])
async def test_mark_canceled_when_key_has_wrong_type_then_bad_state_and_nothing_written(
    redis_client: aioredis.Redis, acct: AccountKeys, name: str
) -> None:
    ledger = Ledger(redis_client, acct, risk())
    coid = await place(redis_client, acct, buy("0.0100"), "wt")
    key = getattr(acct, name)
    await redis_client.delete(key)
    await redis_client.rpush(key, "not", "right")
    before = await ledger_state(redis_client, acct, coid)
    with pytest.raises(LedgerError):
        await ledger.mark_canceled(coid, "x")
    assert await ledger_state(redis_client, acct, coid) == before


async def test_release_when_it_exceeds_the_reservation_then_bad_state_journaled_never_negative(
    redis_client: aioredis.Redis, acct: AccountKeys
) -> None:
    # Arrange: the reservation total is already short of the order's open lots
    ledger = Ledger(redis_client, acct, risk())
    coid = await place(redis_client, acct, buy("0.0100"), "short")
    await redis_client.hset(acct.reservations, f"{SYMBOL}:buy", "40")
    before = await ledger_state(redis_client, acct, coid)
    # Act + Assert: neither a cancel nor a fill may drive it below zero (no clamping)
    with pytest.raises(LedgerError, match="would leave"):
        await ledger.mark_canceled(coid, "user")
    entry = await last_journal(redis_client, acct)
    assert entry["ev"] == "bad_state" and "-60" in entry["detail"]
    with pytest.raises(LedgerError, match="would leave"):
        await ledger.apply_fill(fill("sf", coid, Side.BUY, "0.0100", "60000", ts_ms=FILL_TS))
    assert await ledger_state(redis_client, acct, coid) == before
    # the sweep's rebuild restores the totals from the order records; then it releases
    from guardrails.reconcile import sweep
    from tests.fakevenue import FakeVenue

    assert (await sweep(ledger, FakeVenue(), fix=True)).fixed
    assert await ledger.mark_canceled(coid, "user") is Transition.APPLIED
    assert (await redis_client.hgetall(acct.reservations))[f"{SYMBOL}:buy"] == "0"


async def test_apply_fill_when_more_than_open_quantity_then_refused_and_nothing_changed(
    redis_client: aioredis.Redis, acct: AccountKeys
) -> None:
    ledger = Ledger(redis_client, acct, risk())
    coid = await place(redis_client, acct, buy("0.0200"), "over")
    assert await ledger.apply_fill(fill("p1", coid, Side.BUY, "0.0150", "60000")) is (
        FillOutcome.APPLIED)
    before = await ledger_state(redis_client, acct, coid)
    # Act: 0.0100 more on an order with 0.0050 open
    outcome = await ledger.apply_fill(fill("p2", coid, Side.BUY, "0.0100", "60000"))
    # Assert
    assert outcome is FillOutcome.REFUSED
    assert await ledger_state(redis_client, acct, coid) == before
    entry = await last_journal(redis_client, acct)
    assert entry["ev"] == "fill_refused" and "over-fill" in entry["detail"]


async def test_apply_fill_when_applied_after_midnight_then_counts_toward_the_day_it_executed(
    redis_client: aioredis.Redis, acct: AccountKeys
) -> None:
    # Arrange: New York, a +10 round trip whose closing fill executes at 23:59:30 on
    # Nov 20 and is applied 31 s later, on Nov 21 (pump lag, or reconcile after an outage)
    tz = "America/New_York"
    now = [_ms(tz, 2026, 11, 20, 23, 59)]
    clock = lambda: now[0]  # noqa: E731
    ledger = Ledger(redis_client, acct, risk(), clock_ms=clock)
    b = await place(redis_client, acct, buy("0.0100", "60000"), "b", clock)
    await ledger.apply_fill(fill("f1", b, Side.BUY, "0.0100", "60000", ts_ms=now[0]))
    await ledger.update_marks({SYMBOL: Decimal("61000")})
    s = await place(redis_client, acct, sell("0.0100", "61000"), "s", clock)
    executed = _ms(tz, 2026, 11, 20, 23, 59) + 30_000
    now[0] = _ms(tz, 2026, 11, 21, 0, 0) + 1_000
    # Act
    outcome = await ledger.apply_fill(fill("f2", s, Side.SELL, "0.0100", "61000", ts_ms=executed))
    # Assert: the profit is Nov 20's; Nov 21 starts from zero
    assert outcome is FillOutcome.APPLIED
    assert await redis_client.hget(acct.day("2026-11-20"), "realized_pnl") == "10000000"
    assert await redis_client.hget(acct.day("2026-11-21"), "realized_pnl") is None
    budget = await ledger.budget()
    assert budget.trading_day == "2026-11-21" and budget.realized_pnl == 0
    last = dict((await redis_client.xrevrange(acct.journal, count=1))[0][1])
    assert last["ev"] == "fill" and last["day"] == "2026-11-20"


@pytest.mark.parametrize("ts_ms", [0, -5])
async def test_apply_fill_when_execution_time_missing_then_ledger_error_and_nothing_written(
    redis_client: aioredis.Redis, acct: AccountKeys, ts_ms: int
) -> None:
    ledger = Ledger(redis_client, acct, risk())
    coid = await place(redis_client, acct, buy("0.0100"), "nots")
    before = await ledger_state(redis_client, acct, coid)
    with pytest.raises(LedgerError, match="execution time"):
        await ledger.apply_fill(fill("nots", coid, Side.BUY, "0.0100", "60000", ts_ms=ts_ms))
    assert await ledger_state(redis_client, acct, coid) == before
