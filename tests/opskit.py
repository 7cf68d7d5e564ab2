"""Set-up for the operator-surface tests (status, dashboard, kill): one account with
stored limits, a held lease and marks, and real admissions and fills through the
gate and the ledger (their public APIs, never hand-written risk keys)."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import redis.asyncio as aioredis

from guardrails import limits
from guardrails.config import RiskConfig
from guardrails.gate import OrderGate
from guardrails.keys import ACCOUNTS_INDEX, AccountId, AccountKeys
from guardrails.ledger import Ledger
from guardrails.model import Admitted, Decision, Fill, Intent, Side

BTC = "BTC-USD"
ETH = "ETH-USD"
TOKEN = 7
HOLDER = "ops-test-holder"
ACCOUNT = AccountId("paper", "ops")
KEYS = AccountKeys(ACCOUNT)

RISK = RiskConfig.model_validate({
    "quote_decimals": 6,
    "timezone": "UTC",
    "max_order_notional": "2500",
    "max_gross_exposure": "10000",
    "daily_loss_limit": "250",
    "price_band": "0.05",
    "orders_per_second": "1000",
    "burst": 1000,
    "instruments": {
        BTC: {"tick": "0.01", "lot": "0.0001", "max_position": "0.1"},
        ETH: {"tick": "0.01", "lot": "0.001", "max_position": "1.5"},
    },
})

READ_ONLY_ACL = ["ro", "on", ">ro-pass", "~*", "+@read", "+time", "+ping", "-@write"]
"""A Redis ACL user that may run read commands only (plus TIME and PING)."""


async def seed(r: aioredis.Redis, keys: AccountKeys = KEYS, risk: RiskConfig = RISK) -> None:
    assert await limits.check_or_init(r, keys, risk, "ops-test") is None
    await r.set(keys.fence, TOKEN)
    await r.set(keys.lease, f"{TOKEN}:{HOLDER}", px=600_000)
    await r.sadd(ACCOUNTS_INDEX, str(keys.account))
    await Ledger(r, keys, risk).update_marks({BTC: Decimal("60000"), ETH: Decimal("3000")})


async def admit(r: aioredis.Redis, intent: Intent, keys: AccountKeys = KEYS) -> Decision:
    gate = OrderGate(r, keys, RISK)
    assert intent.intent_id
    return await gate.admit(intent, intent_id=intent.intent_id, token=TOKEN, holder_id=HOLDER)


async def buy_and_fill(
    r: aioredis.Redis, qty: str, price: str, tag: str, keys: AccountKeys = KEYS,
    symbol: str = BTC, side: Side = Side.BUY, fees_uncounted: tuple[tuple[str, str], ...] = (),
) -> Admitted:
    """Admit an order through the gate, mark it submitted and fill it completely
    (``fees_uncounted``: the fill's fees the venue could not value, ``Fill.fees_uncounted``)."""
    decision = await admit(r, Intent(symbol, side, Decimal(qty), Decimal(price),
                                     intent_id=f"ops-{tag}"), keys)
    assert isinstance(decision, Admitted), decision
    ledger = Ledger(r, keys, RISK)
    await ledger.mark_submitted(decision.client_order_id, f"v-{tag}")
    await ledger.apply_fill(Fill(f"f-{tag}", decision.client_order_id, symbol, side,
                                 Decimal(qty), Decimal(price), int(time.time() * 1000),
                                 fees_uncounted=fees_uncounted))
    return decision


async def read_only_url(r: aioredis.Redis, port: int) -> str:
    """Create the read-only ACL user on the server behind ``r``; its URL."""
    args: list[Any] = ["ACL", "SETUSER", *READ_ONLY_ACL]
    await r.execute_command(*args)
    return f"redis://ro:ro-pass@127.0.0.1:{port}/0"
