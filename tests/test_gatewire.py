"""The gate's own pipelined connection (guardrails/gatewire.py), against a real redis-server.

What must hold: every decision is matched to its own request (pipelined, cancelled
callers, concurrent gates on one client), a killed connection is replaced, a flushed
script cache is reloaded, the client's aclose() closes the wire, and a client the wire
does not speak for is still served (execute_command) with the same decisions.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
import redis.asyncio as aioredis

from guardrails.config import RiskConfig
from guardrails.gate import GateUnavailable, OrderGate
from guardrails.gatewire import GateWire, WireError, pack
from guardrails.keys import AccountKeys
from guardrails.model import Admitted, Intent, Side
from tests.gatekit import HOLDER, SYMBOL, TOKEN, account_keys, risk, seed
from tests.redis_harness import RedisServer, free_port


def wide() -> RiskConfig:
    """Limits that 200 small orders on both sides never reach."""
    return risk(
        max_order_notional="1000000", max_gross_exposure="100000000",
        daily_loss_limit="100000000", orders_per_second="1000000", burst=1_000_000,
        instruments={SYMBOL: {"tick": "0.01", "lot": "0.0001", "max_position": "100"}},
    )


@pytest.fixture
async def acct(redis_client: aioredis.Redis) -> AccountKeys:
    keys = account_keys()
    await seed(redis_client, keys, wide(), marks={SYMBOL: "60000"})
    return keys


def intent(i: int) -> Intent:
    # a distinct quantity per intent: a reply matched to the wrong request shows
    side = Side.BUY if i % 2 == 0 else Side.SELL
    return Intent(SYMBOL, side, Decimal(f"0.{i + 1:04d}"), Decimal("60000"), intent_id=f"w-{i}")


async def decide(g: OrderGate, it: Intent) -> Admitted:
    d = await g.admit(it, intent_id=it.intent_id or "", token=TOKEN, holder_id=HOLDER)
    assert isinstance(d, Admitted), d
    return d


async def wire_clients(r: aioredis.Redis) -> list[dict[str, str]]:
    return [c for c in await r.client_list() if c.get("cmd") == "evalsha"]


async def test_admit_when_plain_client_then_one_wire_connection_serves_every_gate(
    redis_client: aioredis.Redis, acct: AccountKeys,
) -> None:
    # Arrange: two gates on one client
    g1, g2 = OrderGate(redis_client, acct, wide()), OrderGate(redis_client, acct, wide())
    # Act
    for i in range(6):
        await decide(g1 if i % 2 else g2, intent(i))
    # Assert: one shared wire, one connection that ran the EVALSHAs
    wire = GateWire.for_client(redis_client)
    assert wire is not None and g1._wire is wire and g2._wire is wire
    assert len(await wire_clients(redis_client)) == 1


async def test_admit_when_many_concurrent_then_each_reply_is_its_own_request(
    redis_client: aioredis.Redis, acct: AccountKeys,
) -> None:
    g = OrderGate(redis_client, acct, wide())
    its = [intent(i) for i in range(200)]
    # Act: 200 decisions in flight at once on one connection
    got = await asyncio.gather(*(decide(g, it) for it in its))
    # Assert: each decision carries its own order back (qty differs per intent)
    for it, d in zip(its, got, strict=True):
        assert d.intent_id == it.intent_id and not d.duplicate
        assert d.order is not None and d.order.qty == it.qty and d.order.side == it.side
    res = await redis_client.hgetall(acct.reservations)
    buys = sum(int(it.qty * 10_000) for it in its if it.side == Side.BUY)
    sells = sum(int(it.qty * 10_000) for it in its if it.side == Side.SELL)
    assert res[f"{SYMBOL}:buy"] == str(buys) and res[f"{SYMBOL}:sell"] == str(sells)


async def test_admit_when_a_caller_is_cancelled_in_flight_then_the_next_gets_its_own_reply(
    redis_client: aioredis.Redis, acct: AccountKeys,
) -> None:
    g = OrderGate(redis_client, acct, wide())
    await decide(g, intent(0))  # the wire is connected
    # Act: a decision is written, then its caller is cancelled before the reply is read
    task = asyncio.create_task(decide(g, intent(1)))
    for _ in range(3):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    d = await decide(g, intent(2))
    # Assert: the next caller got its own decision, not the abandoned one's
    assert d.intent_id == "w-2" and d.order is not None and d.order.qty == intent(2).qty
    again = await decide(g, intent(1))  # the cancelled one may have run: same decision
    assert again.order is not None and again.order.qty == intent(1).qty


async def test_admit_when_wire_connection_killed_then_next_decision_reconnects(
    redis_client: aioredis.Redis, acct: AccountKeys,
) -> None:
    g = OrderGate(redis_client, acct, wide())
    await decide(g, intent(0))
    [conn] = await wire_clients(redis_client)
    # Act: the server drops the wire's connection
    assert await redis_client.client_kill_filter(_id=conn["id"]) == 1
    for _ in range(100):  # the transport learns of it (no fixed sleep)
        if g._wire is not None and (g._wire._transport is None or g._wire._transport.is_closing()):
            break
        await asyncio.sleep(0.01)
    d = await decide(g, intent(1))
    # Assert: decided on a new connection
    assert not d.duplicate
    [new] = await wire_clients(redis_client)
    assert new["id"] != conn["id"]


async def test_admit_when_script_cache_flushed_then_reloaded_and_decided(
    redis_client: aioredis.Redis, acct: AccountKeys,
) -> None:
    g = OrderGate(redis_client, acct, wide())
    await decide(g, intent(0))
    await redis_client.script_flush()
    d = await decide(g, intent(1))
    assert not d.duplicate and d.order is not None and d.order.qty == intent(1).qty


async def test_aclose_when_wire_in_use_then_client_closes_without_hanging(
    redis_server: RedisServer,
) -> None:
    r = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    keys = account_keys("close")
    await seed(r, keys, wide(), marks={SYMBOL: "60000"})
    g = OrderGate(r, keys, wide())
    await decide(g, intent(0))
    # Act / Assert: the pool disconnects the wire's connection too, promptly
    await asyncio.wait_for(r.aclose(), 5)
    assert g._wire is not None and g._wire._transport is not None
    assert g._wire._transport.is_closing()


async def test_admit_when_client_has_one_connection_then_served_without_the_wire(
    redis_server: RedisServer,
) -> None:
    r = aioredis.Redis.from_url(redis_server.url, decode_responses=True,
                                single_connection_client=True)
    try:
        keys = account_keys("single")
        await seed(r, keys, wide(), marks={SYMBOL: "60000"})
        g = OrderGate(r, keys, wide())
        assert g._wire is None
        d = await decide(g, intent(3))
        assert d.order is not None and d.order.qty == intent(3).qty
    finally:
        await r.aclose()


async def test_admit_when_redis_down_then_unavailable_and_not_sent() -> None:
    r = aioredis.Redis(port=free_port(), socket_connect_timeout=1, socket_timeout=1)
    try:
        g = OrderGate(r, account_keys("down"), wide())
        assert g._wire is not None
        with pytest.raises(GateUnavailable, match="unavailable"):
            await decide(g, intent(0))
        with pytest.raises(WireError) as err:
            await g._wire.call(pack(b"PING"))
        assert err.value.sent is False
    finally:
        await r.aclose()


async def test_call_when_error_reply_then_response_error_and_wire_still_usable(
    redis_client: aioredis.Redis,
) -> None:
    from redis.exceptions import ResponseError

    wire = GateWire.for_client(redis_client)
    assert wire is not None
    await redis_client.set("s", "x")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await wire.call(pack(b"HGET", b"s", b"f"))
    assert await wire.call(pack(b"PING")) == b"PONG"


async def test_decide_when_wire_idle_then_written_at_once_and_later_ones_batched_behind_it(
    redis_client: aioredis.Redis, acct: AccountKeys,
) -> None:
    g = OrderGate(redis_client, acct, wide())
    await decide(g, intent(0))  # connected and warm
    wire = g._wire
    assert wire is not None and not wire._waiting and not wire._out
    # Act: three decisions in one turn; each task runs up to its await
    tasks = [asyncio.create_task(decide(g, intent(i))) for i in (1, 2, 3)]
    await asyncio.sleep(0)
    # Assert: the first was written inside its call (no loop turn added before it); the
    # two asked for while it was in flight wait to go out together at the turn's end
    assert len(wire._waiting) == 1 and len(wire._out) == 2
    got = await asyncio.gather(*tasks)
    assert [d.intent_id for d in got] == ["w-1", "w-2", "w-3"]
    assert [d.order.qty if d.order else None for d in got] == [intent(i).qty for i in (1, 2, 3)]


async def test_call_when_a_write_raises_then_later_replies_still_match_their_requests(
    redis_client: aioredis.Redis, acct: AccountKeys,
) -> None:
    g = OrderGate(redis_client, acct, wide())
    await decide(g, intent(0))
    wire = g._wire
    assert wire is not None
    # Act: a request the transport refuses (not bytes) on the idle wire
    with pytest.raises(TypeError):
        await wire.call("PING")  # type: ignore[arg-type]
    # Assert: nothing was left waiting for a reply; the next ones get their own
    assert not wire._waiting
    assert await wire.call(pack(b"ECHO", b"mine")) == b"mine"
    d = await decide(g, intent(1))
    assert d.order is not None and d.order.qty == intent(1).qty
