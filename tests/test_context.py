"""The Context: gate first, then venue, outcome recorded — against a real redis-server
with the real gate, ledger, lease scripts and paper venue."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal

import pytest
import redis.asyncio as aioredis
import redis.exceptions

from guardrails.config import Config, parse_config
from guardrails.gate import OrderGate
from guardrails.keys import AccountKeys
from guardrails.killswitch import read_latch
from guardrails.lease import Acquired, Lease
from guardrails.ledger import Ledger
from guardrails.limits import check_or_init
from guardrails.model import (
    Admitted,
    Denied,
    DenyReason,
    Fill,
    Intent,
    Order,
    OrderState,
    Side,
    TradingState,
)
from guardrails.runtime.context import Context, MarkBook
from guardrails.runtime.services import AccountServices
from guardrails.venues.base import SubmitResult, Unknown, VenueError
from guardrails.venues.paper import PaperVenue, read_record
from tests.redis_harness import RedisServer

CONFIG = {
    "account": {"venue": "paper", "id": "ctx"},
    "lease": {"ttl": "10s", "renew_deadline": "5s", "renew_interval": "1s"},
    "risk": {
        "max_order_notional": "100000",
        "max_gross_exposure": "1000000",
        "daily_loss_limit": "10000",
        "instruments": {"BTC-USD": {"tick": "0.01", "lot": "0.0001", "max_position": "10"}},
    },
    "venue": {"kind": "paper", "name": "ctxvenue", "start_prices": {"BTC-USD": "60000.00"}},
}


@dataclass
class FakeTerm:
    """The context's local view of a leadership term (the token is a real lease's)."""

    token: int
    holder_id: str
    ok: bool = True
    valid_calls: int = 0
    invalid_after: int | None = None

    def valid(self) -> bool:
        self.valid_calls += 1
        if self.invalid_after is not None and self.valid_calls > self.invalid_after:
            return False
        return self.ok


@dataclass
class World:
    cfg: Config
    redis: aioredis.Redis
    keys: AccountKeys
    venue: PaperVenue
    ledger: Ledger
    term: FakeTerm

    def context(self, venue: PaperVenue | None = None) -> Context:
        return Context(
            "s1", gate=OrderGate(self.redis, self.keys, self.cfg.risk), ledger=self.ledger,
            venue=venue or self.venue, leadership=self.term, risk=self.cfg.risk,
            marks=MarkBook(),
        )

    async def orders_at_venue(self) -> list[dict[str, str]]:
        return [r for r in await read_record(self.redis, "ctxvenue") if r["type"] == "order"]

    async def intent(self, side: Side = Side.BUY, offset: str = "-0.01", tag: str = "") -> Intent:
        mark = (await self.venue.marks(["BTC-USD"]))["BTC-USD"]
        price = (mark * (1 + side.sign * Decimal(offset))).quantize(Decimal("0.01"))
        return Intent("BTC-USD", side, Decimal("0.001"), price, tag=tag)


@pytest.fixture
async def world(redis_client: aioredis.Redis) -> AsyncIterator[World]:
    cfg = parse_config(CONFIG)
    keys = AccountKeys(cfg.account_id)
    assert await check_or_init(redis_client, keys, cfg.risk, "test") is None
    lease = Lease(redis_client, keys, "holder-1", cfg.lease)
    acquired = await lease.try_acquire()
    assert isinstance(acquired, Acquired)
    venue = PaperVenue(redis_client, cfg.venue, cfg.account_id, risk=cfg.risk)  # type: ignore[arg-type]
    await venue.start()
    ledger = Ledger(redis_client, keys, cfg.risk)
    await ledger.update_marks(await venue.marks(["BTC-USD"]))
    yield World(cfg, redis_client, keys, venue, ledger, FakeTerm(acquired.token, "holder-1"))


async def test_submit_when_admitted_then_sent_with_token_and_recorded_submitted(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    ctx = world.context()
    caplog.set_level(logging.INFO)

    decision = await ctx.submit(await world.intent())

    assert isinstance(decision, Admitted)
    orders = await world.orders_at_venue()
    assert [(o["coid"], o["token"], o["result"]) for o in orders] == [
        (decision.client_order_id, str(world.term.token), "accepted")
    ]
    record = await world.ledger.order(decision.client_order_id)
    assert record is not None and record.state is OrderState.SUBMITTED
    assert any("event=order.admitted" in r.getMessage() for r in caplog.records)


async def test_submit_when_leadership_invalid_then_denied_not_active_and_nothing_sent(
    world: World,
) -> None:
    world.term.ok = False
    ctx = world.context()

    decision = await ctx.submit(await world.intent())

    assert isinstance(decision, Denied) and decision.reason is DenyReason.NOT_ACTIVE
    assert await world.orders_at_venue() == []
    assert await world.redis.hgetall(world.keys.stats) == {}  # the gate was never asked


async def test_submit_when_denied_locally_in_a_tight_loop_then_other_tasks_still_run(
    world: World,
) -> None:
    """A bot that loops on submit with no other await (denied: not active, or a bad
    intent) must not starve the event loop: the lease loop and the stop run beside it."""
    world.term.ok = False
    ctx = world.context()
    intent = await world.intent()
    ran = asyncio.Event()

    async def other() -> None:
        ran.set()

    async def spin() -> int:
        n = 0
        while not ran.is_set():
            await ctx.submit(intent)
            await ctx.submit(None)  # type: ignore[arg-type]  # a bad intent: bad_order
            n += 1
        return n

    asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(other()))
    loops = await asyncio.wait_for(spin(), 5.0)
    assert loops >= 1


async def test_submit_when_token_is_stale_then_redis_denies_and_nothing_sent(
    world: World,
) -> None:
    ctx = world.context()
    world.term.token -= 1  # an older holder's token: valid() locally, refused by Redis

    decision = await ctx.submit(await world.intent())

    assert isinstance(decision, Denied) and decision.reason is DenyReason.STALE_TOKEN
    assert await world.orders_at_venue() == []


async def test_submit_when_same_intent_twice_then_admitted_once_and_sent_once(
    world: World,
) -> None:
    ctx = world.context()
    intent = await world.intent(tag="same")

    first = await ctx.submit(intent)
    second = await ctx.submit(intent)

    assert isinstance(first, Admitted) and isinstance(second, Admitted)
    assert second.duplicate and second.client_order_id == first.client_order_id
    assert len(await world.orders_at_venue()) == 1


class LostAckVenue(PaperVenue):
    """Fault injection: the order reaches the exchange, the answer is lost on the way back."""

    async def submit(self, order: Order) -> SubmitResult:
        await super().submit(order)
        return Unknown("ack lost (injected)")


async def test_submit_when_venue_outcome_unknown_then_marked_unknown_and_not_resent(
    world: World,
) -> None:
    lossy = LostAckVenue(world.redis, world.cfg.venue, world.cfg.account_id, risk=world.cfg.risk)  # type: ignore[arg-type]
    ctx = world.context(venue=lossy)

    decision = await ctx.submit(await world.intent())

    assert isinstance(decision, Admitted)
    record = await world.ledger.order(decision.client_order_id)
    assert record is not None and record.state is OrderState.UNKNOWN
    assert len(await world.orders_at_venue()) == 1  # sent once, never retried blindly


async def test_submit_when_leadership_lost_after_admission_then_not_sent_and_expired(
    world: World,
) -> None:
    world.term.invalid_after = 1  # valid for the admission, not for the send
    ctx = world.context()

    decision = await ctx.submit(await world.intent())

    assert isinstance(decision, Admitted)
    assert await world.orders_at_venue() == []
    record = await world.ledger.order(decision.client_order_id)
    assert record is not None and record.state is OrderState.EXPIRED


async def test_submit_when_redis_down_then_denied_redis_unavailable(
    world: World, redis_server: RedisServer
) -> None:
    ctx = world.context()
    intent = await world.intent()
    redis_server.kill()

    decision = await ctx.submit(intent)

    assert isinstance(decision, Denied) and decision.reason is DenyReason.REDIS_UNAVAILABLE


async def test_cancel_when_order_resting_then_canceled_at_venue_and_in_ledger(
    world: World,
) -> None:
    ctx = world.context()
    decision = await ctx.submit(await world.intent(offset="-0.02"))
    assert isinstance(decision, Admitted)

    assert await ctx.cancel(decision.client_order_id) is True

    record = await world.ledger.order(decision.client_order_id)
    assert record is not None and record.state is OrderState.CANCELED
    assert await ctx.open_orders() == []


async def test_read_when_filled_then_position_is_accounts_combined_position(
    world: World,
) -> None:
    ctx = world.context()
    decision = await ctx.submit(await world.intent(offset="0.01"))  # crosses: fills at once
    assert isinstance(decision, Admitted)
    batch = await world.venue.fills_since(None)
    for fill in batch.fills:
        await world.ledger.apply_fill(fill)

    assert await ctx.position("BTC-USD") == Decimal("0.001")
    assert (await ctx.positions())["BTC-USD"].qty == Decimal("0.001")
    assert (await ctx.budget()).limit == Decimal("10000")


async def test_submit_when_admission_reply_was_lost_then_retry_sends_it_once(
    world: World,
) -> None:
    # Arrange: the gate admitted the intent but its reply never reached the context
    # (simulated by admitting directly), so the order is PENDING_SUBMIT and unsent.
    ctx = world.context()
    intent = await world.intent(tag="lost-reply")
    intent_id = intent.resolved_intent_id("s1")
    gate = OrderGate(world.redis, world.keys, world.cfg.risk)
    first = await gate.admit(
        intent, intent_id=intent_id, token=world.term.token, holder_id=world.term.holder_id
    )
    assert isinstance(first, Admitted)
    assert await world.orders_at_venue() == []

    # Act: the strategy retries the same intent, twice.
    retry = await ctx.submit(intent)
    again = await ctx.submit(intent)

    # Assert: admitted once (nothing new reserved), sent exactly once, then not again.
    assert isinstance(retry, Admitted) and retry.duplicate
    assert isinstance(again, Admitted) and again.duplicate
    orders = await world.orders_at_venue()
    assert [o["coid"] for o in orders] == [first.client_order_id]
    record = await world.ledger.order(first.client_order_id)
    assert record is not None and record.state is OrderState.SUBMITTED
    reserved = await world.redis.hget(world.keys.reservations, "BTC-USD:buy")
    assert reserved == "10"  # 0.001 BTC in 0.0001 lots, reserved once


async def test_submit_when_duplicate_was_admitted_by_an_older_term_then_not_sent(
    world: World,
) -> None:
    ctx = world.context()
    intent = await world.intent(tag="old-term")
    intent_id = intent.resolved_intent_id("s1")
    gate = OrderGate(world.redis, world.keys, world.cfg.risk)
    first = await gate.admit(
        intent, intent_id=intent_id, token=world.term.token, holder_id=world.term.holder_id
    )
    assert isinstance(first, Admitted)
    # The next term (same holder for the test, new token) retries it: the older term's
    # send may still be in flight, so only reconciliation may decide its fate.
    await world.redis.set(world.keys.lease, f"{world.term.token + 1}:{world.term.holder_id}", px=10_000)
    await world.redis.set(world.keys.fence, world.term.token + 1)
    world.term.token += 1

    retry = await ctx.submit(intent)

    assert isinstance(retry, Admitted) and retry.duplicate
    assert await world.orders_at_venue() == []


# -- reads fail closed with one type; bad intents are values, not exceptions -------------


@pytest.mark.parametrize("read", ["open_orders", "positions", "position", "budget", "mark"])
async def test_read_when_redis_down_then_context_unavailable_not_raw_redis_error(
    world: World, redis_server: RedisServer, read: str
) -> None:
    from guardrails.runtime.context import ContextUnavailable

    ctx = Context(
        "s1", gate=OrderGate(world.redis, world.keys, world.cfg.risk), ledger=world.ledger,
        venue=world.venue, leadership=world.term, risk=world.cfg.risk,
        marks=MarkBook(),  # empty: mark() has to ask the (Redis-backed paper) venue
    )
    redis_server.kill()
    call = {
        "open_orders": lambda: ctx.open_orders(),
        "positions": lambda: ctx.positions(),
        "position": lambda: ctx.position("BTC-USD"),
        "budget": lambda: ctx.budget(),
        "mark": lambda: ctx.mark("BTC-USD"),
    }[read]

    with pytest.raises(ContextUnavailable) as info:
        await call()

    assert not isinstance(info.value, redis.exceptions.RedisError)
    assert isinstance(info.value.__cause__, redis.exceptions.RedisError | OSError | VenueError)


async def test_read_when_redis_answers_then_values_not_wrapped(world: World) -> None:
    ctx = world.context()

    assert await ctx.open_orders() == []
    assert await ctx.position("BTC-USD") == Decimal(0)
    assert (await ctx.mark("BTC-USD")) > 0


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"qty": 0.001}, "qty must be a Decimal (got float 0.001)"),
        ({"qty": 1}, "qty must be a Decimal (got int 1)"),
        ({"qty": True}, "qty must be a Decimal"),
        ({"side": "buy"}, "side must be Side.BUY or Side.SELL (got 'buy')"),
        ({"price": Decimal("NaN")}, "price must be finite"),
        ({"price": Decimal("sNaN")}, "price must be finite"),
        ({"qty": Decimal("-Infinity")}, "qty must be finite"),
        ({"qty": Decimal("-0.001")}, "qty must be greater than 0"),
        ({"price": Decimal("1e10000000")}, "price is out of range"),
        ({"qty": Decimal("1e-10000000")}, "qty is out of range"),
        ({"price": Decimal("60000.0000000000001")}, "more than 15 significant digits"),
        ({"symbol": "BTC-USD" * 10}, "symbol must be a str of 1-32"),
        ({"symbol": None}, "symbol must be a str"),
        ({"intent_id": "x" * 129}, "intent_id must be 1-128 printable ASCII"),
        ({"intent_id": "has space"}, "intent_id must be 1-128"),
        ({"tag": "t" * 129}, "tag must be a str of at most 128"),
    ],
)
async def test_submit_when_intent_is_malformed_then_denied_bad_order_and_nothing_reaches_redis(
    world: World, change: dict[str, object], expected: str
) -> None:
    import dataclasses

    ctx = world.context()
    intent = dataclasses.replace(await world.intent(), **change)  # type: ignore[arg-type]
    denials_before = await world.redis.xlen(world.keys.denials)

    decision = await ctx.submit(intent)

    assert isinstance(decision, Denied) and decision.reason is DenyReason.BAD_ORDER
    assert expected in decision.detail
    assert len(decision.detail) < 200
    assert await world.redis.xlen(world.keys.denials) == denials_before
    assert await world.redis.hlen(world.keys.intents) == 0
    assert await world.orders_at_venue() == []


async def test_submit_when_intent_is_not_an_intent_then_denied_bad_order(world: World) -> None:
    decision = await world.context().submit(("BTC-USD", "buy", 1, 60000))  # type: ignore[arg-type]

    assert isinstance(decision, Denied) and decision.reason is DenyReason.BAD_ORDER
    assert "not an Intent: tuple" in decision.detail


@pytest.mark.parametrize("history", ["intact", "epoch_gone", "alarm_set"])
async def test_fill_of_unknown_order_when_history_lost_then_not_foreign_else_halts(
    world: World, history: str
) -> None:
    """A fill of an order the ledger does not know halts the account (another writer)
    — unless the account's history was lost under this instance (FLUSHALL, an empty
    restart): the ledger that knew the order went with it, so it is no evidence of a
    second writer, and `fence recover` rebuilds from the venue. Found by the 600 s ccxt
    chaos run: fills arriving between a FLUSHALL and the lease's refusal halted the
    account for good."""
    await world.redis.set(world.keys.epoch, "e-1")
    if history == "epoch_gone":
        await world.redis.delete(world.keys.epoch)
    elif history == "alarm_set":
        await world.redis.hset(world.keys.fence_alarm, mapping={"reason": "history_lost"})
    services = AccountServices(world.cfg, world.redis, world.venue, MarkBook(),
                               instance_id="i-1", token=lambda: world.term.token)
    fill = Fill("f-x", "never-admitted", "BTC-USD", Side.BUY, Decimal("0.001"),
                Decimal("60000.00"), 1)
    await services._apply_fill(world.ledger, fill)
    latch = await read_latch(world.redis, world.keys)
    assert (latch.state is TradingState.HALTED) is (history == "intact"), latch
