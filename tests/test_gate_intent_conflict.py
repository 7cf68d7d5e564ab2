"""#9.1: an intent id admitted once can never carry another order past the gate.

The gate stores a digest of what it admitted with the intent; the same id with other
fields is denied ``intent_conflict`` (counted and journaled), and whatever the Context
sends is built from the admitted record in Redis, never from the caller's ``Intent``.
Real redis-server, the real gate script, a real Context and the paper venue."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
import redis.asyncio as aioredis

from guardrails.config import Config, parse_config
from guardrails.gate import OrderGate, decode_intent_record, intent_digest
from guardrails.keys import AccountKeys
from guardrails.lease import Acquired, Lease
from guardrails.ledger import Ledger
from guardrails.limits import check_or_init
from guardrails.model import Admitted, Denied, DenyReason, Intent, OrderState, Side
from guardrails.runtime.context import Context, MarkBook
from guardrails.venues.paper import PaperVenue, read_record
from tests.gatekit import HOLDER, SYMBOL, TOKEN, account_keys, buy, risk, risk_snapshot, seed, sell

VENUE = "conflictvenue"
CONFIG = {
    "account": {"venue": "paper", "id": "conflict"},
    "lease": {"ttl": "10s", "renew_deadline": "5s", "renew_interval": "1s"},
    "risk": {
        "max_order_notional": "2500",
        "max_gross_exposure": "100000",
        "daily_loss_limit": "10000",
        "instruments": {"BTC-USD": {"tick": "0.01", "lot": "0.0001", "max_position": "10"}},
    },
    "venue": {"kind": "paper", "name": VENUE, "start_prices": {"BTC-USD": "60000.00"}},
}


@dataclass
class Term:
    token: int
    holder_id: str

    def valid(self) -> bool:
        return True


@dataclass
class World:
    cfg: Config
    redis: aioredis.Redis
    keys: AccountKeys
    venue: PaperVenue
    ledger: Ledger
    term: Term

    def context(self) -> Context:
        return Context(
            "s1", gate=self.gate(), ledger=self.ledger, venue=self.venue,
            leadership=self.term, risk=self.cfg.risk, marks=MarkBook(),
        )

    def gate(self) -> OrderGate:
        return OrderGate(self.redis, self.keys, self.cfg.risk)

    async def orders_at_venue(self) -> list[dict[str, str]]:
        return [r for r in await read_record(self.redis, VENUE) if r["type"] == "order"]


@pytest.fixture
async def world(redis_client: aioredis.Redis) -> AsyncIterator[World]:
    cfg = parse_config(CONFIG)
    keys = AccountKeys(cfg.account_id)
    assert await check_or_init(redis_client, keys, cfg.risk, "test") is None
    acquired = await Lease(redis_client, keys, "holder-1", cfg.lease).try_acquire()
    assert isinstance(acquired, Acquired)
    venue = PaperVenue(redis_client, cfg.venue, cfg.account_id, risk=cfg.risk)  # type: ignore[arg-type]
    await venue.start()
    ledger = Ledger(redis_client, keys, cfg.risk)
    await ledger.update_marks(await venue.marks(["BTC-USD"]))
    yield World(cfg, redis_client, keys, venue, ledger, Term(acquired.token, "holder-1"))


def _intent(qty: str, price: str = "59400.00") -> Intent:
    return Intent("BTC-USD", Side.BUY, Decimal(qty), Decimal(price), intent_id="reused-id")


async def test_submit_when_intent_id_reused_with_other_qty_then_conflict_and_nothing_sent(
    world: World,
) -> None:
    # Arrange: the gate admitted 0.001 BTC under the id, but the reply never reached the
    # strategy (admitted directly), so the order is PENDING_SUBMIT and unsent.
    first = await world.gate().admit(
        _intent("0.001"), intent_id="reused-id", token=world.term.token,
        holder_id=world.term.holder_id,
    )
    assert isinstance(first, Admitted) and not first.duplicate
    reserved = await world.redis.hgetall(world.keys.reservations)

    # Act: the same id now asks for 0.04 BTC (2,376 USD: within max notional, 40x the size)
    ctx = world.context()
    decision = await ctx.submit(_intent("0.04"))

    # Assert: denied, nothing reached the venue, nothing more reserved
    assert isinstance(decision, Denied), decision
    assert decision.reason is DenyReason.INTENT_CONFLICT
    assert "0.001" in decision.detail
    assert await world.orders_at_venue() == []
    assert await world.redis.hgetall(world.keys.reservations) == reserved
    stats = await world.redis.hgetall(world.keys.stats)
    assert stats.get("denied:intent_conflict") == "1"
    last = (await world.redis.xrevrange(world.keys.denials, count=1))[0][1]
    assert last["reason"] == "intent_conflict" and last["qty"] == "0.04"

    # and the very same order under that id is still sent once, as admitted
    retry = await ctx.submit(_intent("0.001"))
    assert isinstance(retry, Admitted) and retry.duplicate
    orders = await world.orders_at_venue()
    assert [(o["coid"], o["qty"], o["price"]) for o in orders] == [
        (first.client_order_id, "0.001", "59400.00")
    ]
    record = await world.ledger.order(first.client_order_id)
    assert record is not None and record.state is OrderState.SUBMITTED


@pytest.mark.parametrize(
    "other",
    [_intent("0.001", "59400.01"), Intent("BTC-USD", Side.SELL, Decimal("0.001"),
                                          Decimal("59400.00"), intent_id="reused-id"),
     _intent("0.0010")],
    ids=["price", "side", "qty spelled differently"],
)
async def test_submit_when_intent_id_reused_with_any_other_field_then_conflict(
    world: World, other: Intent
) -> None:
    ctx = world.context()
    first = await ctx.submit(_intent("0.001"))
    assert isinstance(first, Admitted)
    decision = await ctx.submit(other)
    assert isinstance(decision, Denied) and decision.reason is DenyReason.INTENT_CONFLICT
    assert len(await world.orders_at_venue()) == 1


async def test_admit_when_new_then_reply_carries_the_recorded_order(world: World) -> None:
    d = await world.gate().admit(
        _intent("0.0020"), intent_id="reused-id", token=world.term.token,
        holder_id=world.term.holder_id,
    )
    assert isinstance(d, Admitted) and d.order is not None
    record = await world.ledger.order(d.client_order_id)
    assert record is not None
    assert (d.order.symbol, d.order.side, str(d.order.qty), str(d.order.price)) == (
        record.symbol, record.side, "0.0020", "59400.00")
    assert (d.order.token, d.order.submit_deadline_ms) == (record.token, record.deadline_ms)
    again = await world.gate().admit(
        _intent("0.0020"), intent_id="reused-id", token=world.term.token,
        holder_id=world.term.holder_id,
    )
    assert isinstance(again, Admitted) and again.duplicate and again.order == d.order


# -- the gate alone ---------------------------------------------------------------------


@pytest.fixture
async def acct(redis_client: aioredis.Redis) -> AccountKeys:
    keys = account_keys()
    await seed(redis_client, keys, risk())
    return keys


async def _admit(r: aioredis.Redis, keys: AccountKeys, intent: Intent, iid: str) -> Any:
    return await OrderGate(r, keys, risk()).admit(intent, intent_id=iid, token=TOKEN,
                                                  holder_id=HOLDER)


async def test_admit_when_conflicting_repeat_then_state_unchanged_and_digest_stored(
    redis_client: aioredis.Redis, acct: AccountKeys
) -> None:
    first = await _admit(redis_client, acct, buy("0.0100"), "x")
    assert isinstance(first, Admitted)
    stored = await redis_client.hget(acct.intents, "x")
    assert stored is not None
    assert stored.rsplit("|", 1)[1] == intent_digest(SYMBOL, "buy", "0.0100", "60000")
    before = await risk_snapshot(redis_client, acct)
    for other in (sell("0.0100"), buy("0.0100", "60000.01"), buy("0.0100", symbol="ETH-USD"),
                  buy("0.0400")):
        d = await _admit(redis_client, acct, other, "x")
        assert isinstance(d, Denied) and d.reason is DenyReason.INTENT_CONFLICT, (other, d)
    assert await risk_snapshot(redis_client, acct) == before
    assert (await redis_client.hgetall(acct.stats))["denied:intent_conflict"] == "4"


async def test_admit_when_legacy_record_without_digest_then_compared_with_order_record(
    redis_client: aioredis.Redis, acct: AccountKeys
) -> None:
    first = await _admit(redis_client, acct, buy("0.0100"), "old")
    assert isinstance(first, Admitted)
    stored = await redis_client.hget(acct.intents, "old")
    assert stored is not None
    await redis_client.hset(acct.intents, "old", stored.rsplit("|", 1)[0])  # schema-1 record
    same = await _admit(redis_client, acct, buy("0.0100"), "old")
    assert isinstance(same, Admitted) and same.duplicate
    other = await _admit(redis_client, acct, buy("0.0200"), "old")
    assert isinstance(other, Denied) and other.reason is DenyReason.INTENT_CONFLICT
    await redis_client.delete(acct.order(first.client_order_id))
    gone = await _admit(redis_client, acct, buy("0.0100"), "old")
    assert isinstance(gone, Denied) and gone.reason is DenyReason.BAD_STATE


def test_recovered_record_when_digest_differs_then_conflict() -> None:
    digest = intent_digest(SYMBOL, "buy", "0.01", "60000")
    record = f"cabc|7|123|-|{digest}"
    assert isinstance(decode_intent_record("i", record, digest), Admitted)
    other = intent_digest(SYMBOL, "buy", "0.02", "60000")
    d = decode_intent_record("i", record, other)
    assert isinstance(d, Denied) and d.reason is DenyReason.INTENT_CONFLICT
