"""Trade fees through the ccxt venue into the ledger: the UNMODIFIED ccxt ``binance`` class
against the Binance-protocol simulator charging commission as Binance does (in the asset
received: base on a buy, quote on a sell; BNB with BNB fee payment on). Nothing of ccxt
is mocked; the fills go through the gate and the ledger's scripts on a real Redis."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest

from guardrails.gate import OrderGate
from guardrails.keys import AccountKeys
from guardrails.ledger import FillOutcome, Ledger
from guardrails.model import Admitted, Fill, Intent, Order, OrderState, Side
from guardrails.ops.doctor.checks import judge
from guardrails.ops.doctor.snapshot import gather
from guardrails.ops.status import render_table, status_document
from guardrails.sim import binance as sb
from guardrails.sim.server import Simulator
from guardrails.venues.base import Accepted
from guardrails.venues.ccxt import CcxtVenue, fee_in_quote
from tests import gatekit
from tests.conftest import ROOT
from tests.test_venue_ccxt import ACCOUNT, KEY_ENV, MARKET, RISK, SECRET_ENV, SYMBOL, venue_cfg

MARK = Decimal("60123.45")
QTY = Decimal("0.0037")
RATE = Decimal("0.00075")
STATUS_SCHEMA = json.loads((ROOT / "docs" / "status.schema.json").read_text())


class World:
    def __init__(self, sim: Simulator, venue: CcxtVenue, redis: Any) -> None:
        self.sim, self.venue, self.redis = sim, venue, redis
        self.keys = AccountKeys(ACCOUNT)
        self.gate, self.ledger = OrderGate(redis, self.keys, RISK), Ledger(redis, self.keys, RISK)

    async def trade(self, side: Side, limit: str) -> tuple[str, tuple[Fill, ...]]:
        """Admit, send and fill one crossing order (it fills at MARK); apply its fills.
        Returns (client order id, the fills the venue reported)."""
        decision = await self.gate.admit(Intent(SYMBOL, side, QTY, Decimal(limit)),
                                         intent_id="i" + uuid.uuid4().hex[:12],
                                         token=gatekit.TOKEN, holder_id=gatekit.HOLDER)
        assert isinstance(decision, Admitted), decision
        order = Order(decision.client_order_id, SYMBOL, side, QTY, Decimal(limit),
                      decision.token, decision.submit_deadline_ms)
        assert isinstance(await self.venue.submit(order), Accepted)
        status = await self.venue.lookup(order.client_order_id)
        for fill in status.fills:
            await self.ledger.apply_fill(fill)
        return order.client_order_id, status.fills

    async def day(self, fill: Fill) -> dict[str, int]:
        raw = await self.redis.hgetall(self.keys.day(self.ledger.fill_day(fill)))
        return {str(k): int(v) for k, v in raw.items()}



@pytest.fixture
async def world_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_client: Any,
) -> AsyncIterator[Callable[[sb.Commission], Any]]:
    """``await world_with(commission)``: a simulator charging ``commission``, the venue on
    it, the account's limits stored and the lease held; everything stopped at the end."""
    stops: list[Any] = []

    async def make(commission: sb.Commission) -> World:
        key, secret = "k" + uuid.uuid4().hex, uuid.uuid4().hex + uuid.uuid4().hex
        monkeypatch.setenv(KEY_ENV, key)
        monkeypatch.setenv(SECRET_ENV, secret)
        exchange = sb.make_exchange(MARKET, RISK, record_path=tmp_path / "record.jsonl")
        front = sb.BinanceSim(exchange, {key: secret}, commission=commission)
        sim = Simulator(exchange, app=lambda: sb.build_binance_app(front, admin=True))
        url = await sim.start()
        stops.append(sim.stop)
        async with aiohttp.ClientSession() as s, s.post(
                url + "/admin/mark", json={"symbol": SYMBOL, "price": str(MARK)}) as r:
            assert r.status == 200, await r.text()
        venue = CcxtVenue(venue_cfg(url), ACCOUNT, risk=RISK)
        await venue.start()
        stops.append(venue.close)
        await gatekit.seed(redis_client, AccountKeys(ACCOUNT), RISK,
                           marks={SYMBOL: str(MARK), "ETH/USDT": "3000"})
        return World(sim, venue, redis_client)

    yield make
    for stop in reversed(stops):
        await stop()


@pytest.mark.parametrize(("side", "limit", "fee", "units", "wallet", "held"), [
    # A buy's commission is in the asset received (BTC): 0.0037 x 0.00075 = 0.000002775,
    # charged 0.00000278 (8 places, up), valued at the trade's price: 0.1671431910 USDT
    # exactly, 0.167144 in money units (fees round up). The wallet holds the quantity less
    # the commission; the ledger's position stays the traded quantity.
    (Side.BUY, "60200.00", Decimal("0.00000278") * MARK, 167_144,
     SYMBOL, QTY - Decimal("0.00000278")),
    # A sell's is in USDT: 0.0037 x 60123.45 x 0.00075 = 0.16684257375, charged 0.16684258.
    (Side.SELL, "60000.00", Decimal("0.16684258"), 166_843,
     "USDT", QTY * MARK - Decimal("0.16684258")),
])
async def test_fill_when_commission_in_the_asset_received_then_day_fees_count_it_exactly(
    world_with: Any, side: Side, limit: str, fee: Decimal, units: int, wallet: str,
    held: Decimal,
) -> None:
    # Arrange
    world: World = await world_with(sb.Commission(rate=RATE))
    # Act
    coid, [fill] = await world.trade(side, limit)
    # Assert
    assert fill.price == MARK and fill.fee == fee
    day = await world.day(fill)
    assert day["fees"] == units and day["realized_pnl"] == -units
    position = (await world.ledger.positions())[SYMBOL]
    assert position.realized_pnl == Decimal(-units).scaleb(-RISK.quote_decimals)
    assert position.qty == side.sign * QTY
    assert (await world.venue.balances())[wallet] == held
    order = await world.ledger.order(coid)
    assert order is not None and order.state is OrderState.FILLED


async def test_fill_when_commission_paid_in_bnb_then_fill_applies_and_a_warning_names_it(
    world_with: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    # Arrange: "use BNB for fees" on: the commission cannot be valued exactly.
    caplog.set_level(logging.INFO, logger="guardrails.venue.ccxt")
    world: World = await world_with(sb.Commission(rate=RATE, bnb_price=Decimal("600")))
    # Act
    coid, [fill] = await world.trade(Side.BUY, "60200.00")
    await world.venue.fills_since(None)  # a second read of the same trade
    # Assert: the fill applied (no reservation left stuck), without a fee ...
    assert fill.fee == 0
    order = await world.ledger.order(coid)
    assert order is not None and order.state is OrderState.FILLED and order.open_qty == 0
    assert (await world.ledger.positions())[SYMBOL].qty == QTY
    assert (await world.day(fill))["fees"] == 0
    # ... and one WARNING per fill names the currency, the amount and the order.
    # 0.0037 x 60123.45 x 0.00075 / 600 = 0.000278070956... BNB, charged 0.00027808.
    warned = [r for r in caplog.records if "event=venue.ccxt.fee_not_counted" in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING
    line = warned[0].getMessage()
    assert "currency=BNB" in line and "amount=0.00027808" in line and f"coid={coid}" in line


async def census_of(world: World) -> list[Any]:
    """Doctor's findings for the account (this host's process table left out)."""
    snap = await gather(world.redis, "redis://unused", [str(ACCOUNT)], host="h", processes=[])
    return [f for f in judge(snap, None).findings if f.account == str(ACCOUNT)]


async def test_fill_when_commission_paid_in_bnb_then_day_counts_it_once_and_status_and_doctor_show_it(
    world_with: Any,
) -> None:
    # Arrange: "use BNB for fees" on.
    world: World = await world_with(sb.Commission(rate=RATE, bnb_price=Decimal("600")))
    # Act: the lookup's fill is applied, then the fill pump reads the same trade again
    # and applies it again (a duplicate); then a second order fills.
    coid, [fill] = await world.trade(Side.BUY, "60200.00")
    batch = await world.venue.fills_since(None)
    again = [f for f in batch.fills if f.fill_id == fill.fill_id]
    outcomes = [await world.ledger.apply_fill(f) for f in again]
    # Assert: the fill carries the fee it could not count (0.00027808 BNB, as charged) ...
    assert fill.fees_uncounted == (("BNB", "0.00027808"),) and fill.fee == 0
    assert again == [fill] and outcomes == [FillOutcome.DUPLICATE]
    # ... the day counts it once, and the journal's fill entry names it
    day = await world.day(fill)
    assert day["fees_uncounted"] == 1 and day["fills"] == 1 and day["fees"] == 0
    entries = [f for _, f in await world.redis.xrange(world.keys.journal)
               if f.get("ev") == "fill" and f.get("fill_id") == fill.fill_id]
    assert len(entries) == 1 and entries[0]["fees_uncounted"] == "BNB:0.00027808"
    assert entries[0]["coid"] == coid
    # ... status (JSON valid against its schema, and the table) shows today's count ...
    doc = await status_document(world.redis, [ACCOUNT])
    jsonschema.validate(doc, STATUS_SCHEMA)
    (account,) = doc["accounts"]
    assert account["budget"]["fees_uncounted"] == 1 and account["errors"] == []
    assert "FEES      1 fill(s) on " in render_table(doc)
    # ... and doctor warns, with what to do.
    (finding,) = [f for f in await census_of(world) if f.code == "fees_uncounted"]
    assert finding.severity == "warning" and "1 fill(s)" in finding.message
    assert "turn BNB fee payment off" in finding.action
    # A second such fill counts a second time.
    _, [second] = await world.trade(Side.BUY, "60200.00")
    assert (await world.day(second))["fees_uncounted"] == 2
    assert (await world.ledger.budget()).fees_uncounted == 2


async def test_fill_when_commission_in_quote_then_nothing_uncounted_and_doctor_is_quiet(
    world_with: Any,
) -> None:
    world: World = await world_with(sb.Commission(rate=RATE))

    _, [fill] = await world.trade(Side.SELL, "60000.00")

    assert fill.fees_uncounted == () and fill.fee > 0
    day = await world.day(fill)
    assert "fees_uncounted" not in day and day["fills"] == 1
    doc = await status_document(world.redis, [ACCOUNT])
    jsonschema.validate(doc, STATUS_SCHEMA)
    assert doc["accounts"][0]["budget"]["fees_uncounted"] == 0
    assert "FEES " not in render_table(doc)
    assert not [f for f in await census_of(world) if f.code == "fees_uncounted"]


async def test_fill_when_commission_is_zero_then_no_fee_and_no_warning(
    world_with: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="guardrails.venue.ccxt")
    world: World = await world_with(sb.Commission(rate=Decimal(0), bnb_price=Decimal("600")))

    _, [fill] = await world.trade(Side.BUY, "60200.00")

    assert fill.fee == 0 and (await world.day(fill))["fees"] == 0
    assert not [r for r in caplog.records if "fee_not_counted" in r.getMessage()]


@pytest.mark.parametrize(("fee", "fees", "counted", "uncounted"), [
    ({"cost": "0.5", "currency": "USDT"}, None, Decimal("0.5"), []),
    ({"cost": "0.001", "currency": "BTC"}, None, Decimal("60.00001"), []),
    ({"cost": 0.001, "currency": "BTC"}, None, Decimal("60.00001"), []),  # a float: str() of it
    ({"cost": "0", "currency": "BNB"}, None, Decimal(0), []),
    ({"cost": None, "currency": None}, [], Decimal(0), []),
    ({"cost": "0.2", "currency": None}, None, Decimal(0), [("unknown", "0.2")]),
    ({"cost": "-0.1", "currency": "USDT"}, None, Decimal(0), []),  # a rebate never lowers it
    ({"cost": "n/a", "currency": "USDT"}, None, Decimal(0), [("USDT", "n/a")]),
    (None, [{"cost": "0.5", "currency": "USDT"}, {"cost": "0.001", "currency": "BTC"},
            {"cost": "0.01", "currency": "BNB"}], Decimal("60.50001"), [("BNB", "0.01")]),
])
def test_fee_in_quote_when_ccxt_trade_has_fee_then_counted_or_reported(
    fee: Any, fees: Any, counted: Decimal, uncounted: list[tuple[str, str]],
) -> None:
    trade: dict[str, Any] = {"fee": fee, "fees": fees}

    total, left = fee_in_quote(trade, base="BTC", quote="USDT", price=Decimal("60000.01"))

    assert total == counted and left == uncounted
