"""``guardrails.ccxt.guarded`` in one process: the UNMODIFIED ccxt ``binance`` class (its
URLs pointed at the Binance-protocol simulator, real HTTP on loopback) wrapped around a
real ``Guard`` on a real redis-server. Orders go gate -> ccxt venue -> ledger; denials are
``ccxt.InvalidOrder``s that never reach the exchange; order reads are the ledger's; every
other call is the caller's own object, unchanged. (Two real processes, SIGKILL and
SIGSTOP: tests/test_ccxt_guarded_processes.py.)"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import ccxt.async_support as ccxt
import pytest

from guardrails import GuardError
from guardrails.ccxt import GuardedExchange, NotActive, OrderDenied, guarded
from guardrails.model import DenyReason
from guardrails.sim import binance as sb
from guardrails.sim.exchange import read_record
from guardrails.sim.server import Simulator
from tests.redis_harness import RedisServer

SYMBOL = "BTC/USDT"
ACCOUNT = "binance:guarded"


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
        sb.BinanceSim(exchange, {key: secret})))
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
