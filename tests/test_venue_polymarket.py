"""The Polymarket venue: the unmodified py-clob-client against the CLOB simulator over real
HTTP, a real redis-server for the order-hash records — conformance, exact amounts,
signatures, duplicates after a lost answer, the expiry window, the heartbeat dead-man
switch and the takeover cancel."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from eth_account import Account
from py_clob_client.client import ClobClient
from py_clob_client.clob_types import OrderArgs, OrderType
from py_clob_client.exceptions import PolyApiException
from pydantic import ValidationError

from guardrails.config import (
    ConfigError,
    PaperVenueConfig,
    PolymarketVenueConfig,
    RiskConfig,
    load_config,
)
from guardrails.config import parse_config as parse
from guardrails.keys import AccountId, AccountKeys
from guardrails.model import Order, Side
from guardrails.sim import daemon
from guardrails.sim.clob import ClobExchange, ClobSimulator
from guardrails.sim.exchange import read_record
from guardrails.venues import make_venue
from guardrails.venues.base import Accepted, Rejected, Unknown, VenueError, VenueOrderState
from guardrails.venues.polymarket import (
    EXPIRY_WINDOW_MAX_MS,
    PolymarketVenue,
    arrival_limit_ms,
    demo_signer,
    expiration_for,
    salt_for,
)
from tests.redis_harness import free_port
from tests.venue_conformance import SecretConformance, VenueConformance, VenueHarness, now_ms

KEY_ENV = "GUARDRAILS_TEST_POLY_KEY"
YES, NO = "ELECTION-YES", "ELECTION-NO"
TOKENS = {
    YES: "71321045679252212594626385532706912750332728571942532289631379312455583992563",
    NO: "52114319501245915516055106046884209969926127482827954674443846427813813222426",
}
RISK = RiskConfig.model_validate({
    "quote_decimals": 6, "max_order_notional": "1000", "max_gross_exposure": "10000",
    "daily_loss_limit": "100",
    "instruments": {YES: {"tick": "0.01", "lot": "0.01", "max_position": "1000"},
                    NO: {"tick": "0.01", "lot": "0.01", "max_position": "1000"}},
})
MARKET = PaperVenueConfig.model_validate(
    {"name": "clob", "seed": 3, "step": "1h", "start_prices": {YES: "0.50", NO: "0.50"}}
)


def new_key() -> str:
    return "0x" + bytes(Account.create().key).hex()


def address_of(key: str) -> str:
    return str(Account.from_key(key).address).lower()


def venue_cfg(url: str, **over: Any) -> PolymarketVenueConfig:
    data: dict[str, Any] = {"url": url, "key_env": KEY_ENV, "tokens": TOKENS,
                            "request_timeout": "3s", "heartbeat_interval": "300ms"}
    data.update(over)
    return PolymarketVenueConfig.model_validate(data)


class Env:
    def __init__(self, sim: ClobSimulator, venue: PolymarketVenue, key: str, record: Path,
                 redis: aioredis.Redis) -> None:
        self.sim, self.venue, self.key, self.record, self.redis = sim, venue, key, record, redis

    @property
    def exchange(self) -> ClobExchange:
        return self.sim.exchange

    async def admin(self, path: str, body: dict[str, Any]) -> None:
        async with aiohttp.ClientSession() as s, s.post(self.sim.url + path, json=body) as r:
            assert r.status == 200, await r.text()

    async def cross(self, order: Order) -> None:
        await self.admin("/admin/mark", {"symbol": order.symbol, "price": str(order.price)})

    def order(self, side: Side, price: str, *, qty: str = "10", symbol: str = YES,
              coid: str | None = None, deadline_ms: int | None = None) -> Order:
        return Order(coid or "c" + uuid.uuid4().hex, symbol, side, Decimal(qty), Decimal(price),
                     4, deadline_ms if deadline_ms is not None else now_ms() + 60_000)

    def record_rows(self, kind: str, **match: str) -> list[dict[str, Any]]:
        return [r for r in read_record(self.record) if r.get("type") == kind
                and all(r.get(k) == v for k, v in match.items())]

    def new_venue(self, **over: Any) -> PolymarketVenue:
        return PolymarketVenue(venue_cfg(self.sim.url, **over),
                               AccountId("polymarket", address_of(self.key)),
                               redis=self.redis, risk=RISK)


async def make_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis: aioredis.Redis,
                   **exchange_over: Any) -> tuple[Env, ClobSimulator]:
    key = new_key()
    monkeypatch.setenv(KEY_ENV, key)
    record = tmp_path / "clob-record.jsonl"
    sim = ClobSimulator(ClobExchange(MARKET, RISK, TOKENS, record_path=record, **exchange_over),
                        admin=True)
    url = await sim.start()
    venue = PolymarketVenue(venue_cfg(url), AccountId("polymarket", address_of(key)),
                            redis=redis, risk=RISK)
    await venue.start()
    return Env(sim, venue, key, record, redis), sim


@pytest.fixture
async def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
              redis_client: aioredis.Redis) -> AsyncIterator[Env]:
    e, sim = await make_env(tmp_path, monkeypatch, redis_client)
    try:
        yield e
    finally:
        await e.venue.close()
        await sim.stop()


class TestPolymarketConformance(VenueConformance, SecretConformance):
    @pytest.fixture
    async def harness(self, env: Env) -> AsyncIterator[VenueHarness]:
        async def provoke() -> None:
            broken = PolymarketVenue(
                venue_cfg(f"http://127.0.0.1:{free_port()}"),
                AccountId("polymarket", address_of(env.key)), redis=env.redis, risk=RISK)
            try:
                await broken.start()
            finally:
                await broken.close()

        yield VenueHarness(
            venue=env.venue, symbol=YES, tick=Decimal("0.01"), lot=Decimal("0.01"),
            cross=env.cross, qty_lots=1000, secrets=(env.key, env.key.removeprefix("0x")),
            provoke_error=provoke, rest_distance=Decimal("0.2"),
            cross_distance=Decimal("0.04"),
            # The CLOB keeps no record of an order hash it never received: a cancel that
            # overtakes its order cannot be promised (the expiry window bounds it instead).
            fences_unseen_cancel=False,
            # an unknown order may still arrive until its signed expiration with the
            # longest window any config may sign (600 s; +1 s: whole seconds, + margin)
            arrival_grace_ms=arrival_limit_ms(0),
        )


# -- exact amounts --------------------------------------------------------------------


async def test_submit_when_library_would_round_size_inexactly_then_exact_amounts_signed(
    env: Env,
) -> None:
    # Arrange: py-clob-client's get_order_amounts floors 0.29 * 100 = 28.999999999999996
    # to 28: through it, a 0.29-share bid would be signed as 0.28 shares.
    from py_clob_client.order_builder.builder import ROUNDING_CONFIG

    _, lib_maker, lib_taker = env.venue._lib().builder.get_order_amounts(
        "BUY", 0.29, 0.40, ROUNDING_CONFIG["0.01"])
    assert (lib_maker, lib_taker) != (116_000, 290_000)  # the library's float error, still there
    order = env.order(Side.BUY, "0.40", qty="0.29")
    # Act
    result = await env.venue.submit(order)
    # Assert: the exchange received exactly 0.29 shares for exactly 0.116 USDC.
    assert isinstance(result, Accepted), result
    [row] = env.record_rows("order")
    assert (Decimal(row["qty"]), Decimal(row["price"])) == (Decimal("0.29"), Decimal("0.4")), row
    status = await env.venue.lookup(order.client_order_id)
    assert status.state is VenueOrderState.OPEN, status


async def test_submit_when_price_outside_unit_interval_then_refused(env: Env) -> None:
    result = await env.venue.submit(env.order(Side.BUY, "1.00"))

    assert isinstance(result, Rejected) and result.reason.startswith("off_tick"), result
    assert env.record_rows("order") == []


async def test_submit_when_exact_then_signed_amounts_are_the_decimal_computation(
    env: Env,
) -> None:
    order = env.order(Side.BUY, "0.37", qty="12.5")

    result = await env.venue.submit(order)
    found = env.exchange.get_order(address_of(env.key), getattr(result, "venue_order_id", ""))

    assert isinstance(result, Accepted), result
    assert found is not None and found["status"] == "LIVE"
    assert Decimal(found["original_size"]) == Decimal("12.5")
    assert Decimal(found["price"]) == Decimal("0.37")
    assert int(found["expiration"]) == expiration_for(order.submit_deadline_ms, 180_000)


# -- idempotency ----------------------------------------------------------------------


async def test_submit_when_response_lost_then_unknown_resend_refused_duplicate_one_order(
    env: Env,
) -> None:
    # Arrange: the exchange books the order, then the answer is lost on the way back.
    order = env.order(Side.BUY, "0.40")
    await env.admin("/admin/faults", {"drop_submit_responses": 1})
    # Act
    first = await env.venue.submit(order)
    again = await env.venue.submit(order)
    status = await env.venue.lookup(order.client_order_id, deadline_ms=order.submit_deadline_ms)
    # Assert: the re-send is the same signed order; the exchange refused it as a duplicate
    # and the adapter reconciled it to the one order.
    assert isinstance(first, Unknown), first
    assert isinstance(again, Accepted), again
    orders = env.record_rows("order")
    assert [r["result"] for r in orders] == ["accepted", "duplicate"]
    assert {r["coid"] for r in orders} == {again.venue_order_id}
    assert status.state is VenueOrderState.OPEN
    assert len(env.exchange.open_ids(address_of(env.key))) == 1


async def test_salt_when_same_client_order_id_then_same_and_fits_json_numbers() -> None:
    assert salt_for("abc") == salt_for("abc") != salt_for("abd")
    assert 0 <= salt_for("abc") < 2**53


# -- what the simulator verifies (driven through the unmodified client) ----------------


def _client(url: str, key: str) -> ClobClient:
    c = ClobClient(url, chain_id=137, key=key)
    c.set_api_creds(c.create_or_derive_api_creds())
    return c


async def test_simulator_when_order_signature_tampered_then_refused(env: Env) -> None:
    def post_tampered() -> Any:
        c = _client(env.sim.url, env.key)
        signed = c.create_order(OrderArgs(token_id=TOKENS[YES], price=0.4, size=10.0,
                                          side="BUY", expiration=int(time.time()) + 600))
        signed.order.values["makerAmount"] = 1  # pay 1e-6 USDC for 10 shares
        return c.post_order(signed, OrderType.GTD)

    with pytest.raises(PolyApiException) as e:
        await asyncio.to_thread(post_tampered)

    assert e.value.status_code == 400 and "invalid signature" in str(e.value.error_msg)
    assert [r["reason"] for r in env.record_rows("order")] == ["bad_signature"]


async def test_simulator_when_l2_secret_wrong_then_unauthorized(env: Env) -> None:
    def with_bad_secret() -> Any:
        c = _client(env.sim.url, env.key)
        c.creds.api_secret = base64.urlsafe_b64encode(b"not the secret" * 2).decode()
        return c.get_orders()

    with pytest.raises(PolyApiException) as e:
        await asyncio.to_thread(with_bad_secret)

    assert e.value.status_code == 401


async def test_simulator_when_two_clients_on_one_wallet_then_same_derived_api_key(
    env: Env,
) -> None:
    a = await asyncio.to_thread(_client, env.sim.url, env.key)
    b = await asyncio.to_thread(_client, env.sim.url, env.key)

    assert a.creds.api_key == b.creds.api_key


# -- the exchange's fences ------------------------------------------------------------


async def test_submit_when_sent_after_its_deadline_then_exchange_refuses_too_soon_expiry(
    env: Env,
) -> None:
    # A paused sender's late order: signed with expiration = deadline + window, it arrives
    # when that is less than the window ahead.
    order = env.order(Side.BUY, "0.40", deadline_ms=now_ms() - 1_500)

    result = await env.venue.submit(order)

    assert isinstance(result, Rejected), result
    assert [r["reason"] for r in env.record_rows("order")] == ["expired"]


async def test_lookup_when_unknown_order_past_deadline_then_can_arrive_until_expiration(
    env: Env,
) -> None:
    # An order the exchange has no record of, whose deadline has passed: the exchange's
    # minimum-window refusal is policy (expiry_window may exceed it), so it may still be
    # accepted until its signed expiration — only then may the ledger release it.
    past = env.order(Side.BUY, "0.40", deadline_ms=now_ms() - 1_500)
    expired = env.order(Side.BUY, "0.40", deadline_ms=now_ms() - 700_000)

    late = await env.venue.lookup(past.client_order_id, deadline_ms=past.submit_deadline_ms)
    gone = await env.venue.lookup(expired.client_order_id,
                                  deadline_ms=expired.submit_deadline_ms)

    assert late.state is VenueOrderState.NOT_FOUND and late.can_still_arrive
    assert gone.state is VenueOrderState.NOT_FOUND and not gone.can_still_arrive


async def test_lookup_when_instance_window_shorter_than_the_signers_then_reservation_still_held(
    env: Env,
) -> None:
    # Arrange: an order signed with a 600 s window (deadline 5 minutes ago: it can match
    # for 5 more), never seen by the exchange yet; the instance asking now runs a 60 s
    # window (lowered since, or a standby's config: only risk limits are compared).
    short = env.new_venue(expiry_window="60s")
    await short.start()
    try:
        order = env.order(Side.BUY, "0.40", deadline_ms=now_ms() - 300_000)
        # Act
        status = await short.lookup(order.client_order_id, deadline_ms=order.submit_deadline_ms)
    finally:
        await short.close()
    # Assert: its own window would say "gone"; the signed expiration may still be ahead.
    assert status.state is VenueOrderState.NOT_FOUND and status.can_still_arrive, status
    assert arrival_limit_ms(order.submit_deadline_ms) >= \
        expiration_for(order.submit_deadline_ms, 600_000) * 1000 + 1_000


def test_arrival_limit_when_config_bound_read_then_it_is_the_longest_window() -> None:
    from guardrails.config import PolymarketVenueConfig

    [bound] = [m.le for m in PolymarketVenueConfig.model_fields["expiry_window"].metadata
               if hasattr(m, "le")]
    assert bound == EXPIRY_WINDOW_MAX_MS


def test_config_when_expiry_window_beyond_600s_then_refused() -> None:
    with pytest.raises(ValidationError, match="expiry_window"):
        venue_cfg("http://127.0.0.1:1", expiry_window="601s")


async def test_resting_gtd_order_when_expiration_minus_threshold_passes_then_expired(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_client: aioredis.Redis,
) -> None:
    # A short window so the test is quick: arrival by the deadline, life until
    # expiration - threshold = deadline + 1 s.
    e, sim = await make_env(tmp_path, monkeypatch, redis_client, min_expiry_window_ms=3_000,
                            security_threshold_ms=2_000)
    venue = e.new_venue(expiry_window="3s")
    await venue.start()
    try:
        order = e.order(Side.BUY, "0.40", deadline_ms=now_ms() + 1_000)
        assert isinstance(await venue.submit(order), Accepted)
        await asyncio.sleep(3.5)
        status = await venue.lookup(order.client_order_id)
        assert status.state is VenueOrderState.EXPIRED
        assert [r["reason"] for r in e.record_rows("cancel")] == ["expired"]
    finally:
        await venue.close()
        await e.venue.close()
        await sim.stop()


async def test_heartbeat_when_started_then_lapses_exchange_cancels_resting_orders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_client: aioredis.Redis,
) -> None:
    e, sim = await make_env(tmp_path, monkeypatch, redis_client, heartbeat_timeout_ms=1_500)
    try:
        await e.venue.begin_term()
        service = asyncio.create_task(e.venue.term_service())
        a = e.order(Side.BUY, "0.40")
        b = e.order(Side.SELL, "0.60", symbol=NO)
        assert isinstance(await e.venue.submit(a), Accepted)
        assert isinstance(await e.venue.submit(b), Accepted)
        await asyncio.sleep(2.5)  # beating: the orders stay
        assert (await e.venue.lookup(a.client_order_id)).state is VenueOrderState.OPEN
        # Act: the heartbeats stop (the holder paused or died).
        service.cancel()
        await asyncio.gather(service, return_exceptions=True)
        await asyncio.sleep(3.0)
        # Assert: the exchange cancelled both, on its own.
        for o in (a, b):
            assert (await e.venue.lookup(o.client_order_id)).state is VenueOrderState.CANCELED
        assert [r["reason"] for r in e.record_rows("cancel")] == ["heartbeat_timeout"] * 2
    finally:
        await e.venue.close()
        await sim.stop()


async def test_begin_term_when_previous_term_left_orders_then_cancels_them_first(
    env: Env,
) -> None:
    # Arrange: the previous holder's resting order.
    left = env.order(Side.BUY, "0.40")
    assert isinstance(await env.venue.submit(left), Accepted)
    successor = env.new_venue()
    await successor.start()
    try:
        # Act
        await successor.begin_term()
        status = await successor.lookup(left.client_order_id)
    finally:
        await successor.close()
    # Assert
    assert status.state is VenueOrderState.CANCELED
    assert env.record_rows("heartbeat")  # and the dead-man switch is armed


async def test_begin_term_when_cancel_on_takeover_off_then_orders_stay(env: Env) -> None:
    left = env.order(Side.BUY, "0.40")
    assert isinstance(await env.venue.submit(left), Accepted)
    successor = env.new_venue(cancel_on_takeover=False)
    await successor.start()
    try:
        await successor.begin_term()
        status = await successor.lookup(left.client_order_id)
    finally:
        await successor.close()

    assert status.state is VenueOrderState.OPEN


# -- fills, marks, balances -------------------------------------------------------------


async def test_fills_when_resting_order_crossed_later_then_maker_fill_by_client_order_id(
    env: Env,
) -> None:
    order = env.order(Side.SELL, "0.60", symbol=NO)
    assert isinstance(await env.venue.submit(order), Accepted)
    start = await env.venue.fills_since(None)

    await env.cross(order)
    batch = await env.venue.fills_since(start.cursor)
    usdc = (await env.venue.balances())["USDC"]

    assert [(f.client_order_id, f.symbol, f.side, f.qty, f.price) for f in batch.fills] == [
        (order.client_order_id, NO, Side.SELL, Decimal(10), Decimal("0.60"))]
    assert usdc == Decimal(10_000) + Decimal("6.00")


def _maker_trade(env: Env, maker_hash: str, *, taker_asset: str, maker_asset: str,
                 maker_side: str = "BUY", price: str = "0.40", size: str = "10",
                 **over: Any) -> dict[str, Any]:
    """A ``/data/trades`` row as the CLOB answers it when another trader's order took this
    wallet's resting ``maker_hash``."""
    row: dict[str, Any] = {
        "id": "t-" + uuid.uuid4().hex[:12], "market": env.exchange.condition_id,
        "asset_id": taker_asset, "side": "BUY", "size": size, "fee_rate_bps": "0",
        "price": str(1 - Decimal(price)), "status": "CONFIRMED",
        "match_time": str(int(time.time())), "outcome": "", "owner": "",
        "maker_address": "0x" + "11" * 20, "trader_side": "MAKER",
        "taker_order_id": "0x" + "22" * 32,
        "maker_orders": [{
            "order_id": maker_hash, "maker_address": address_of(env.key), "owner": "",
            "matched_amount": size, "price": price, "fee_rate_bps": "0",
            "asset_id": maker_asset, "outcome": "", "side": maker_side,
        }],
    }
    row.update(over)
    return row


async def test_fills_when_maker_bid_matched_against_other_outcome_bid_then_fill_is_its_own_token(
    env: Env,
) -> None:
    # Arrange: our NO bid at 0.40 rests; another trader's YES bid at 0.60 crosses it (a
    # complementary "mint" match): the trade row is of the YES token, our leg of NO.
    order = env.order(Side.BUY, "0.40", symbol=NO)
    accepted = await env.venue.submit(order)
    assert isinstance(accepted, Accepted), accepted
    start = await env.venue.fills_since(None)
    row = _maker_trade(env, accepted.venue_order_id, taker_asset=TOKENS[YES],
                       maker_asset=TOKENS[NO])
    await env.admin("/admin/answers", {"trades": [row]})
    # Act
    batch = await env.venue.fills_since(start.cursor)
    status = await env.venue.lookup(order.client_order_id)
    # Assert: the fill is of the order's own token, side and price (before: YES, which the
    # ledger refuses as not the order's symbol, so the NO position was never booked) and
    # the order's lookup finds it too (before: it searched the NO token's trades only).
    want = [(order.client_order_id, NO, Side.BUY, Decimal(10), Decimal("0.40"))]
    assert [(f.client_order_id, f.symbol, f.side, f.qty, f.price) for f in batch.fills] == want
    assert [(f.client_order_id, f.symbol, f.side, f.qty, f.price) for f in status.fills] == want


async def test_fills_when_market_charges_a_fee_rate_then_each_fill_counts_the_exchange_fee(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_client: aioredis.Redis,
) -> None:
    # Arrange: a market whose orders carry feeRateBps = 200 (2 %): the CTF Exchange takes
    # bps x min(p, 1 - p) x size (CalculatorHelper.calculateFee) from each leg.
    e, sim = await make_env(tmp_path, monkeypatch, redis_client, fee_rate_bps=200)
    try:
        # Both rest (the marks are 0.50) and fill at their limits when the marks cross.
        buy = e.order(Side.BUY, "0.30", qty="10")
        sell = e.order(Side.SELL, "0.80", qty="5.5", symbol=NO)
        start = await e.venue.fills_since(None)
        assert isinstance(await e.venue.submit(buy), Accepted)
        assert isinstance(await e.venue.submit(sell), Accepted)
        await e.cross(buy)
        await e.cross(sell)
        # Act
        batch = await e.venue.fills_since(start.cursor)
    finally:
        await e.venue.close()
        await sim.stop()
    # Assert: before, every fill's fee was 0 whatever the market charged.
    fees = {f.client_order_id: f.fee for f in batch.fills}
    assert fees == {buy.client_order_id: Decimal("0.06"),  # 10 x 0.30 x 2 %
                    sell.client_order_id: Decimal("0.022")}  # 5.5 x (1 - 0.80) x 2 %


@pytest.mark.parametrize("field, value", [
    ("price", "NaN"), ("price", "1.5"), ("price", "-0.40"), ("price", "0"),
    ("matched_amount", "-10"), ("matched_amount", "Infinity"), ("matched_amount", "ten"),
    ("side", "HOLD"), ("fee_rate_bps", "-5"), ("fee_rate_bps", "20000"),
    ("fee_rate_bps", "1.5"), ("match_time", "NaN"),
])
async def test_fills_when_venue_answers_a_malformed_number_then_clear_error_and_no_fill(
    env: Env, field: str, value: str,
) -> None:
    # Arrange: a maker fill of our resting order, with one field made impossible.
    order = env.order(Side.BUY, "0.40", symbol=NO)
    accepted = await env.venue.submit(order)
    assert isinstance(accepted, Accepted), accepted
    row = _maker_trade(env, accepted.venue_order_id, taker_asset=TOKENS[NO],
                       maker_asset=TOKENS[NO])
    if field == "match_time":
        row["match_time"] = value
    else:
        row["maker_orders"][0][field] = value
    await env.admin("/admin/answers", {"trades": [row]})
    # Act / Assert: the batch is refused, naming the field; nothing reaches the ledger
    # (before: a SELL fill for "HOLD", a fill at 1.5 USDC a share, a NaN price...).
    with pytest.raises(VenueError, match="malformed answer") as info:
        await env.venue.fills_since(None)
    assert field.split("_")[0] in str(info.value) or "size" in str(info.value)


@pytest.mark.parametrize("mid", ["NaN", "7", "-0.5", "abc"])
async def test_marks_when_venue_answers_an_impossible_midpoint_then_clear_error(
    env: Env, mid: str,
) -> None:
    await env.admin("/admin/answers", {"mids": {TOKENS[YES]: mid}})

    with pytest.raises(VenueError, match="midpoint"):
        await env.venue.marks([YES, NO])


@pytest.mark.parametrize("answer", ["OK", ["0xabc"], {"canceled": "all"}, None])
async def test_cancel_when_venue_answers_not_a_cancel_result_then_unknown_not_a_crash(
    env: Env, answer: Any,
) -> None:
    # Arrange: a resting order; the exchange answers its cancel with something else.
    order = env.order(Side.BUY, "0.40")
    assert isinstance(await env.venue.submit(order), Accepted)
    await env.admin("/admin/answers", {"cancel": [answer]})
    # Act: before, ``"OK".get`` raised AttributeError out of cancel().
    result = await env.venue.cancel(order.client_order_id)
    # Assert: whether it cancelled is not known (the order in fact still rests).
    assert isinstance(result, Unknown), result
    assert len(env.exchange.open_ids(address_of(env.key))) == 1


# -- start-up and config ----------------------------------------------------------------


async def test_start_when_account_is_another_address_then_refused(
    env: Env, redis_client: aioredis.Redis
) -> None:
    other = PolymarketVenue(venue_cfg(env.sim.url), AccountId("polymarket", address_of(new_key())),
                            redis=redis_client, risk=RISK)
    with pytest.raises(VenueError, match="not the signing key's address"):
        await other.start()


async def test_start_when_config_tick_differs_from_market_then_refused(
    env: Env, redis_client: aioredis.Redis
) -> None:
    risk = RISK.model_copy(update={"instruments": {
        YES: RISK.instruments[YES].model_copy(update={"tick": Decimal("0.001")}),
        NO: RISK.instruments[NO]}})
    venue = PolymarketVenue(venue_cfg(env.sim.url), AccountId("polymarket", address_of(env.key)),
                            redis=redis_client, risk=risk)
    with pytest.raises(VenueError, match=r"has tick 0\.01 at the exchange"):
        await venue.start()


def _config(**venue: Any) -> dict[str, Any]:
    return {
        "account": {"venue": "polymarket", "id": "0x" + "ab" * 20},
        "risk": RISK.model_dump(mode="json"),
        "venue": {"kind": "polymarket", "url": "http://x", "tokens": TOKENS, **venue},
    }


def test_config_when_token_missing_for_instrument_then_refused_naming_it() -> None:
    with pytest.raises(ConfigError, match=f"venue.tokens lacks a token id for: {NO}"):
        parse(_config(tokens={YES: TOKENS[YES]}))


def test_config_when_account_not_a_wallet_address_then_refused() -> None:
    data = _config()
    data["account"]["id"] = "me"
    with pytest.raises(ConfigError, match="wallet's 0x address"):
        parse(data)


def test_config_when_token_id_not_decimal_then_refused() -> None:
    with pytest.raises(ConfigError, match="decimal integer"):
        parse(_config(tokens={YES: "0xabc", NO: TOKENS[NO]}))


async def test_make_venue_when_kind_polymarket_then_polymarket_venue(
    redis_client: aioredis.Redis,
) -> None:
    venue = make_venue(parse(_config()), redis_client)

    assert isinstance(venue, PolymarketVenue)


# -- the demo config and the embedded CLOB simulator daemon -------------------------------


ROOT = Path(__file__).resolve().parent.parent


def test_demo_config_when_loaded_then_valid_and_its_account_is_the_demo_wallet() -> None:
    cfg = load_config(ROOT / "config" / "polymarket-sim.toml")

    assert isinstance(cfg.venue, PolymarketVenueConfig) and cfg.venue.url == "embedded"
    assert cfg.account.id == demo_signer().address
    assert set(cfg.venue.tokens) == set(cfg.risk.instruments)


async def test_make_venue_when_embedded_then_per_user_clob_daemon_and_state_survives_restart(
    monkeypatch: pytest.MonkeyPatch, redis_client: aioredis.Redis,
) -> None:
    # Arrange: the demo config, no key configured (the demo wallet signs).
    monkeypatch.delenv("GUARDRAILS_POLYMARKET_KEY", raising=False)
    cfg = load_config(ROOT / "config" / "polymarket-sim.toml")
    venue = make_venue(cfg, redis_client)
    await venue.start()
    try:
        symbol = next(iter(cfg.risk.instruments))
        mark = (await venue.marks([symbol]))[symbol]
        order = Order("c-embedded", symbol, Side.BUY, Decimal(10), mark - Decimal("0.20"), 1,
                      now_ms() + 60_000)
        assert isinstance(await venue.submit(order), Accepted)
    finally:
        await venue.close()
    # Act: the daemon restarts; a new venue reaches the new one.
    assert daemon.stop(root=daemon.clob_root())
    again = make_venue(cfg, redis_client)
    await again.start()
    try:
        status = await again.lookup("c-embedded")
    finally:
        await again.close()
    # Assert: the order is still there, replayed from the daemon's record.
    assert status.state is VenueOrderState.OPEN


async def test_reconcile_when_answer_lost_then_resend_refused_duplicate_and_ledger_one_order(
    env: Env, redis_client: aioredis.Redis,
) -> None:
    """End to end: gate -> signed post whose answer is lost -> UNKNOWN in the ledger
    (reservation kept) -> reconcile by the recorded hash -> OPEN; then a deliberate
    re-send: the exchange refuses it as a duplicate, the venue answers with the one order,
    the ledger still holds one order, and the exchange holds one."""
    from guardrails.gate import OrderGate
    from guardrails.ledger import Ledger
    from guardrails.model import Admitted, OrderState
    from guardrails.reconcile import reconcile
    from tests import gatekit

    # Arrange
    keys = AccountKeys(AccountId("polymarket", address_of(env.key)))
    await gatekit.seed(redis_client, keys, RISK, marks={YES: "0.50", NO: "0.50"})
    gate, ledger = OrderGate(redis_client, keys, RISK), Ledger(redis_client, keys, RISK)
    decision = await gate.admit(gatekit.buy("10", "0.48", symbol=YES), intent_id="i-lost",
                                token=gatekit.TOKEN, holder_id=gatekit.HOLDER)
    assert isinstance(decision, Admitted), decision
    order = Order(decision.client_order_id, YES, Side.BUY, Decimal(10), Decimal("0.48"),
                  decision.token, decision.submit_deadline_ms)
    await env.admin("/admin/faults", {"drop_submit_responses": 1})
    # Act
    result = await env.venue.submit(order)
    assert isinstance(result, Unknown), result
    await ledger.mark_unknown(order.client_order_id, result.reason)
    report = await reconcile(ledger, env.venue, now_ms=now_ms())
    resent = await env.venue.submit(order)
    # Assert
    assert report.ok, report.failures
    after = await ledger.order(order.client_order_id)
    assert after is not None and after.state is not OrderState.UNKNOWN
    assert isinstance(resent, Accepted)
    orders = env.record_rows("order")
    assert [r["result"] for r in orders] == ["accepted", "duplicate"]
    assert orders[0]["coid"] == orders[1]["coid"] == resent.venue_order_id
    assert env.exchange.open_ids(address_of(env.key)) == [resent.venue_order_id]
    # ...and the wallet's key is nowhere in Redis or the exchange's record.
    from tests.test_venue_http import redis_dump

    dump = await redis_dump(redis_client) + env.record.read_text()
    assert resent.venue_order_id in dump  # the dump does see the order's state
    assert env.key.removeprefix("0x").lower() not in dump.lower()


async def test_submit_when_redis_unreachable_then_refused_and_nothing_sent(env: Env) -> None:
    # The hash cannot be recorded, so the order is not sent (it could not be looked up).
    dead = aioredis.Redis(port=free_port(), socket_connect_timeout=0.5)
    venue = PolymarketVenue(venue_cfg(env.sim.url), AccountId("polymarket", address_of(env.key)),
                            redis=dead, risk=RISK)
    await venue.start()
    try:
        result = await venue.submit(env.order(Side.BUY, "0.40"))
        canceled = await venue.cancel("c-any")
    finally:
        await venue.close()
        await dead.aclose()

    assert isinstance(result, Rejected) and result.reason.startswith("redis_unavailable")
    assert isinstance(canceled, Unknown)
    assert env.record_rows("order") == []


async def test_start_when_lot_off_the_clob_size_grid_then_refused(
    env: Env, redis_client: aioredis.Redis
) -> None:
    risk = RiskConfig.model_validate({**RISK.model_dump(mode="json"), "instruments": {
        YES: {"tick": "0.01", "lot": "0.001", "max_position": "10"},
        NO: {"tick": "0.01", "lot": "0.01", "max_position": "10"}}})
    venue = PolymarketVenue(venue_cfg(env.sim.url), AccountId("polymarket", address_of(env.key)),
                            redis=redis_client, risk=risk)
    with pytest.raises(VenueError, match="size grid"):
        await venue.start()


def _daemon_environ() -> bytes:
    pid = int((daemon.clob_root() / "sim.pid").read_text())
    return Path(f"/proc/{pid}/environ").read_bytes()


async def test_embedded_daemon_when_key_in_env_then_daemon_environment_lacks_it(
    monkeypatch: pytest.MonkeyPatch, redis_client: aioredis.Redis,
) -> None:
    # Arrange: a real key in the env var, the demo market, the account = that key's wallet.
    key = new_key()
    monkeypatch.setenv("GUARDRAILS_POLYMARKET_KEY", key)
    data = load_config(ROOT / "config" / "polymarket-sim.toml").model_dump(mode="json")
    data["account"]["id"] = address_of(key)
    venue = make_venue(parse(data), redis_client)
    # Act
    await venue.start()
    try:
        environ = _daemon_environ()
    finally:
        await venue.close()
    # Assert
    assert b"GUARDRAILS_POLYMARKET_KEY" not in environ
    assert key.removeprefix("0x").encode() not in environ
