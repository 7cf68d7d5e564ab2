"""The ccxt venue: the UNMODIFIED ccxt ``binance`` class (only its URLs pointed here)
against the Binance-protocol simulator over real HTTP on loopback — conformance, exact
amounts, the recvWindow fence, unknown outcomes reconciled by client order id, start-up
filter checks, credentials, and error classification. Nothing of ccxt is mocked."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from ccxt.base import errors as cx

from guardrails.config import CcxtVenueConfig, PaperVenueConfig, RiskConfig, parse_config
from guardrails.keys import AccountId
from guardrails.model import Order, Side
from guardrails.sim import binance as sb
from guardrails.sim import daemon
from guardrails.sim.exchange import read_record
from guardrails.sim.server import Simulator
from guardrails.venues import make_venue
from guardrails.venues.base import Accepted, Rejected, Unknown, VenueError, VenueOrderState
from guardrails.venues.ccxt import CcxtVenue, Credentials, classify_submit_error
from tests.redis_harness import free_port
from tests.venue_conformance import SecretConformance, VenueConformance, VenueHarness, now_ms

SYMBOL = "BTC/USDT"
ACCOUNT = AccountId("binance", "main")
KEY_ENV, SECRET_ENV = "GUARDRAILS_TEST_CCXT_KEY", "GUARDRAILS_TEST_CCXT_SECRET"

RISK_DICT: dict[str, Any] = {
    "max_order_notional": "100000", "max_gross_exposure": "100000", "daily_loss_limit": "1000",
    "orders_per_second": "1000", "burst": 1000,
    "instruments": {
        SYMBOL: {"tick": "0.01", "lot": "0.0001", "max_position": "1"},
        "ETH/USDT": {"tick": "0.01", "lot": "0.001", "max_position": "10"},
    },
}
RISK = RiskConfig.model_validate(RISK_DICT)
MARKET = PaperVenueConfig.model_validate({
    "name": "sim", "seed": 5, "step": "1h",  # the wall clock never moves the market here
    "start_prices": {SYMBOL: "60000.00", "ETH/USDT": "3000.00"},
})


def venue_cfg(url: str, **over: Any) -> CcxtVenueConfig:
    data: dict[str, Any] = {
        "exchange": "binance", "url": url, "api_key_env": KEY_ENV, "secret_env": SECRET_ENV,
        "enable_rate_limit": False, "request_timeout": "1s",
    }
    data.update(over)
    return CcxtVenueConfig.model_validate(data)


class Env:
    def __init__(self, sim: Simulator, venue: CcxtVenue, key: str, secret: str,
                 record: Path) -> None:
        self.sim, self.venue, self.key, self.secret, self.record = sim, venue, key, secret, record

    async def admin(self, path: str, body: dict[str, Any]) -> None:
        async with aiohttp.ClientSession() as s, s.post(self.sim.url + path, json=body) as r:
            assert r.status == 200, await r.text()

    async def cross(self, order: Order) -> None:
        await self.admin("/admin/mark", {"symbol": order.symbol, "price": str(order.price)})

    def order(self, side: Side, price: Decimal, *, coid: str | None = None,
              deadline_ms: int | None = None, qty: str = "0.0010") -> Order:
        return Order(coid or "c" + uuid.uuid4().hex[:31], SYMBOL, side, Decimal(qty), price, 9,
                     deadline_ms if deadline_ms is not None else now_ms() + 30_000)

    async def mark(self) -> Decimal:
        return (await self.venue.marks([SYMBOL]))[SYMBOL]

    def rows(self, coid: str) -> list[dict[str, Any]]:
        return [r for r in read_record(self.record) if r.get("coid") == coid]


@pytest.fixture
async def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Env]:
    key, secret = "k" + uuid.uuid4().hex, uuid.uuid4().hex + uuid.uuid4().hex
    monkeypatch.setenv(KEY_ENV, key)
    monkeypatch.setenv(SECRET_ENV, secret)
    record = tmp_path / "binance-record.jsonl"
    exchange = sb.make_exchange(MARKET, RISK, record_path=record)
    front = sb.BinanceSim(exchange, {key: secret})
    sim = Simulator(exchange, app=lambda: sb.build_binance_app(front, admin=True))
    url = await sim.start()
    venue = CcxtVenue(venue_cfg(url), ACCOUNT, risk=RISK)
    await venue.start()
    try:
        yield Env(sim, venue, key, secret, record)
    finally:
        await venue.close()
        await sim.stop()


class TestCcxtConformance(VenueConformance, SecretConformance):
    @pytest.fixture
    async def harness(self, env: Env) -> AsyncIterator[VenueHarness]:
        async def provoke() -> None:
            broken = CcxtVenue(venue_cfg(f"http://127.0.0.1:{free_port()}"), ACCOUNT, risk=RISK)
            await broken.start()

        yield VenueHarness(
            venue=env.venue, symbol=SYMBOL, tick=Decimal("0.01"), lot=Decimal("0.0001"),
            cross=env.cross, secrets=(env.secret, env.key), provoke_error=provoke,
            fences_unseen_cancel=False,  # Binance keeps no tombstone; recvWindow fences
        )


# -- exact amounts ------------------------------------------------------------------------


async def test_submit_when_order_sent_then_exchange_received_the_exact_decimals(env: Env) -> None:
    # Arrange
    price = await env.mark() - Decimal("123.45")
    order = env.order(Side.BUY, price, qty="0.0037")
    # Act
    result = await env.venue.submit(order)
    # Assert: what the simulator parsed from the wire is the order's exact Decimal.
    assert isinstance(result, Accepted), result
    [row] = env.rows(order.client_order_id)
    assert row["result"] == "accepted"
    assert Decimal(row["qty"]) == order.qty and Decimal(row["price"]) == order.price
    assert row["side"] == "buy" and row["symbol"] == SYMBOL


@pytest.mark.parametrize("side", [Side.BUY, Side.SELL])
async def test_binance_request_is_the_one_ccxt_create_order_builds(env: Env, side: Side) -> None:
    """The venue sends Binance orders through ccxt's endpoint method (bench/ccxtvenue.py):
    its request must be what ccxt's own create_order would send, value for value."""
    order = env.order(side, Decimal("54321.10"), qty="0.0370")
    params = {"newClientOrderId": order.client_order_id, "timestamp": 1, "recvWindow": 2}
    ex = env.venue._exchange()
    ours = env.venue.binance_request(order, "0.0370", "54321.10", params)
    theirs = ex.create_order_request(SYMBOL, "limit", side.value, "0.0370", "54321.10", params)
    assert ours.keys() == theirs.keys()
    for k in ("quantity", "price"):
        assert Decimal(ours.pop(k)) == Decimal(theirs.pop(k))
    assert ours == theirs


@pytest.mark.parametrize(("qty", "offset", "why"), [
    ("0.00015", "0", "off_lot"),   # ccxt would truncate it to 0.0001
    ("0.0010", "0.003", "off_tick"),  # ccxt would round the price to the tick
])
async def test_submit_when_ccxt_would_change_the_amount_then_rejected_and_never_sent(
    env: Env, qty: str, offset: str, why: str
) -> None:
    order = env.order(Side.BUY, await env.mark() - 100 + Decimal(offset), qty=qty)

    result = await env.venue.submit(order)

    assert isinstance(result, Rejected) and result.reason.startswith(why), result
    assert env.rows(order.client_order_id) == []


# -- the recvWindow fence -----------------------------------------------------------------


async def test_submit_when_sent_then_recv_window_ends_at_the_submit_deadline(env: Env) -> None:
    # Arrange
    offset = int(env.venue._exchange().options["timeDifference"])
    order = env.order(Side.BUY, await env.mark() - 100, deadline_ms=now_ms() + 7_000)
    # Act
    assert isinstance(await env.venue.submit(order), Accepted)
    # Assert: timestamp + recvWindow (the exchange's expiry) is the deadline on its clock.
    [row] = env.rows(order.client_order_id)
    assert row["deadline_ms"] == order.submit_deadline_ms - offset


async def test_submit_when_request_arrives_after_its_recv_window_then_exchange_rejects_and_records(
    env: Env,
) -> None:
    # Arrange: the next order request is held 1.5 s in flight; its deadline is 0.5 s away
    # (the client waits up to 10 s for the answer, so only the exchange can refuse it).
    venue = CcxtVenue(venue_cfg(env.sim.url, request_timeout="10s"), ACCOUNT, risk=RISK)
    await venue.start()
    await env.admin("/admin/faults", {"hold_submits": 1, "hold_seconds": 1.5})
    order = env.order(Side.BUY, await env.mark() + 100, deadline_ms=now_ms() + 500)
    # Act
    try:
        result = await venue.submit(order)
        status = await venue.lookup(order.client_order_id, deadline_ms=order.submit_deadline_ms)
    finally:
        await venue.close()
    # Assert: refused by the exchange's own check (-1021), recorded as expired, no order.
    assert isinstance(result, Rejected) and result.reason.startswith("expired"), result
    [row] = env.rows(order.client_order_id)
    assert (row["result"], row["reason"], row["binance_code"]) == ("rejected", "expired", -1021)
    assert row["arrival_ms"] > row["deadline_ms"]
    assert status.state is VenueOrderState.NOT_FOUND and not status.can_still_arrive


async def test_submit_when_deadline_already_passed_then_rejected_without_sending(env: Env) -> None:
    order = env.order(Side.BUY, await env.mark() + 100, deadline_ms=now_ms() - 1)

    result = await env.venue.submit(order)

    assert isinstance(result, Rejected) and "deadline" in result.reason
    assert env.rows(order.client_order_id) == []


# -- unknown outcomes ---------------------------------------------------------------------


async def test_submit_when_response_dropped_after_executing_then_unknown_and_lookup_finds_fill(
    env: Env,
) -> None:
    # Arrange
    order = env.order(Side.BUY, await env.mark() + 100)
    await env.admin("/admin/faults", {"drop_submit_responses": 1})
    # Act
    result = await env.venue.submit(order)
    status = await env.venue.lookup(order.client_order_id, deadline_ms=order.submit_deadline_ms)
    resent = await env.venue.submit(order)
    # Assert: unknown, never a rejection; found by client order id with its fill; the
    # re-send by this process asked first and sent nothing.
    assert isinstance(result, Unknown), result
    assert status.state is VenueOrderState.FILLED and status.filled_qty == order.qty
    assert [f.client_order_id for f in status.fills] == [order.client_order_id]
    assert isinstance(resent, Accepted)
    assert [r["result"] for r in env.rows(order.client_order_id) if r["type"] == "order"] == [
        "accepted"]


@pytest.mark.parametrize("applies", [True, False])
async def test_submit_when_answer_is_5xx_then_unknown_whether_or_not_applied(
    env: Env, applies: bool
) -> None:
    order = env.order(Side.BUY, await env.mark() - 100)
    await env.admin("/admin/faults", {"fail_submits": 1, "fail_status": 503,
                                      "fail_applies": applies})

    result = await env.venue.submit(order)
    status = await env.venue.lookup(order.client_order_id, deadline_ms=order.submit_deadline_ms)

    assert isinstance(result, Unknown), result
    if applies:
        assert status.state is VenueOrderState.OPEN
    else:
        assert status.state is VenueOrderState.NOT_FOUND and status.can_still_arrive


async def test_submit_when_answer_slower_than_timeout_then_unknown_and_applied(env: Env) -> None:
    order = env.order(Side.BUY, await env.mark() + 100)
    await env.admin("/admin/faults", {"delay_submit_responses": 1, "delay_seconds": 2.5})

    result = await env.venue.submit(order)
    status = await env.venue.lookup(order.client_order_id)

    assert isinstance(result, Unknown), result
    assert status.state is VenueOrderState.FILLED


async def test_submit_when_exchange_unreachable_then_unknown_never_rejected(
    env: Env,
) -> None:
    # Arrange: the simulator goes away after start.
    order = env.order(Side.BUY, await env.mark() + 100)
    await env.sim.stop()
    # Act
    result = await env.venue.submit(order)
    # Assert
    assert isinstance(result, Unknown), result


async def test_reconcile_when_submit_answer_lost_then_ledger_filled_once(
    env: Env, redis_client: Any,
) -> None:
    """Gate -> submit whose answer is dropped after executing -> UNKNOWN in the ledger
    (reservation kept) -> reconcile by client order id -> FILLED, fill applied once."""
    from guardrails.gate import OrderGate
    from guardrails.keys import AccountKeys
    from guardrails.ledger import Ledger
    from guardrails.model import Admitted, Intent, OrderState
    from guardrails.reconcile import reconcile
    from tests import gatekit

    # Arrange
    keys = AccountKeys(ACCOUNT)
    cfg = RISK
    await gatekit.seed(redis_client, keys, cfg, marks={SYMBOL: "60000", "ETH/USDT": "3000"})
    gate, ledger = OrderGate(redis_client, keys, cfg), Ledger(redis_client, keys, cfg)
    decision = await gate.admit(Intent(SYMBOL, Side.BUY, Decimal("0.0010"), Decimal("60100.00")),
                                intent_id="i-lost", token=gatekit.TOKEN, holder_id=gatekit.HOLDER)
    assert isinstance(decision, Admitted)
    order = Order(decision.client_order_id, SYMBOL, Side.BUY, Decimal("0.0010"),
                  Decimal("60100.00"), decision.token, decision.submit_deadline_ms)
    await env.admin("/admin/faults", {"drop_submit_responses": 1})
    # Act
    result = await env.venue.submit(order)
    assert isinstance(result, Unknown), result
    await ledger.mark_unknown(order.client_order_id, result.reason)
    report = await reconcile(ledger, env.venue, now_ms=now_ms())
    again = await reconcile(ledger, env.venue, now_ms=now_ms())
    batch = await env.venue.fills_since(None)
    for fill in batch.fills:
        await ledger.apply_fill(fill)  # the pump re-applies every fill: once per fill id
    # Assert
    assert report.ok and report.fills_applied == 1
    after = await ledger.order(order.client_order_id)
    assert after is not None and after.state is OrderState.FILLED and after.open_qty == 0
    assert (await ledger.positions())[SYMBOL].qty == Decimal("0.0010")
    assert again.checked == 0
    assert [f.client_order_id for f in batch.fills] == [order.client_order_id]
    assert len([r for r in read_record(env.record) if r["type"] == "fill"]) == 1
    # ...and neither the secret nor the API key is anywhere in Redis or the record.
    from tests.test_venue_http import redis_dump

    dump = await redis_dump(redis_client) + env.record.read_text()
    assert order.client_order_id in dump  # the dump does see the account's state
    assert env.secret not in dump and env.key not in dump


# -- start-up checks, credentials ---------------------------------------------------------


async def test_start_when_configured_tick_differs_from_exchange_then_refused_naming_both(
    env: Env,
) -> None:
    risk = RiskConfig.model_validate({**RISK_DICT, "instruments": {
        SYMBOL: {"tick": "0.1", "lot": "0.0001", "max_position": "1"},
        "ETH/USDT": {"tick": "0.01", "lot": "0.01", "max_position": "10"},
    }})
    venue = CcxtVenue(venue_cfg(env.sim.url), ACCOUNT, risk=risk, source="x.toml")

    with pytest.raises(VenueError) as e:
        await venue.start()

    text = str(e.value)
    assert "BTC/USDT tick: config 0.1, exchange PRICE_FILTER tickSize 0.01" in text
    assert "ETH/USDT lot: config 0.01, exchange LOT_SIZE stepSize 0.001" in text
    assert "x.toml" in text


async def test_start_when_symbol_not_listed_then_refused(env: Env) -> None:
    risk = RiskConfig.model_validate({**RISK_DICT, "instruments": {
        "DOGE/USDT": {"tick": "0.01", "lot": "1", "max_position": "10"}}})
    with pytest.raises(VenueError, match="DOGE/USDT is not a market of binance"):
        await CcxtVenue(venue_cfg(env.sim.url), ACCOUNT, risk=risk).start()


async def test_start_when_secret_is_wrong_then_refused_by_signature_check(env: Env) -> None:
    # start() reads the account (GET account, signed) to learn its uid: a wrong secret is
    # refused there, before anything trades. (A submit's AuthenticationError is Rejected:
    # test_classify_submit_error_when_ccxt_raises_then_only_certain_refusals_are_rejections.)
    venue = CcxtVenue(venue_cfg(env.sim.url), ACCOUNT, risk=RISK,
                      credentials=Credentials(env.key, "not-the-secret"))
    with pytest.raises(VenueError) as refused:
        await venue.start()
    text = str(refused.value)
    assert "cannot read the account" in text and "AuthenticationError" in text
    assert "not-the-secret" not in text and env.key not in text


async def test_start_when_no_credentials_then_refused_naming_the_env_vars(
    env: Env, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(KEY_ENV)
    monkeypatch.delenv(SECRET_ENV)
    with pytest.raises(VenueError, match=f"{KEY_ENV}.*{SECRET_ENV}"):
        await CcxtVenue(venue_cfg(env.sim.url), ACCOUNT, risk=RISK).start()


async def test_start_when_credentials_file_readable_by_others_then_refused_and_0600_works(
    env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Arrange
    monkeypatch.delenv(KEY_ENV)
    monkeypatch.delenv(SECRET_ENV)
    path = tmp_path / "creds.json"
    path.write_text(json.dumps({"apiKey": env.key, "secret": env.secret}))
    os.chmod(path, 0o644)
    cfg = venue_cfg(env.sim.url, credentials_file=str(path))
    # Act / Assert
    with pytest.raises(VenueError, match="readable by others"):
        await CcxtVenue(cfg, ACCOUNT, risk=RISK).start()
    os.chmod(path, 0o600)
    venue = CcxtVenue(cfg, ACCOUNT, risk=RISK)
    await venue.start()
    try:
        assert isinstance(await venue.balances(), dict)
        assert env.secret not in repr(vars(venue))
    finally:
        await venue.close()


async def test_make_venue_when_ccxt_embedded_then_reaches_the_per_user_binance_daemon(
    redis_client: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Arrange: no credentials: the account's demo key of the bundled simulator.
    monkeypatch.delenv(KEY_ENV, raising=False)
    cfg = parse_config({
        "account": {"venue": "binance", "id": "demo"},
        "risk": RISK_DICT,
        "venue": {"kind": "ccxt", "exchange": "binance", "url": "embedded",
                  "api_key_env": KEY_ENV, "secret_env": SECRET_ENV, "enable_rate_limit": False,
                  "simulator": MARKET.model_dump(mode="json")},
    })
    venue = make_venue(cfg, redis_client)
    await venue.start()
    try:
        # Act
        mark = (await venue.marks([SYMBOL]))[SYMBOL]
        order = Order("c-embedded", SYMBOL, Side.SELL, Decimal("0.001"), mark - 50, 2,
                      now_ms() + 30_000)
        result = await venue.submit(order)
        balances = await venue.balances()
        info = daemon.status(protocol="binance")
        # Assert
        assert isinstance(venue, CcxtVenue) and venue.url.startswith("http://127.0.0.1:")
        assert isinstance(result, Accepted), result
        assert balances[SYMBOL] == Decimal("-0.001") and balances["USDT"] == mark * Decimal("0.001")
        assert info["running"] and info["orders"] == 1
    finally:
        await venue.close()
        daemon.stop(protocol="binance")


# -- classification -----------------------------------------------------------------------


@pytest.mark.parametrize(("error", "expected"), [
    (cx.RequestTimeout("t"), Unknown), (cx.ExchangeNotAvailable("503"), Unknown),
    (cx.NetworkError("reset"), Unknown), (cx.DDoSProtection("429"), Unknown),
    (cx.RateLimitExceeded("-1003"), Unknown), (cx.ExchangeError("?"), Unknown),
    (cx.OperationFailed("-1001"), Unknown), (RuntimeError("bug"), Unknown),
    (cx.InvalidOrder("-2010"), Rejected), (cx.InsufficientFunds("-2010"), Rejected),
    (cx.BadSymbol("-1121"), Rejected), (cx.BadRequest("-1013"), Rejected),
    (cx.AuthenticationError("-1022"), Rejected), (cx.InvalidNonce("-1021"), Rejected),
])
def test_classify_submit_error_when_ccxt_raises_then_only_certain_refusals_are_rejections(
    error: BaseException, expected: type
) -> None:
    assert isinstance(classify_submit_error(error), expected)


async def test_fills_since_when_another_instance_sent_the_orders_then_fills_carry_their_ids(
    env: Env,
) -> None:
    # Arrange: orders sent by this venue; a fresh one (a standby taking over) reads fills.
    orders = [env.order(Side.BUY, await env.mark() + 100) for _ in range(3)]
    for o in orders:
        assert isinstance(await env.venue.submit(o), Accepted)
    fresh = CcxtVenue(venue_cfg(env.sim.url), ACCOUNT, risk=RISK)
    await fresh.start()
    try:
        # Act
        batch = await fresh.fills_since(None)
        later = await fresh.fills_since(batch.cursor)
    finally:
        await fresh.close()
    # Assert: Binance trades name only the order id; the venue maps each to its client
    # order id, and its fill id is the exchange's record of the fill.
    assert [f.client_order_id for f in batch.fills] == [o.client_order_id for o in orders]
    recorded = {r["fill_id"] for r in read_record(env.record) if r["type"] == "fill"}
    assert {f.fill_id for f in batch.fills} == recorded
    assert list(later.fills) == []


async def test_lookup_when_account_has_many_fills_then_only_the_orders_own_fills(env: Env) -> None:
    # Arrange: three crossing orders, each filled once.
    orders = [env.order(Side.BUY, await env.mark() + 100) for _ in range(3)]
    for o in orders:
        assert isinstance(await env.venue.submit(o), Accepted)
    # Act
    statuses = [await env.venue.lookup(o.client_order_id) for o in orders]
    # Assert: each lookup carries exactly its own order's fill.
    for o, st in zip(orders, statuses, strict=True):
        assert [f.client_order_id for f in st.fills] == [o.client_order_id]
    assert len({st.fills[0].fill_id for st in statuses}) == 3


async def test_submit_when_amount_written_with_exponent_then_sent_as_plain_decimal(
    env: Env,
) -> None:
    # Decimal("1E+1") is 10 (a multiple of the lot); written "1E+1" Binance refuses it
    # (-1100, as the simulator does): what reaches the exchange is the plain decimal.
    order = Order("c" + uuid.uuid4().hex[:31], "ETH/USDT", Side.BUY, Decimal("1E+1"),
                  Decimal("2000.00"), 9, now_ms() + 30_000)

    result = await env.venue.submit(order)

    assert isinstance(result, Accepted), result
    [row] = env.rows(order.client_order_id)
    assert row["qty"] == "10.00000000" or Decimal(row["qty"]) == 10


async def test_fills_since_when_new_term_starts_then_resumes_at_the_acknowledged_cursor(
    env: Env, redis_client: Any,
) -> None:
    """A pump passes a cursor back after applying the batch before it: that cursor is
    kept in Redis, and the next term's first ``fills_since(None)`` starts there."""
    from guardrails.keys import AccountKeys

    # Arrange: a term's pump reads two fills and acknowledges them.
    first = CcxtVenue(venue_cfg(env.sim.url), ACCOUNT, risk=RISK, redis=redis_client)
    await first.start()
    old = [env.order(Side.BUY, await env.mark() + 100) for _ in range(2)]
    try:
        for o in old:
            assert isinstance(await first.submit(o), Accepted)
        batch = await first.fills_since(None)
        await first.fills_since(batch.cursor)  # acknowledges the two
    finally:
        await first.close()
    new = env.order(Side.BUY, await env.mark() + 100)
    assert isinstance(await env.venue.submit(new), Accepted)
    # Act: the next term (a fresh venue, as after a takeover)
    second = CcxtVenue(venue_cfg(env.sim.url), ACCOUNT, risk=RISK, redis=redis_client)
    await second.start()
    try:
        resumed = await second.fills_since(None)
    finally:
        await second.close()
    # Assert
    assert [f.client_order_id for f in batch.fills] == [o.client_order_id for o in old]
    assert [f.client_order_id for f in resumed.fills] == [new.client_order_id]
    assert await redis_client.get(AccountKeys(ACCOUNT).venue_cursor) == batch.cursor


@pytest.mark.parametrize(("venue", "risk_symbols", "message"), [
    ({"exchange": "kraken", "url": "embedded"}, ["BTC/USDT"], "exchange must be 'binance'"),
    ({"exchange": "binance", "url": "embedded"}, ["BTC-USDT"], "ccxt symbols BASE/QUOTE"),
    ({"exchange": "binance", "url": "embedded"}, ["BTC/USDT"], "lacks a price for: BTC/USDT"),
    ({"exchange": "binance", "max_recv_window": "90s"}, ["BTC/USDT"], "at most 60s"),
])
def test_config_when_ccxt_venue_is_inconsistent_then_refused_naming_the_field(
    venue: dict[str, Any], risk_symbols: list[str], message: str
) -> None:
    from guardrails.config import ConfigError

    data = {
        "account": {"venue": "binance", "id": "main"},
        "risk": {**RISK_DICT, "instruments": {
            s: {"tick": "0.01", "lot": "0.0001", "max_position": "1"} for s in risk_symbols}},
        "venue": {"kind": "ccxt", **venue},
    }
    with pytest.raises(ConfigError, match=message):
        parse_config(data, "x.toml")


# -- [venue] symbols ----------------------------------------------------------------------


async def test_symbol_mapping_when_instruments_named_otherwise_then_the_venue_speaks_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Instruments ``BTC-USDT``/``ETH-USDT`` mapped to ccxt's ``BTC/USDT``/``ETH/USDT``:
    orders, lookups, fills and marks carry the instrument; ccxt gets its symbols."""
    key, secret = "k" + uuid.uuid4().hex, uuid.uuid4().hex
    monkeypatch.setenv(KEY_ENV, key)
    monkeypatch.setenv(SECRET_ENV, secret)
    renamed = {s.replace("/", "-"): v for s, v in RISK_DICT["instruments"].items()}
    risk = RiskConfig.model_validate({**RISK_DICT, "instruments": renamed})
    market = MARKET.model_copy(update={"start_prices": {"BTC-USDT": Decimal("60000.00"),
                                                        "ETH-USDT": Decimal("3000.00")}})
    exchange = sb.make_exchange(market, risk, record_path=tmp_path / "r.jsonl")
    sim = Simulator(exchange, app=lambda: sb.build_binance_app(
        sb.BinanceSim(exchange, {key: secret}), admin=True))
    url = await sim.start()
    cfg = venue_cfg(url, symbols={"BTC-USDT": SYMBOL, "ETH-USDT": "ETH/USDT"})
    venue = CcxtVenue(cfg, ACCOUNT, risk=risk)
    try:
        await venue.start()
        marks = await venue.marks(["BTC-USDT", "ETH-USDT"])
        assert marks.keys() == {"BTC-USDT", "ETH-USDT"}
        price = marks["BTC-USDT"] - Decimal("10.00")
        order = Order("c" + uuid.uuid4().hex[:31], "BTC-USDT", Side.BUY, Decimal("0.0010"),
                      price, 9, now_ms() + 30_000)
        assert isinstance(await venue.submit(order), Accepted)
        async with aiohttp.ClientSession() as s, s.post(
                url + "/admin/mark", json={"symbol": "BTC-USDT", "price": str(price)}) as r:
            assert r.status == 200
        batch = await venue.fills_since(None)
        assert [(f.symbol, f.client_order_id, f.qty) for f in batch.fills] == [
            ("BTC-USDT", order.client_order_id, Decimal("0.0010"))]
        status = await venue.lookup(order.client_order_id)
        assert status.state is VenueOrderState.FILLED and status.fills[0].symbol == "BTC-USDT"
        assert venue.ccxt_symbol("BTC-USDT") == SYMBOL and venue.instrument(SYMBOL) == "BTC-USDT"
    finally:
        await venue.close()
        await sim.stop()


@pytest.mark.parametrize(("symbols", "why"), [
    ({"BTC/USDT": "BTC/USDC"}, r"BTC/USDT \(BTC/USDC\) is not a market of binance"),
    ({"DOGE/USDT": "DOGE/USDT"}, "maps DOGE/USDT, not in \\[risk.instruments\\]"),
    ({"BTC/USDT": "ETH/USDT"}, "two instruments to one ccxt symbol"),
])
async def test_symbol_mapping_when_wrong_then_refuses_to_start(
    env: Env, symbols: dict[str, str], why: str
) -> None:
    bad = CcxtVenue(venue_cfg(env.sim.url, symbols=symbols), ACCOUNT, risk=RISK)
    with pytest.raises(VenueError, match=why):
        await bad.start()
