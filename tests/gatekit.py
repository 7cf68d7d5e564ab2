"""Shared set-up for the gate/ledger tests: one account, its limits, a live lease."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import redis.asyncio as aioredis

from guardrails import limits
from guardrails.config import RiskConfig
from guardrails.keys import AccountId, AccountKeys
from guardrails.model import Intent, Side

SYMBOL = "BTC-USD"
ETH = "ETH-USD"
TOKEN = 7
HOLDER = "holder-a"

RISK_DICT: dict[str, Any] = {
    "quote_decimals": 6,
    "timezone": "America/New_York",
    "max_order_notional": "2500",
    "max_gross_exposure": "10000",
    "daily_loss_limit": "250",
    "price_band": "0.05",
    "orders_per_second": "1000",
    "burst": 1000,
    "instruments": {
        SYMBOL: {"tick": "0.01", "lot": "0.0001", "max_position": "0.1"},
        ETH: {"tick": "0.01", "lot": "0.001", "max_position": "1.5"},
    },
}


def risk(**overrides: Any) -> RiskConfig:
    return RiskConfig.model_validate({**RISK_DICT, **overrides})


def account_keys(name: str = "t") -> AccountKeys:
    return AccountKeys(AccountId("paper", name))


async def seed(
    r: aioredis.Redis,
    keys: AccountKeys,
    cfg: RiskConfig,
    *,
    marks: dict[str, str] | None = None,
    lease_ms: int = 600_000,
) -> None:
    """Store the limits, hold the lease as HOLDER/TOKEN, set marks (decimal strings)."""
    assert await limits.check_or_init(r, keys, cfg, "test") is None
    await r.set(keys.fence, TOKEN)
    await r.set(keys.lease, f"{TOKEN}:{HOLDER}", px=lease_ms)
    from guardrails.ledger import Ledger

    ms = marks if marks is not None else {SYMBOL: "60000", ETH: "3000"}
    await Ledger(r, keys, cfg).update_marks({k: Decimal(v) for k, v in ms.items()})


def buy(qty: str, price: str = "60000", symbol: str = SYMBOL, **kw: Any) -> Intent:
    return Intent(symbol, Side.BUY, Decimal(qty), Decimal(price), **kw)


def sell(qty: str, price: str = "60000", symbol: str = SYMBOL, **kw: Any) -> Intent:
    return Intent(symbol, Side.SELL, Decimal(qty), Decimal(price), **kw)


RISK_KEYS = ("positions", "reservations", "open_orders", "intents", "fills", "throttle", "nonce")


async def risk_snapshot(r: aioredis.Redis, keys: AccountKeys) -> dict[str, Any]:
    """Every key a decision may change except counters/streams, plus all order records."""
    snap: dict[str, Any] = {}
    for name in RISK_KEYS:
        k = getattr(keys, name)
        t = await r.type(k)
        if t == "hash":
            snap[name] = await r.hgetall(k)
        elif t == "set":
            snap[name] = sorted(await r.smembers(k))
        elif t == "string":
            snap[name] = await r.get(k)
        else:
            snap[name] = t
    snap["orders"] = sorted(await r.keys(keys.order("*").replace("{", "[{]")))
    jt = await r.type(keys.journal)
    snap["journal"] = await r.xlen(keys.journal) if jt == "stream" else jt
    return snap


async def ledger_state(r: aioredis.Redis, keys: AccountKeys, *coids: str) -> dict[str, Any]:
    """Everything a ledger script may change except the journal, plus the order records
    and every trading day's hash."""
    snap = await risk_snapshot(r, keys)
    snap.pop("journal")
    for c in coids:
        t = await r.type(keys.order(c))
        snap[f"order:{c}"] = await r.hgetall(keys.order(c)) if t == "hash" else t
    days = sorted(await r.keys(keys.day("*").replace("{", "[{]")))
    for d in days:
        t = await r.type(d)
        snap[d] = await r.hgetall(d) if t == "hash" else t
    t = await r.type(keys.marks)
    snap["marks"] = await r.hgetall(keys.marks) if t == "hash" else t
    return snap


def risk_for_load() -> RiskConfig:
    """Limits where only the position limit binds: 0.1 BTC = 100 orders of 0.001."""
    return risk(
        max_order_notional="1000000", max_gross_exposure="100000000",
        daily_loss_limit="100000000", orders_per_second="1000000", burst=1_000_000,
    )


async def through_proxy(redis_server_port: int) -> tuple[Any, aioredis.Redis]:
    """A chaos proxy in front of the test's redis-server (its ``lose_replies`` / ``heal``
    lose and restore replies) and a client through it; the caller closes both."""
    from guardrails.chaos.proxy import ChaosProxy

    proxy = ChaosProxy("gate", "127.0.0.1", redis_server_port)
    await proxy.start()
    client = aioredis.Redis.from_url(proxy.url, decode_responses=True, socket_timeout=2,
                                     socket_connect_timeout=2)
    return proxy, client
