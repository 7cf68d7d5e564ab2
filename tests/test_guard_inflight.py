"""Orders in flight, in one process against a real redis-server and the paper venue.

What must hold: an order admitted just before a kill is canceled when it lands at the
venue, however late before its permit deadline it lands (the kill listener sweeps again
while anything is left open); and a repeat of an intent whose first send is still
unanswered (the caller's own timeout gave up waiting) is never sent a second time — the
venue receives one order per admission, and the in-doubt order is settled by looking it
up, never by re-sending it.
"""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from guardrails import Admitted, Guard, Intent, Side
from guardrails.config import Config
from guardrails.keys import AccountId, AccountKeys
from guardrails.killswitch import KillSwitch
from guardrails.model import (
    Order,
    OrderState,
    Rejected,
    SubmitResult,
    TradingState,
    VenueOrderState,
)
from guardrails.venues import make_venue
from tests.redis_harness import RedisServer
from tests.run_harness import write_config

KEYS = AccountKeys(AccountId("paper", "t1"))


class SlowVenue:
    """The paper venue, with its submits slowed: ``land_after`` s before the order reaches
    the venue, or ``reply_after`` s after it has (the answer is late, the order is not).
    A cancel of an order that has not landed yet is answered "unknown order" and
    forgotten, as an exchange does (Binance: -2011): the paper venue would remember it and
    refuse the order on arrival, which would hide what the kill listener must do."""

    def __init__(self, inner: Any, *, land_after: float = 0.0, reply_after: float = 0.0) -> None:
        self._inner = inner
        self.land_after, self.reply_after = land_after, reply_after
        self.submits: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def cancel(self, coid: str) -> SubmitResult:
        if coid not in self.submits:
            return Rejected("unknown order (not at the venue yet)")
        result: SubmitResult = await self._inner.cancel(coid)
        return result

    async def submit(self, order: Order) -> SubmitResult:
        await asyncio.sleep(self.land_after)
        self.submits.append(order.client_order_id)
        result: SubmitResult = await self._inner.submit(order)
        await asyncio.sleep(self.reply_after)
        return result


def _guard(tmp_path: Path, redis_server: RedisServer, **slow: float) -> tuple[Guard, list[SlowVenue]]:
    cfg = write_config(tmp_path / "c.toml", redis_url=redis_server.url, extra_strategies="#",
                       ttl="3s", renew_deadline="2s", renew_interval="500ms")
    built: list[SlowVenue] = []

    def factory(c: Config, redis: aioredis.Redis) -> Any:
        built.append(SlowVenue(make_venue(c, redis), **slow))
        return built[-1]

    return Guard.from_config(cfg, instance_id="g1", handle_signals=False, venue=factory), built


def _bid(n: int) -> Intent:
    return Intent("BTC-USD", Side.BUY, Decimal("0.0001"), Decimal("59000.00"), intent_id=f"f-{n}")


async def _until(what: Any, within: float) -> Any:
    end = time.monotonic() + within
    while True:
        got = await what()
        if got or time.monotonic() > end:
            return got
        await asyncio.sleep(0.1)


async def test_kill_when_an_admitted_order_lands_after_the_first_sweeps_then_it_is_canceled(
    redis_server: RedisServer, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    # Arrange: the order reaches the venue 1.8 s after it was admitted (its permit runs 3 s)
    guard, built = _guard(tmp_path, redis_server, land_after=1.8)
    async with guard:
        async with guard.active() as ctx:
            submit = asyncio.create_task(ctx.submit(_bid(1)))
            await _until(lambda: redis_client.hlen(KEYS.intents), 2.0)
            # Act: the kill, while the admitted order is on its way
            await KillSwitch(redis_client, KEYS).set_state(
                TradingState.HALTED, reason="test", by="test")
            decision = await submit
            assert isinstance(decision, Admitted), decision
            coid = decision.client_order_id
            venue = built[0]

            async def gone() -> bool:
                status = await venue.lookup(coid)
                return status.state is not VenueOrderState.OPEN

            # Assert: it landed (the venue has it) and the listener's later sweeps took it
            # down; without them it rests at the venue
            assert venue.submits == [coid]
            assert await _until(gone, 8.0), await venue.lookup(coid)
            guard.stop()


async def test_submit_when_repeated_while_the_first_send_is_unanswered_then_sent_once(
    redis_server: RedisServer, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    # Arrange: the order reaches the venue at once; the venue's answer takes 1.5 s
    guard, built = _guard(tmp_path, redis_server, reply_after=1.5)
    async with guard:
        async with guard.active() as ctx:
            # Act: the bot's own timeout gives up on the first submit, then it retries
            # the same intent — what a client with a request timeout does
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(ctx.submit(_bid(2)), 0.3)
            again = await ctx.submit(_bid(2))
            await asyncio.sleep(2.0)  # past the first reply's lateness
            venue = built[0]
            # Assert: one admission, one order at the venue
            assert isinstance(again, Admitted) and again.duplicate, again
            assert venue.submits == [again.client_order_id]
            # the order left in doubt (its send was cancelled before the answer was
            # recorded) is settled by looking it up after its deadline, not by a re-send

            async def settled() -> bool:
                rec = await guard_ledger_state(redis_client, again.client_order_id)
                return rec not in (None, OrderState.PENDING_SUBMIT.value)

            assert await _until(settled, 15.0)
            assert await guard_ledger_state(redis_client, again.client_order_id) == \
                OrderState.SUBMITTED.value
            assert venue.submits == [again.client_order_id]
            guard.stop()


async def guard_ledger_state(r: aioredis.Redis, coid: str) -> str | None:
    state: str | None = await r.hget(KEYS.order(coid), "state")
    return state
