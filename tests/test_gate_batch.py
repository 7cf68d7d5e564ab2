"""Batched decisions (gate.py BATCH_MAX, gatewire.GateWire.decide), against a real redis-server.

What must hold: a decision asked for on an idle wire goes out at once (a batch of one);
the decisions asked for behind it in one event-loop turn go out as EVALSHAs of at most
BATCH_MAX decisions; each is decided exactly as if it had been sent alone, in the
same order (same admissions, denials, duplicates, conflicts, reservations, aggregates,
order records and counters); one decision failing on the stored state does not touch
the others; a batch whose reply is lost is recovered decision by decision; the script
refuses a request that is not whole decisions.
"""

from __future__ import annotations

import asyncio
import math
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.exceptions import ResponseError

import guardrails
from guardrails.gate import BATCH_MAX, OrderGate
from guardrails.keys import SCHEMA_VERSION, AccountKeys
from guardrails.model import Admitted, Decision, Denied, DenyReason, Intent, Side, client_order_id_for
from guardrails.scripts import source as lua_source
from tests.gatekit import ETH, HOLDER, SYMBOL, TOKEN, account_keys, buy, risk, seed, through_proxy


async def evalsha_calls(r: aioredis.Redis) -> int:
    stats = await r.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def evalshas_for(n: int) -> int:
    """EVALSHAs for n decisions asked for in one turn on an idle wire: the first is
    written at once (a batch of one), the others queue behind it in batches."""
    return 1 + math.ceil((n - 1) / BATCH_MAX)


async def decide(g: OrderGate, it: Intent) -> Decision:
    return await g.admit(it, intent_id=it.intent_id or "", token=TOKEN, holder_id=HOLDER)


def shape(d: Decision) -> tuple[Any, ...]:
    """What a decision says, without the instant it was made."""
    if isinstance(d, Admitted):
        o = d.order
        return ("admitted", d.intent_id, d.client_order_id, d.duplicate, d.token,
                None if o is None else (o.symbol, o.side, o.qty, o.price))
    assert isinstance(d, Denied)
    return ("denied", d.intent_id, d.reason, d.detail)


_TIMES = ("created_ms", "updated_ms", "deadline_ms")


async def state_of(r: aioredis.Redis, keys: AccountKeys) -> dict[str, Any]:
    """The account's book, aggregates, counters and order records, without instants."""
    out: dict[str, Any] = {
        "reservations": await r.hgetall(keys.reservations),
        "positions": await r.hgetall(keys.positions),
        "agg": await r.hgetall(keys.aggregates),
        "stats": await r.hgetall(keys.stats),
        "open": sorted(await r.smembers(keys.open_orders)),
        "intents": {i: v.split("|")[0] + "|" + v.split("|")[4]
                    for i, v in (await r.hgetall(keys.intents)).items()},
    }
    for coid in out["open"]:
        rec = await r.hgetall(keys.order(coid))
        out[coid] = {f: v for f, v in rec.items() if f not in _TIMES}
    return out


@pytest.fixture
async def acct(redis_client: aioredis.Redis) -> AccountKeys:
    keys = account_keys("batch")
    await seed(redis_client, keys, risk())
    return keys


@pytest.fixture
async def gate(redis_client: aioredis.Redis, acct: AccountKeys) -> OrderGate:
    """The account's gate, its wire connected and the script loaded (one admission)."""
    g = OrderGate(redis_client, acct, risk())
    assert isinstance(await decide(g, buy("0.0001", intent_id="warm-up")), Admitted)
    return g


def intents(n: int) -> list[Intent]:
    # a distinct quantity per intent: a reply matched to the wrong decision shows
    return [buy(f"0.{i + 1:04d}", intent_id=f"b-{i}") for i in range(n)]


async def test_admit_when_concurrent_then_one_evalsha_per_batch_of_at_most_batch_max(
    redis_client: aioredis.Redis, acct: AccountKeys, gate: OrderGate,
) -> None:
    g = gate
    its = intents(2 * BATCH_MAX + 8)
    before = await evalsha_calls(redis_client)
    # Act: every decision asked for in one event-loop turn
    got = await asyncio.gather(*(decide(g, it) for it in its))
    # Assert: the first alone, then ceil(39 / 16) EVALSHAs; each decision its own
    assert await evalsha_calls(redis_client) - before == evalshas_for(len(its)) == 4
    for it, d in zip(its, got, strict=True):
        assert isinstance(d, Admitted) and not d.duplicate and d.intent_id == it.intent_id
        assert d.order is not None and d.order.qty == it.qty
    # one batch is decided at one instant: its deadlines are the lease's expiry then
    assert len({d.submit_deadline_ms for d in got[1:1 + BATCH_MAX]}) == 1
    res = await redis_client.hgetall(acct.reservations)
    assert res[f"{SYMBOL}:buy"] == str(1 + sum(int(it.qty * 10_000) for it in its))
    assert (await redis_client.hgetall(acct.stats))["admitted"] == str(len(its) + 1)


async def test_admit_when_sequential_then_each_decision_is_sent_alone(
    redis_client: aioredis.Redis, acct: AccountKeys, gate: OrderGate,
) -> None:
    g = gate
    before = await evalsha_calls(redis_client)
    for it in intents(5):
        assert isinstance(await decide(g, it), Admitted)
    # nothing waits to gather others: a lone decision is a batch of one
    assert await evalsha_calls(redis_client) - before == 5


# -- a batch decides as the same decisions one by one would ---------------------------------

_POOL = 16  # intent ids drawn from a small pool: repeats are duplicates or conflicts


def tight() -> Any:
    """Limits a batch reaches: three large orders pass the gross exposure or the loss
    budget, six the BTC position limit."""
    return risk(max_order_notional="5000", max_gross_exposure="12000", daily_loss_limit="700",
                instruments={SYMBOL: {"tick": "0.01", "lot": "0.0001", "max_position": "0.5"},
                             ETH: {"tick": "0.01", "lot": "0.001", "max_position": "1.5"}})


@st.composite
def orders(draw: st.DrawFn) -> list[tuple[int, str, Side, int, int]]:
    """(intent id index, symbol, side, qty in lots, price offset from the mark in ticks)."""
    one = st.tuples(
        st.integers(0, _POOL - 1),
        st.sampled_from([SYMBOL, SYMBOL, ETH, "XRP-USD"]),
        st.sampled_from([Side.BUY, Side.SELL]),
        st.sampled_from([1, 300, 800, 800, 900]),
        st.sampled_from([0, 0, 100, -100, 50_000, 200_000]),  # 200,000 ticks: off the band
    )
    return draw(st.lists(one, min_size=4, max_size=BATCH_MAX + 4))


def intent_of(i: int, sym: str, side: Side, lots: int, off: int) -> Intent:
    if sym == ETH:
        qty, price = Decimal(lots) * Decimal("0.001"), Decimal("3000") + Decimal(off) / 100
    else:
        qty, price = Decimal(lots) * Decimal("0.0001"), Decimal("60000") + Decimal(off) / 100
    return Intent(sym, side, qty, price, intent_id=f"p-{i}")


_RUN = iter(range(1_000_000))


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=orders())
async def test_batch_when_decided_then_same_as_one_by_one(
    redis_client: aioredis.Redis, ops: list[tuple[int, str, Side, int, int]],
) -> None:
    n = next(_RUN)
    batched, alone = account_keys(f"batched-{n}"), account_keys(f"alone-{n}")
    for keys in (batched, alone):
        await seed(redis_client, keys, tight())
    its = [intent_of(*op) for op in ops]
    g_batch = OrderGate(redis_client, batched, tight())
    g_alone = OrderGate(redis_client, alone, tight())
    await decide(g_batch, buy("0.0001", intent_id="warm-up"))
    await decide(g_alone, buy("0.0001", intent_id="warm-up"))
    # Act: the same intents, in the same order: in batches, then one at a time
    before = await evalsha_calls(redis_client)
    got_batch = await asyncio.gather(*(decide(g_batch, it) for it in its))
    assert await evalsha_calls(redis_client) - before == evalshas_for(len(its))
    got_alone = [await decide(g_alone, it) for it in its]
    # Assert: the same decisions and the same state
    assert [shape(d) for d in got_batch] == [shape(d) for d in got_alone]
    assert await state_of(redis_client, batched) == await state_of(redis_client, alone)


async def test_batch_when_burst_is_spent_inside_it_then_later_decisions_throttled(
    redis_client: aioredis.Redis,
) -> None:
    keys = account_keys("burst")
    cfg = risk(orders_per_second="0.001", burst=3)  # a token per 1,000 s: no refill here
    await seed(redis_client, keys, cfg)
    g = OrderGate(redis_client, keys, cfg)
    # Act: five decisions in one turn (one at once, four in one batch); the bucket holds
    # three
    got = await asyncio.gather(*(decide(g, it) for it in intents(5)))
    # Assert
    assert [isinstance(d, Admitted) for d in got] == [True, True, True, False, False]
    assert all(isinstance(d, Denied) and d.reason is DenyReason.THROTTLED for d in got[3:])


async def test_batch_when_same_intent_twice_then_second_is_a_duplicate_or_a_conflict(
    redis_client: aioredis.Redis, acct: AccountKeys,
) -> None:
    g = OrderGate(redis_client, acct, risk())
    same = [buy("0.0100", intent_id="twice"), buy("0.0100", intent_id="twice"),
            buy("0.0200", intent_id="twice")]
    got = await asyncio.gather(*(decide(g, it) for it in same))
    assert isinstance(got[0], Admitted) and not got[0].duplicate
    assert isinstance(got[1], Admitted) and got[1].duplicate
    assert got[1].client_order_id == got[0].client_order_id
    assert isinstance(got[2], Denied) and got[2].reason is DenyReason.INTENT_CONFLICT
    res = await redis_client.hgetall(acct.reservations)
    assert res[f"{SYMBOL}:buy"] == "100"  # reserved once


async def test_batch_when_one_decision_meets_a_bad_key_then_only_it_is_denied(
    redis_client: aioredis.Redis, acct: AccountKeys, gate: OrderGate,
) -> None:
    g = gate
    its = intents(5)
    # the third decision's order record is a STRING: its reads fail closed
    await redis_client.set(acct.order(client_order_id_for("b-2")), "planted")
    before = await evalsha_calls(redis_client)
    got = await asyncio.gather(*(decide(g, it) for it in its))
    assert await evalsha_calls(redis_client) - before == 2  # b-0 at once, b-1..b-4 one batch
    for i, d in enumerate(got):
        if i == 2:
            assert isinstance(d, Denied) and d.reason is DenyReason.BAD_STATE, d
            assert "WRONGTYPE" in d.detail or "order" in d.detail
        else:
            assert isinstance(d, Admitted) and not d.duplicate and d.intent_id == f"b-{i}", d
    assert await redis_client.get(acct.order(client_order_id_for("b-2"))) == "planted"
    assert await redis_client.hget(acct.intents, "b-2") is None


async def test_batch_when_a_shared_read_fails_then_every_decision_denied_not_cached(
    redis_client: aioredis.Redis, acct: AccountKeys, gate: OrderGate,
) -> None:
    g = gate
    await redis_client.delete(acct.state)
    await redis_client.set(acct.state, "ACTIVE")  # a STRING where the latch HASH belongs
    got = await asyncio.gather(*(decide(g, it) for it in intents(3)))
    # each decision meets the bad key itself (a failed read is not remembered as absent)
    assert all(isinstance(d, Denied) and d.reason is DenyReason.BAD_STATE for d in got), got
    assert (await redis_client.hgetall(acct.stats))["denied:bad_state"] == "3"
    assert await redis_client.hget(acct.intents, "b-0") is None


async def test_batch_when_a_caller_is_cancelled_before_sending_then_not_sent_and_others_decided(
    redis_client: aioredis.Redis, acct: AccountKeys, gate: OrderGate,
) -> None:
    g = gate
    its = intents(3)
    tasks = [asyncio.create_task(decide(g, it)) for it in its]
    await asyncio.sleep(0)  # all three queued, the batch not written yet
    tasks[1].cancel()
    first, third = await tasks[0], await tasks[2]
    with pytest.raises(asyncio.CancelledError):
        await tasks[1]
    assert isinstance(first, Admitted) and first.intent_id == "b-0"
    assert isinstance(third, Admitted) and third.intent_id == "b-2"
    assert third.order is not None and third.order.qty == its[2].qty
    # cancelled before its batch left: it was not sent (nothing reserved for it)
    assert await redis_client.hget(acct.intents, "b-1") is None
    again = await decide(g, its[1])
    assert isinstance(again, Admitted) and not again.duplicate
    assert again.order is not None and again.order.qty == its[1].qty


async def test_batch_when_reply_lost_then_each_decision_recovers_its_own_admission(
    redis_server: Any, redis_client: aioredis.Redis, acct: AccountKeys,
) -> None:
    proxy, via = await through_proxy(redis_server.port)
    try:
        g = OrderGate(via, acct, risk(), recover_ms=15_000)
        assert isinstance(await decide(g, buy("0.0001", intent_id="warm-up")), Admitted)
        proxy.lose_replies()
        asyncio.get_running_loop().call_later(2.0, proxy.heal)
        its = intents(4)
        got = await asyncio.gather(*(decide(g, it) for it in its))
    finally:
        await via.aclose()
        await proxy.close()
    # Assert: Redis admitted each once (the first alone, three in one batch); each caller
    # learns its own admission
    for it, d in zip(its, got, strict=True):
        assert isinstance(d, Admitted) and d.duplicate, d
        assert d.client_order_id == client_order_id_for(it.intent_id or "")
    res = await redis_client.hgetall(acct.reservations)
    assert res[f"{SYMBOL}:buy"] == str(1 + sum(int(it.qty * 10_000) for it in its))
    assert (await redis_client.hgetall(acct.stats))["admitted"] == "5"


# -- the script's side of the batch -------------------------------------------------------------


def _keys(k: AccountKeys, coids: list[str]) -> list[str]:
    fixed = [k.schema, k.state, k.lease, k.intents, k.limits, k.positions, k.reservations,
             k.marks, k.throttle, k.open_orders, k.journal, k.stats, k.denials, k.nonce,
             k.aggregates, k.tombstones]
    return fixed + [x for c in coids for x in (k.day("2026-01-01"), k.order(c))]


def _args(iids: list[str]) -> list[Any]:
    out: list[Any] = [SCHEMA_VERSION, 0]  # schema, latch floor
    for iid in iids:
        out += [TOKEN, HOLDER, iid, client_order_id_for(iid), SYMBOL, "buy", "0.0100", "60000",
                0, "2026-01-01"]
    return out


@pytest.mark.parametrize("n_keys, n_args", [(1, 2), (2, 1), (0, 0), (BATCH_MAX + 1, BATCH_MAX + 1)])
async def test_script_when_not_whole_decisions_then_error_and_nothing_written(
    redis_client: aioredis.Redis, acct: AccountKeys, n_keys: int, n_args: int,
) -> None:
    script = redis_client.register_script(lua_source("gate_admit.lua"))
    iids = [f"s-{i}" for i in range(max(n_keys, n_args))]
    keys = _keys(acct, [client_order_id_for(i) for i in iids[:n_keys]])
    with pytest.raises(ResponseError, match="whole decisions"):
        await script(keys=keys, args=_args(iids[:n_args]))
    assert await redis_client.hgetall(acct.intents) == {}
    assert await redis_client.hgetall(acct.reservations) == {}


async def test_script_when_batch_of_two_then_one_reply_each_in_order(
    redis_client: aioredis.Redis, acct: AccountKeys,
) -> None:
    script = redis_client.register_script(lua_source("gate_admit.lua"))
    iids = ["s-a", "s-b"]
    replies = await script(keys=_keys(acct, [client_order_id_for(i) for i in iids]), args=_args(iids))
    assert [r[0] for r in replies] == [0, 0] and [r[1] for r in replies] == [0, 0]
    assert await redis_client.hget(acct.intents, "s-b") is not None
    assert (await redis_client.hgetall(acct.stats))["admitted"] == "2"


def test_batch_max_when_read_then_gate_and_script_agree() -> None:
    text = (Path(guardrails.__file__).parent / "lua" / "gate_admit.lua").read_text()
    m = re.search(r"^local BATCH_MAX = (\d+)$", text, re.M)
    assert m and int(m.group(1)) == BATCH_MAX
