"""Property tests (hypothesis) of the gate + ledger scripts against a real redis-server.

Random sequences of intents, fills (and re-sent fills), over-fills (more than the
order's open quantity) and fills on terminal orders (both refused, changing nothing),
cancels, rejects, expiries, unknown outcomes, attempts to move terminal orders and mark
moves. After every step:
reservations are never negative and equal the open orders' remaining quantity; no fill
is applied twice; positions equal the sum of applied fills; terminal orders never
change; a denial changes nothing; and every admission leaves the account within its
limits (position, gross exposure, daily loss budget); and the maintained aggregates
(`agg`, lib/agg.lua) equal a full recomputation from positions, reservations and marks
(computed here, independently of the scripts), and exist once anything was admitted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guardrails.gate import OrderGate
from guardrails.keys import AccountKeys
from guardrails.ledger import FillOutcome, Ledger, Transition
from guardrails.limits import per_lot_tick
from guardrails.model import Admitted, Fill, Intent, OrderState, Side
from guardrails.tradingday import wall_clock_ms
from tests.gatekit import (
    ETH,
    HOLDER,
    SYMBOL,
    TOKEN,
    account_keys,
    ledger_state,
    risk,
    risk_snapshot,
    seed,
)
from tests.redis_harness import RedisServer

CFG = risk(orders_per_second="1000000", burst=1_000_000, daily_loss_limit="150",
           max_gross_exposure="7000")
SYMS = (SYMBOL, ETH)
START = {SYMBOL: Decimal("60000"), ETH: Decimal("3000")}


@pytest.fixture(scope="module")
def prop_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


admit_op = st.tuples(
    st.just("admit"), st.sampled_from(SYMS), st.sampled_from([Side.BUY, Side.SELL]),
    st.integers(1, 400), st.integers(-600, 600),
)
fill_op = st.tuples(
    st.just("fill"), st.integers(0, 50), st.integers(20, 100), st.integers(-300, 300),
)
refill_op = st.tuples(st.just("refill"), st.integers(0, 50))
overfill_op = st.tuples(st.just("overfill"), st.integers(0, 50), st.integers(1, 300))
end_op = st.tuples(
    st.just("end"), st.integers(0, 50),
    st.sampled_from([OrderState.CANCELED, OrderState.REJECTED, OrderState.EXPIRED,
                     OrderState.UNKNOWN, OrderState.SUBMITTED, OrderState.PENDING_SUBMIT]),
)
mark_op = st.tuples(st.just("mark"), st.sampled_from(SYMS), st.integers(-800, 800))
OPS = st.lists(
    st.one_of(admit_op, admit_op, fill_op, fill_op, fill_op, refill_op, overfill_op, end_op,
              mark_op),
    min_size=5, max_size=50,
)


@dataclass
class Model:
    orders: list[tuple[str, str, Side]] = field(default_factory=list)  # coid, symbol, side
    fills: list[Fill] = field(default_factory=list)
    fill_lots: dict[str, int] = field(default_factory=dict)  # symbol -> signed lots
    terminal: dict[str, dict[str, str]] = field(default_factory=dict)
    n: int = 0
    agg_checked: int = 0


def lot(sym: str) -> Decimal:
    return CFG.instruments[sym].lot


def tick(sym: str) -> Decimal:
    return CFG.instruments[sym].tick


async def marks_ticks(r: aioredis.Redis, k: AccountKeys) -> dict[str, int]:
    return {s: int(v) for s, v in (await r.hgetall(k.marks)).items()}


async def exposure(r: aioredis.Redis, k: AccountKeys) -> tuple[dict[str, int], int]:
    """(worst-case |position| in lots per symbol, gross exposure in money units)."""
    pos = await r.hgetall(k.positions)
    res = await r.hgetall(k.reservations)
    marks = await marks_ticks(r, k)
    worst, gross = {}, 0
    for s in SYMS:
        p = int(pos.get(f"{s}:qty", 0))
        w = max(abs(p + int(res.get(f"{s}:buy", 0))), abs(p - int(res.get(f"{s}:sell", 0))))
        worst[s] = w
        gross += w * marks[s] * per_lot_tick(CFG, s)
    return worst, gross


async def check_invariants(r: aioredis.Redis, k: AccountKeys, m: Model) -> None:
    res = {f: int(v) for f, v in (await r.hgetall(k.reservations)).items()}
    assert all(v >= 0 for v in res.values()), res
    expected: dict[str, int] = {}
    for coid in await r.smembers(k.open_orders):
        o = await r.hgetall(k.order(coid))
        assert o["state"] not in ("FILLED", "CANCELED", "REJECTED", "EXPIRED")
        lots = int(o["open_lots"])
        assert lots >= 0
        side_f, loss_f = f"{o['symbol']}:{o['side']}", f"{o['symbol']}:loss"
        expected[side_f] = expected.get(side_f, 0) + lots
        expected[loss_f] = expected.get(loss_f, 0) + lots * int(o["wl"])
    assert {f: v for f, v in res.items() if v} == {f: v for f, v in expected.items() if v}
    pos = await r.hgetall(k.positions)
    for s in SYMS:
        assert int(pos.get(f"{s}:qty", 0)) == m.fill_lots.get(s, 0)
    assert await r.hlen(k.fills) == len(m.fills)
    for coid, snapshot in m.terminal.items():
        now = await r.hgetall(k.order(coid))
        assert {f: now[f] for f in ("state", "open_lots")} == {
            f: snapshot[f] for f in ("state", "open_lots")}


async def check_aggregates(r: aioredis.Redis, k: AccountKeys, m: Model) -> None:
    """The aggregates equal a recomputation from the book (this test's own arithmetic)."""
    agg = await r.hgetall(k.aggregates)
    if not agg:
        assert not any(o for o in m.orders), "admissions happened but no aggregates exist"
        return
    m.agg_checked += 1
    assert agg["digest"] == await r.hget(k.limits, "digest")
    pos = await r.hgetall(k.positions)
    res = await r.hgetall(k.reservations)
    marks = await marks_ticks(r, k)
    gross = uloss = rloss = 0
    for s in SYMS:
        p, c = int(pos.get(f"{s}:qty", 0)), int(pos.get(f"{s}:cost", 0))
        b, sl = int(res.get(f"{s}:buy", 0)), int(res.get(f"{s}:sell", 0))
        kk = per_lot_tick(CFG, s)
        w = max(abs(p + b), abs(p - sl))
        g = w * marks[s] * kk if w else 0
        u = max(0, c - p * marks[s] * kk) if (p or c) else 0
        assert (int(agg.get(f"g:{s}", 0)), int(agg.get(f"u:{s}", 0))) == (g, u), (s, agg)
        gross, uloss = gross + g, uloss + u
        rloss += int(res.get(f"{s}:loss", 0))
    assert (int(agg["gross"]), int(agg["uloss"]), int(agg["rloss"])) == (gross, uloss, rloss), agg


async def run(url: str, ops: list[tuple[Any, ...]]) -> None:
    r = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        await r.flushall()
        k = account_keys("prop")
        await seed(r, k, CFG)
        gate = OrderGate(r, k, CFG)
        ledger = Ledger(r, k, CFG)
        m = Model()
        for op in ops:
            await step(r, k, gate, ledger, m, op)
            await check_invariants(r, k, m)
            await check_aggregates(r, k, m)
    finally:
        await r.aclose()


async def step(r: aioredis.Redis, k: AccountKeys, gate: OrderGate, ledger: Ledger, m: Model,
               op: tuple[Any, ...]) -> None:
    kind = op[0]
    if kind == "admit":
        _, sym, side, lots, off = op
        mark = (await marks_ticks(r, k))[sym]
        price = (mark + off * mark // 10_000) * tick(sym)  # within about +-6% of the mark
        m.n += 1
        before = await risk_snapshot(r, k)
        intent = Intent(sym, side, lots * lot(sym), price)
        d = await gate.admit(intent, intent_id=f"i{m.n}", token=TOKEN, holder_id=HOLDER)
        if isinstance(d, Admitted):
            m.orders.append((d.client_order_id, sym, side))
            worst, gross = await exposure(r, k)
            max_lots = int(CFG.instruments[sym].max_position / lot(sym))
            assert worst[sym] <= max_lots or worst[sym] <= (await prior_worst(before, sym))
            budget = await ledger.budget()
            assert budget.used <= budget.limit, budget
            assert gross <= int(CFG.max_gross_exposure.scaleb(CFG.quote_decimals)) or (
                gross <= await prior_gross(r, k, before))
        else:
            assert await risk_snapshot(r, k) == before, d
    elif kind == "fill" and m.orders:
        _, idx, pct, off = op
        coid, sym, side = m.orders[idx % len(m.orders)]
        o = await r.hgetall(k.order(coid))
        open_lots = int(o["open_lots"])
        lots = max(1, open_lots * pct // 100)
        ticks = max(1, int(o["ticks"]) + off)
        f = Fill(f"f{len(m.fills)}-{coid}", coid, sym, side, lots * lot(sym), ticks * tick(sym),
                 ts_ms=wall_clock_ms())
        if coid in m.terminal:  # a fill on a terminal order: refused, nothing changes
            await assert_refused(r, k, ledger, f)
            return
        assert await ledger.apply_fill(f) is FillOutcome.APPLIED
        m.fills.append(f)
        m.fill_lots[sym] = m.fill_lots.get(sym, 0) + side.sign * lots
        await remember_terminal(r, k, m, coid)
    elif kind == "overfill" and m.orders:
        _, idx, extra = op
        coid, sym, side = m.orders[idx % len(m.orders)]
        o = await r.hgetall(k.order(coid))
        lots = int(o["open_lots"]) + extra
        f = Fill(f"over{m.n}-{extra}-{coid}", coid, sym, side, lots * lot(sym),
                 int(o["ticks"]) * tick(sym), ts_ms=wall_clock_ms())
        await assert_refused(r, k, ledger, f)
    elif kind == "refill" and m.fills:
        f = m.fills[op[1] % len(m.fills)]
        assert await ledger.apply_fill(f) is FillOutcome.DUPLICATE
    elif kind == "end" and m.orders:
        _, idx, target = op
        coid, _, _ = m.orders[idx % len(m.orders)]
        result = await ledger.transition(coid, target, "property")
        if coid in m.terminal:
            assert result is Transition.REFUSED_TERMINAL
        elif target is OrderState.PENDING_SUBMIT:
            assert result is Transition.REFUSED_INVALID
        else:
            assert result is Transition.APPLIED
        await remember_terminal(r, k, m, coid)
    elif kind == "mark":
        _, sym, bp = op
        mark = START[sym] * (10_000 + bp) / 10_000
        await ledger.update_marks({sym: mark})


async def assert_refused(r: aioredis.Redis, k: AccountKeys, ledger: Ledger, f: Fill) -> None:
    before = await ledger_state(r, k, f.client_order_id)
    assert await ledger.apply_fill(f) is FillOutcome.REFUSED, f
    assert await ledger_state(r, k, f.client_order_id) == before
    assert (await r.xrevrange(k.journal, count=1))[0][1]["ev"] == "fill_refused"


async def remember_terminal(r: aioredis.Redis, k: AccountKeys, m: Model, coid: str) -> None:
    o = await r.hgetall(k.order(coid))
    if o["state"] in ("FILLED", "CANCELED", "REJECTED", "EXPIRED") and coid not in m.terminal:
        m.terminal[coid] = o


async def prior_worst(before: dict[str, Any], sym: str) -> int:
    pos, res = before["positions"], before["reservations"]
    if not isinstance(pos, dict):
        pos = {}
    if not isinstance(res, dict):
        res = {}
    p = int(pos.get(f"{sym}:qty", 0))
    return max(abs(p + int(res.get(f"{sym}:buy", 0))), abs(p - int(res.get(f"{sym}:sell", 0))))


async def prior_gross(r: aioredis.Redis, k: AccountKeys, before: dict[str, Any]) -> int:
    marks = await marks_ticks(r, k)
    return sum(
        (await prior_worst(before, s)) * marks[s] * per_lot_tick(CFG, s) for s in SYMS
    )


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(ops=OPS)
def test_ledger_when_random_event_sequences_then_invariants_hold(
    prop_server: RedisServer, ops: list[tuple[Any, ...]]
) -> None:
    asyncio.run(run(prop_server.url, ops))
