"""``guardrails.ccxt.guarded`` in one process: the UNMODIFIED ccxt ``binance`` class (its
URLs pointed at the Binance-protocol simulator, real HTTP on loopback) wrapped around a
real ``Guard`` on a real redis-server. Orders go gate -> ccxt venue -> ledger; denials are
``ccxt.InvalidOrder``s that never reach the exchange; order reads are the ledger's; every
read is the caller's own object, unchanged; every other way to place, change or cancel an
order is routed through the gate or refused before anything is sent; a lease lost while
the exchange's reply is delayed never tells the bot "not sent". (Two real processes,
SIGKILL and SIGSTOP: tests/test_ccxt_guarded_processes.py.)"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import ccxt.async_support as ccxt
import pytest

from guardrails import GuardError
from guardrails.ccxt import (
    GuardedExchange,
    NotActive,
    NotGated,
    OrderDenied,
    OrderMayBeLive,
    guarded,
    passes_through,
)
from guardrails.keys import AccountId, AccountKeys
from guardrails.model import DenyReason
from guardrails.sim import binance as sb
from guardrails.sim.exchange import read_record
from guardrails.sim.server import Simulator
from tests.redis_harness import RedisServer

SYMBOL = "BTC/USDT"
ACCOUNT = "binance:guarded"
KEYS = AccountKeys(AccountId("binance", "guarded"))


def write_config(path: Path, redis_url: str, *, max_position: str = "0.001",
                 max_notional: str = "2500", instrument: str = SYMBOL,
                 symbols: str = "") -> Path:
    """The account's config; ``instrument`` is the gate's name for BTC/USDT and
    ``symbols`` the ``[venue] symbols`` table's body."""
    path.write_text(f"""
[account]
venue = "binance"
id = "guarded"

[redis]
url = "{redis_url}"
socket_timeout = "500ms"

[lease]
ttl = "1500ms"
renew_deadline = "1s"
renew_interval = "250ms"

[risk]
max_order_notional = "{max_notional}"
max_gross_exposure = "100000"
daily_loss_limit = "1000"
price_band = "0.05"
orders_per_second = "50"
burst = 50

[risk.instruments."{instrument}"]
tick = "0.01"
lot = "0.0001"
max_position = "{max_position}"

[venue]
kind = "ccxt"
exchange = "binance"
enable_rate_limit = false
request_timeout = "2s"
symbols = {{ {symbols} }}

[venue.simulator]
seed = 3
step = "1h"
volatility = "0.00001"
start_prices = {{ "{instrument}" = "60000.00" }}
""")
    return path


def plain_exchange(url: str, key: str, secret: str) -> Any:
    """The caller's exchange object, as examples/plain_bot.py builds it."""
    ex = ccxt.binance({
        "apiKey": key, "secret": secret, "enableRateLimit": False,
        "options": {"defaultType": "spot", "fetchMarkets": {"types": ["spot"]},
                    "fetchCurrencies": False, "fetchMargins": False},
    })
    ex.urls["api"]["public"] = ex.urls["api"]["private"] = url + "/api/v3"
    return ex


class Env:
    def __init__(self, config: Path, url: str, key: str, secret: str, record: Path) -> None:
        self.config, self.url, self.key, self.secret, self.record = (
            config, url, key, secret, record)

    def orders(self) -> list[dict[str, Any]]:
        """Every order request the simulator recorded (accepted or not)."""
        return [r for r in read_record(self.record) if r.get("type") == "order"]

    def records(self) -> list[dict[str, Any]]:
        """Everything the simulator recorded (orders, cancels, refusals)."""
        return list(read_record(self.record))

    async def faults(self, **body: Any) -> None:
        """Arm the simulator's fault hooks (``POST /admin/faults``)."""
        async with aiohttp.ClientSession() as s, \
                s.post(self.url + "/admin/faults", json=body) as r:
            assert r.status == 200, await r.text()


@pytest.fixture
async def env(tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch,
              request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    monkeypatch.setenv("GUARDRAILS_LOCK_DIR", str(tmp_path / "locks"))
    (tmp_path / "locks").mkdir(mode=0o700)
    config = write_config(tmp_path / "bot.toml", redis_server.url,
                          **getattr(request, "param", {}))
    from guardrails.config import load_config
    cfg = load_config(config)
    assert cfg.venue.kind == "ccxt" and cfg.venue.simulator is not None
    key, secret = "k" + uuid.uuid4().hex, uuid.uuid4().hex
    record = tmp_path / "record.jsonl"
    exchange = sb.make_exchange(cfg.venue.simulator, cfg.risk, record_path=record)
    sim = Simulator(exchange, app=lambda: sb.build_binance_app(
        sb.BinanceSim(exchange, {key: secret}), admin=True))
    url = await sim.start()
    try:
        yield Env(config, url, key, secret, record)
    finally:
        await sim.stop()


async def run_guarded(env: Env) -> AsyncIterator[tuple[Any, GuardedExchange]]:
    exchange = plain_exchange(env.url, env.key, env.secret)
    try:
        async with guarded(exchange, config=env.config, handle_signals=False) as ex:
            await ex.wait_active()
            yield exchange, ex
    finally:
        await exchange.close()


@pytest.fixture
async def bot(env: Env) -> AsyncIterator[tuple[Any, GuardedExchange]]:
    async for pair in run_guarded(env):
        yield pair


async def bid(ex: Any, below: str = "0.99") -> float:
    ticker = await ex.fetch_ticker(SYMBOL)
    return round(float(ticker["bid"]) * float(below), 2)


async def test_create_order_over_max_notional_raises_order_denied_and_nothing_reaches_exchange(
        env: Env, bot: tuple[Any, GuardedExchange]) -> None:
    _, ex = bot
    price = await bid(ex)
    with pytest.raises(ccxt.InvalidOrder) as caught:  # what an existing bot already catches
        await ex.create_order(SYMBOL, "limit", "buy", 0.05, price)  # ~2970 > 2500
    assert isinstance(caught.value, OrderDenied)
    assert caught.value.reason is DenyReason.MAX_NOTIONAL
    assert env.orders() == []
    assert await ex.fetch_open_orders(SYMBOL) == []


@pytest.mark.parametrize(("call", "reason"), [
    (("market", "buy", 0.0001, None, None), DenyReason.BAD_ORDER),
    (("limit", "buy", 0.0001, 59000, {"stopPrice": 58000}), DenyReason.BAD_ORDER),
    (("limit", "buy", 0.0001, None, None), DenyReason.BAD_ORDER),
    (("limit", "buy", -1, 59000, None), DenyReason.BAD_ORDER),
])
async def test_unmodelled_orders_are_refused_not_passed_through(
        env: Env, bot: tuple[Any, GuardedExchange], call: tuple[Any, ...],
        reason: DenyReason) -> None:
    _, ex = bot
    with pytest.raises(OrderDenied) as caught:
        await ex.create_order(SYMBOL, *call)
    assert caught.value.reason is reason
    with pytest.raises(OrderDenied) as caught:
        await ex.create_order("ETH/USDT", "limit", "buy", 0.001, 3000)
    assert caught.value.reason is DenyReason.UNKNOWN_SYMBOL
    assert env.orders() == []


async def test_create_order_goes_gate_venue_ledger_and_order_reads_are_the_ledgers(
        env: Env, bot: tuple[Any, GuardedExchange]) -> None:
    exchange, ex = bot
    price = await bid(ex)
    order = await ex.create_order(SYMBOL, "limit", "buy", 0.0003, price,
                                  {"clientOrderId": "mybot-1"})
    # The exchange got exactly this order, under the gate's client order id.
    [row] = env.orders()
    assert row["result"] == "accepted" and row["coid"] == order["id"] == order["clientOrderId"]
    assert Decimal(row["qty"]) == Decimal("0.0003") and Decimal(row["price"]) == Decimal(str(price))
    assert order["status"] == "open" and order["info"]["state"] == "SUBMITTED"
    assert order["info"]["token"] == ex.guard.token and order["info"]["intent_id"] == "mybot-1"
    # Idempotent on clientOrderId: the same call is the same order, not a second one.
    again = await ex.create_order(SYMBOL, "limit", "buy", 0.0003, price,
                                  {"clientOrderId": "mybot-1"})
    assert again["id"] == order["id"] and len(env.orders()) == 1
    # Reads come from the ledger: by our id or the exchange's.
    assert (await ex.fetch_order(order["id"]))["id"] == order["id"]
    assert (await ex.fetch_order(order["info"]["venue_order_id"]))["id"] == order["id"]
    assert [o["id"] for o in await ex.fetch_open_orders(SYMBOL)] == [order["id"]]
    with pytest.raises(ccxt.OrderNotFound):
        await ex.fetch_order("no-such-order")
    # Cancel through the ledger: canceled at the exchange, then terminal in the ledger.
    canceled = await ex.cancel_order(order["id"], SYMBOL)
    assert canceled["status"] == "canceled"
    assert await ex.fetch_open_orders(SYMBOL) == []
    assert [o["status"] for o in await exchange.fetch_orders(SYMBOL)] == ["canceled"]
    with pytest.raises(ccxt.OrderNotFound):
        await ex.cancel_order(order["id"], SYMBOL)


async def test_other_methods_pass_through_to_the_callers_object_unchanged(
        env: Env, bot: tuple[Any, GuardedExchange]) -> None:
    exchange, ex = bot
    ticker = await ex.fetch_ticker(SYMBOL)
    # The caller's number type is untouched (the venue's exact strings live in its twin).
    assert isinstance(ticker["bid"], float) and exchange.number is float
    assert ex.id == "binance" and ex.markets is exchange.markets
    assert ex.fetch_balance.__self__ is exchange


async def test_guard_stop_ends_the_body_cleanly_and_later_calls_are_not_active(env: Env) -> None:
    exchange = plain_exchange(env.url, env.key, env.secret)
    after_stop = 0
    try:
        async with guarded(exchange, config=env.config, handle_signals=False) as ex:
            await ex.wait_active()
            await ex.create_order(SYMBOL, "limit", "buy", 0.0001, await bid(ex))
            ex.guard.stop()  # as SIGTERM does with handle_signals
            while True:  # the bot's loop: ended by the stop, never spinning on
                try:
                    await ex.create_order(SYMBOL, "limit", "buy", 0.0001, await bid(ex))
                except NotActive:
                    after_stop += 1
                await asyncio.sleep(0.01)
        with pytest.raises(ccxt.ExchangeNotAvailable) as caught:
            await ex.create_order(SYMBOL, "limit", "buy", 0.0001, 59000)
        assert isinstance(caught.value, NotActive)
    finally:
        await exchange.close()
    assert len(env.orders()) <= 2 and after_stop < 100


async def test_config_must_name_the_objects_exchange_and_no_url(env: Env, tmp_path: Path) -> None:
    okx, binance = ccxt.okx(), ccxt.binance()
    try:
        with pytest.raises(ValueError, match="exchange object is 'okx'"):
            guarded(okx, config=env.config)
        text = env.config.read_text().replace('exchange = "binance"',
                                              'exchange = "binance"\nurl = "embedded"')
        other = tmp_path / "url.toml"
        other.write_text(text)
        with pytest.raises(ValueError, match="url must be unset"):
            guarded(binance, config=other)
    finally:
        await okx.close()
        await binance.close()


MAPPED = {"instrument": "BTC-USDT", "symbols": '"BTC-USDT" = "BTC/USDT"'}


@pytest.mark.parametrize("env", [MAPPED], indirect=True)
async def test_symbol_mapping_when_instrument_named_otherwise_then_caller_speaks_ccxt_symbols(
        env: Env, bot: tuple[Any, GuardedExchange]) -> None:
    """``[venue] symbols`` maps the gate's ``BTC-USDT`` to the exchange's ``BTC/USDT``:
    the bot says ``BTC/USDT``, the ledger keeps ``BTC-USDT``, the exchange gets BTCUSDT."""
    _, ex = bot
    order = await ex.create_order(SYMBOL, "limit", "buy", 0.0002, await bid(ex))
    assert order["symbol"] == SYMBOL
    [row] = env.orders()
    assert row["result"] == "accepted" and row["symbol"] == "BTC-USDT"
    [open_order] = await ex.fetch_open_orders(SYMBOL)
    assert open_order["id"] == order["id"] and open_order["symbol"] == SYMBOL
    assert (await ex.guard.venue.marks(["BTC-USDT"])).keys() == {"BTC-USDT"}
    with pytest.raises(OrderDenied) as caught:  # the instrument's own name is not a symbol
        await ex.create_order("BTC-USDT", "limit", "buy", 0.0002, 59000)
    assert caught.value.reason is DenyReason.UNKNOWN_SYMBOL


@pytest.mark.parametrize("env", [{"instrument": "BTC-USDT",
                                  "symbols": '"BTC-USDT" = "BTC/USDC"'}], indirect=True)
async def test_symbol_mapping_to_a_symbol_the_exchange_lacks_refuses_to_start(env: Env) -> None:
    exchange = plain_exchange(env.url, env.key, env.secret)
    try:
        with pytest.raises(GuardError, match=r"BTC-USDT \(BTC/USDC\) is not a market of binance"):
            async with guarded(exchange, config=env.config, handle_signals=False):
                pass
    finally:
        await exchange.close()
    assert env.orders() == []


# -- every other way to an order: through the gate, or refused (F1) ----------------------


LIMIT_CONVENIENCES = [
    ("create_limit_buy_order", lambda px: (SYMBOL, 0.005, px)),
    ("create_limit_order", lambda px: (SYMBOL, "buy", 0.005, px)),
    ("create_limit_sell_order", lambda px: (SYMBOL, 0.005, px)),
    ("createLimitBuyOrder", lambda px: (SYMBOL, 0.005, px)),
    ("createOrder", lambda px: (SYMBOL, "limit", "buy", 0.005, px)),
]


@pytest.mark.parametrize(("name", "args"), LIMIT_CONVENIENCES)
async def test_limit_convenience_when_over_max_position_then_the_gates_denial_applies(
        env: Env, bot: tuple[Any, GuardedExchange], name: str, args: Any) -> None:
    """ccxt's create_limit_*_order are create_order with fixed arguments: the gate's
    position limit (0.001) refuses 0.005 through them exactly as through create_order."""
    # Arrange
    _, ex = bot
    price = await bid(ex)
    with pytest.raises(OrderDenied) as direct:
        await ex.create_order(SYMBOL, "limit", "buy", 0.005, price)
    # Act
    with pytest.raises(OrderDenied) as caught:
        await getattr(ex, name)(*args(price))
    # Assert
    assert caught.value.reason is direct.value.reason is DenyReason.POSITION_LIMIT
    assert env.orders() == []


async def test_limit_convenience_within_limits_then_goes_gate_venue_ledger(
        env: Env, bot: tuple[Any, GuardedExchange]) -> None:
    _, ex = bot
    price = await bid(ex)
    first = await ex.create_limit_buy_order(SYMBOL, 0.0002, price, {"clientOrderId": "conv-1"})
    second = await ex.createLimitOrder(SYMBOL, "buy", 0.0002, price)
    again = await ex.create_limit_buy_order(SYMBOL, 0.0002, price, {"clientOrderId": "conv-1"})
    rows = env.orders()
    assert [r["coid"] for r in rows] == [first["id"], second["id"]]  # the repeat is no order
    assert all(r["result"] == "accepted" for r in rows) and again["id"] == first["id"]
    for order in (first, second):  # admitted under the term, recorded in the ledger
        assert order["info"]["token"] == ex.guard.token
        assert (await ex.fetch_order(order["id"]))["info"]["state"] == "SUBMITTED"
    assert first["info"]["intent_id"] == "conv-1"


@pytest.mark.parametrize(("name", "args"), [
    ("create_market_buy_order", (SYMBOL, 0.0001)),
    ("create_market_sell_order", (SYMBOL, 0.0001)),
    ("create_market_order", (SYMBOL, "buy", 0.0001)),
    ("createMarketBuyOrder", (SYMBOL, 0.0001)),
])
async def test_market_convenience_then_refused_as_create_order_refuses_market(
        env: Env, bot: tuple[Any, GuardedExchange], name: str, args: tuple[Any, ...]) -> None:
    _, ex = bot
    before = env.records()
    with pytest.raises(OrderDenied) as caught:
        await getattr(ex, name)(*args)
    assert caught.value.reason is DenyReason.BAD_ORDER and "market" in caught.value.detail
    assert env.records() == before


BINANCE_ORDER = {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC",
                 "quantity": "0.005", "price": "59000.00"}
UNGATED = [
    ("edit_order", ("x", SYMBOL, "limit", "buy", 0.005, 59000)),
    ("editOrder", ("x", SYMBOL, "limit", "buy", 0.005, 59000)),
    ("privatePostOrder", (BINANCE_ORDER,)),
    ("private_post_order", (BINANCE_ORDER,)),
    ("privatePostOrderCancelReplace", ({**BINANCE_ORDER, "cancelReplaceMode": "STOP_ON_FAILURE",
                                        "cancelOrigClientOrderId": "x"},)),
    ("create_orders", ([{"symbol": SYMBOL, "type": "limit", "side": "buy", "amount": 0.005,
                         "price": 59000}],)),
    ("create_order_ws", (SYMBOL, "limit", "buy", 0.005, 59000)),
    ("create_limit_buy_order_ws", (SYMBOL, 0.005, 59000)),
    ("create_stop_order", (SYMBOL, "limit", "buy", 0.005, 59000, 58000)),
    ("create_stop_limit_order", (SYMBOL, "buy", 0.005, 59000, 58000)),
    ("create_post_only_order", (SYMBOL, "limit", "buy", 0.005, 59000)),
    ("create_market_buy_order_with_cost", (SYMBOL, 10)),
    ("cancel_all_orders", (SYMBOL,)),
    ("cancel_orders", (["x"], SYMBOL)),
    ("cancel_order_ws", ("x", SYMBOL)),
    ("close_position", (SYMBOL,)),
    ("sapiPostMarginOrder", ({**BINANCE_ORDER},)),
    ("fapiPrivatePostOrder", ({**BINANCE_ORDER},)),
    ("fetch", ("http://127.0.0.1:9/api/v3/order", "POST")),
    ("fetch2", ("order", "private", "POST", BINANCE_ORDER)),
    ("request", ("order", "private", "POST", BINANCE_ORDER)),
    ("watch_multiple", ("ws://127.0.0.1:9", ["x"])),
    ("withdraw", ("USDT", 1, "address")),
]


@pytest.mark.parametrize(("name", "args"), UNGATED)
async def test_method_not_gated_then_refused_by_name_and_nothing_reaches_the_exchange(
        env: Env, bot: tuple[Any, GuardedExchange], name: str, args: tuple[Any, ...]) -> None:
    """Before the fix each of these was the caller's raw method: ``privatePostOrder``
    placed an order past the gate, ``edit_order`` sent cancelReplace."""
    _, ex = bot
    before = env.records()
    with pytest.raises(ccxt.NotSupported) as caught:
        await getattr(ex, name)(*args)
    assert isinstance(caught.value, NotGated) and caught.value.method == name
    assert f"binance.{name} is refused" in str(caught.value)
    if "order" in name.lower():
        assert "create_order(symbol, 'limit'" in str(caught.value)
    assert env.records() == before and await ex.fetch_open_orders() == []


async def test_other_methods_pass_through_only_if_they_cannot_place_change_or_cancel_orders(
        env: Env, bot: tuple[Any, GuardedExchange]) -> None:
    """Reads, precision helpers and data pass through (camelCase too); no ccxt method that
    creates, edits or cancels, and no implicit API method, is on the passthrough list."""
    exchange, ex = bot
    assert ex.fetchTicker.__self__ is exchange and ex.load_markets.__self__ is exchange
    await ex.loadMarkets()
    assert ex.amount_to_precision(SYMBOL, 0.00012345) == "0.0001"
    assert ex.iso8601(0) == "1970-01-01T00:00:00.000Z" and ex.milliseconds() > 0
    assert ex.has is exchange.has and ex.rateLimit == exchange.rateLimit
    assert ex.fetchOrder.__func__ is GuardedExchange.fetch_order  # the ledger's view
    implicit = passed = 0
    for name in dir(exchange):
        if name.startswith("_") or not callable(getattr(exchange, name)):
            continue
        snake = name if name.islower() else None
        if snake is None or not passes_through(snake):
            continue
        passed += 1
        assert not snake.startswith(("create_", "edit_", "cancel_", "close_position")), snake
        method = getattr(type(exchange), name, None)
        if "Entry" in getattr(method, "__qualname__", ""):
            implicit += 1
    assert passed > 100 and implicit == 0


# -- the term ends while the exchange's reply is on its way (F4) -------------------------


def _revoke(redis_server: RedisServer) -> None:
    """Another holder takes the lease (as after a kill --revoke and a takeover)."""
    redis_server.client().set(KEYS.lease, "999999:someone-else", px=60_000)


async def test_create_order_when_lease_lost_while_reply_delayed_then_caller_gets_the_order_sent(
        env: Env, redis_server: RedisServer, bot: tuple[Any, GuardedExchange]) -> None:
    """The order is admitted and sent; the exchange applies it and answers 1.2 s later;
    meanwhile the lease is taken and the term ends. A bot that retries on NetworkError
    must get that one order back, not a "nothing was sent" that makes it place another."""
    # Arrange
    _, ex = bot
    price = await bid(ex)
    await env.faults(delay_submit_responses=1, delay_seconds=1.2)
    loop = asyncio.get_running_loop()
    loop.call_later(0.3, _revoke, redis_server)
    # Act: the bot's retry loop
    told: list[Exception] = []
    order = None
    until = loop.time() + 4
    while order is None and loop.time() < until:
        try:
            order = await ex.create_order(SYMBOL, "limit", "buy", 0.0002, price)
        except ccxt.NetworkError as e:
            told.append(e)
            await asyncio.sleep(0.1)
    # Assert: what the caller was told is what the exchange got.
    [row] = env.orders()
    assert row["result"] == "accepted"
    assert order is not None, f"told {told[:1]} for an order the exchange accepted"
    assert order["id"] == row["coid"] and order["info"]["state"] == "SUBMITTED"
    assert told == [] and ex.guard.token is None  # the term did end meanwhile


async def test_create_order_when_sent_and_its_record_unreadable_then_order_may_be_live(
        env: Env, redis_server: RedisServer, bot: tuple[Any, GuardedExchange]) -> None:
    """Redis stops answering while the exchange's reply is delayed: the answer cannot be
    recorded or read back. The caller is told the order may be live, with its client
    order id — not ``NotActive`` (a NetworkError a bot would retry under a new id)."""
    # Arrange
    _, ex = bot
    price = await bid(ex)
    await env.faults(delay_submit_responses=1, delay_seconds=1.2)
    asyncio.get_running_loop().call_later(0.3, redis_server.pause)
    # Act
    try:
        with pytest.raises(OrderMayBeLive) as caught:
            await ex.create_order(SYMBOL, "limit", "buy", 0.0002, price)
    finally:
        redis_server.resume()
    # Assert
    assert not isinstance(caught.value, ccxt.NetworkError)
    [row] = env.orders()
    assert row["result"] == "accepted" and row["coid"] == caught.value.client_order_id
