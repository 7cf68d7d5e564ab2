"""#16: the maintained aggregates (lib/agg.lua, key `agg`) — the gate trusts them only
when they were made for the stored limits and agree with the symbol at hand, rebuilds
them otherwise, and the chaos checker recomputes them independently. Real redis-server."""

from __future__ import annotations

from decimal import Decimal

import pytest
import redis
import redis.asyncio as aioredis

from guardrails.chaos.checker import AggregateView, check_aggregates, read_aggregates
from guardrails.gate import OrderGate
from guardrails.keys import AccountKeys
from guardrails.ledger import Ledger
from guardrails.model import Admitted, Fill, Side
from tests.gatekit import ETH, HOLDER, SYMBOL, TOKEN, account_keys, buy, risk, seed, sell
from tests.redis_harness import RedisServer


@pytest.fixture
async def acct(redis_client: aioredis.Redis) -> AccountKeys:
    keys = account_keys("agg")
    await seed(redis_client, keys, risk())
    return keys


async def admit(r: aioredis.Redis, k: AccountKeys, intent: object, iid: str) -> Admitted:
    d = await OrderGate(r, k, risk()).admit(intent, intent_id=iid, token=TOKEN,  # type: ignore[arg-type]
                                             holder_id=HOLDER)
    assert isinstance(d, Admitted), d
    return d


async def book(r: aioredis.Redis, k: AccountKeys) -> None:
    """A position and resting orders in two symbols, through the real gate and ledger."""
    d = await admit(r, k, buy("0.0200"), "p1")
    await Ledger(r, k, risk()).apply_fill(
        Fill("f1", d.client_order_id, SYMBOL, Side.BUY, Decimal("0.0200"), Decimal("60000"),
             ts_ms=1))
    await admit(r, k, sell("0.0100", "60100"), "r1")
    await admit(r, k, buy("0.100", "3000", ETH), "r2")
    await Ledger(r, k, risk()).update_marks({SYMBOL: Decimal("59000"), ETH: Decimal("3010")})


def view(server: RedisServer, k: AccountKeys) -> AggregateView:
    client = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        return read_aggregates(client, k, risk())
    finally:
        client.close()


async def test_checker_when_book_built_through_scripts_then_aggregates_consistent(
    redis_server: RedisServer, redis_client: aioredis.Redis, acct: AccountKeys
) -> None:
    await book(redis_client, acct)
    v = view(redis_server, acct)
    assert v.agg and v.agg["digest"] == await redis_client.hget(acct.limits, "digest")
    assert check_aggregates(v) == []


@pytest.mark.parametrize("field", ["rloss", "gross", "uloss", f"g:{ETH}", f"u:{SYMBOL}"])
async def test_checker_when_aggregate_field_wrong_then_invariant_4(
    redis_server: RedisServer, redis_client: aioredis.Redis, acct: AccountKeys, field: str
) -> None:
    await book(redis_client, acct)
    await redis_client.hincrby(acct.aggregates, field, 1)
    found = check_aggregates(view(redis_server, acct))
    assert found and all(v.invariant == 4 for v in found), found


async def test_admit_when_symbols_aggregate_is_stale_then_whole_book_read_and_rebuilt(
    redis_server: RedisServer, redis_client: aioredis.Redis, acct: AccountKeys
) -> None:
    # Arrange: the aggregates understate BTC's exposure (as if a write bypassed them)
    await book(redis_client, acct)
    await redis_client.hset(acct.aggregates, mapping={f"g:{SYMBOL}": "0", "gross": "0"})
    # Act: the next BTC admission notices and recomputes from the book
    await admit(redis_client, acct, buy("0.0010"), "after")
    # Assert
    assert check_aggregates(view(redis_server, acct)) == []


async def test_admit_when_limits_changed_then_aggregates_rebuilt_for_the_new_digest(
    redis_server: RedisServer, redis_client: aioredis.Redis, acct: AccountKeys
) -> None:
    await book(redis_client, acct)
    await redis_client.hset(acct.aggregates, mapping={"rloss": "0"})  # wrong, but...
    await redis_client.hset(acct.limits, "digest", "another")  # ...made for other limits
    await admit(redis_client, acct, buy("0.0010", "60000", SYMBOL), "new-limits")
    v = view(redis_server, acct)
    assert v.agg["digest"] == "another" and check_aggregates(v) == []


async def test_gross_exposure_when_other_symbol_grows_then_gate_sees_it_through_aggregates(
    redis_client: aioredis.Redis,
) -> None:
    # max gross 10,000; ETH grows to 1.5 x 3,000 after the aggregates exist, then BTC
    # orders take the gross to 9,900: the next 600 of BTC must be denied on the sum.
    cfg = risk(daily_loss_limit="100000")
    keys = account_keys("agg-gross")
    await seed(redis_client, keys, cfg)
    gate = OrderGate(redis_client, keys, cfg)

    async def go(intent: object, iid: str) -> object:
        return await gate.admit(intent, intent_id=iid, token=TOKEN, holder_id=HOLDER)  # type: ignore[arg-type]

    for iid, intent in (("eth1", buy("0.800", "3000", ETH)), ("btc0", buy("0.0100")),
                        ("eth2", buy("0.700", "3000", ETH)), ("btc1", buy("0.0400")),
                        ("btc2", buy("0.0400"))):
        assert isinstance(await go(intent, iid), Admitted), iid
    assert (await redis_client.hget(keys.aggregates, "gross")) == str(9_900_000_000)
    d = await go(buy("0.0100"), "btc3")
    assert not isinstance(d, Admitted) and d.reason.value == "gross_exposure", d


async def test_rebuild_when_sweep_fixes_reservations_then_aggregates_dropped(
    redis_client: aioredis.Redis, acct: AccountKeys
) -> None:
    from guardrails.reconcile import sweep
    from tests.fakevenue import FakeVenue

    await book(redis_client, acct)
    await redis_client.hset(acct.reservations, f"{SYMBOL}:sell", "999")  # wrong total
    await sweep(Ledger(redis_client, acct, risk()), FakeVenue(), fix=True)  # type: ignore[arg-type]
    assert not await redis_client.exists(acct.aggregates)


async def test_marks_when_many_symbols_move_then_aggregates_follow_exactly(
    redis_server: RedisServer, redis_client: aioredis.Redis,
) -> None:
    # 12 symbols: the marks script reads whole hashes above 8 symbols (the other path)
    inst = {f"S{i:02d}-USD": {"tick": "0.01", "lot": "0.001", "max_position": "100"}
            for i in range(12)}
    cfg = risk(instruments=inst, max_gross_exposure="1000000", max_order_notional="100000",
               daily_loss_limit="100000")
    keys = account_keys("agg-many")
    await seed(redis_client, keys, cfg, marks={s: "100" for s in inst})
    gate, ledger = OrderGate(redis_client, keys, cfg), Ledger(redis_client, keys, cfg)
    for i, s in enumerate(sorted(inst)):
        d = await gate.admit(buy("2.000", "100", s), intent_id=f"b{i}", token=TOKEN,
                             holder_id=HOLDER)
        assert isinstance(d, Admitted), d
        if i % 2 == 0:
            await ledger.apply_fill(Fill(f"f{i}", d.client_order_id, s, Side.BUY,
                                         Decimal("1.000"), Decimal("100"), ts_ms=1))
    for round_ in range(3):
        await ledger.update_marks({s: Decimal(90 + 7 * round_ + i) for i, s in
                                   enumerate(sorted(inst))})
        client = redis.Redis.from_url(redis_server.url, decode_responses=True)
        try:
            v = read_aggregates(client, keys, cfg)
        finally:
            client.close()
        assert v.agg and check_aggregates(v) == [], round_
        assert int(v.agg["uloss"]) > 0 or round_ > 0
