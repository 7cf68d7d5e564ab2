"""The order gate against a real redis-server: every check, every DenyReason, no state
change on denial, idempotency, the fence, the kill-switch latch and fail-closed shapes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import pytest
import redis.asyncio as aioredis

from guardrails.gate import DENY_CODES, GateUnavailable, OrderGate, check_intent
from guardrails.keys import AccountKeys
from guardrails.ledger import Ledger
from guardrails.model import Admitted, Denied, DenyReason, Fill, Intent, Side, client_order_id_for
from guardrails.scripts import source as lua_source
from tests.gatekit import (
    ETH,
    HOLDER,
    SYMBOL,
    TOKEN,
    account_keys,
    buy,
    risk,
    risk_snapshot,
    seed,
    sell,
    through_proxy,
)


@pytest.fixture
async def acct(redis_client: aioredis.Redis) -> AccountKeys:
    keys = account_keys()
    await seed(redis_client, keys, risk())
    return keys


def gate(r: aioredis.Redis, keys: AccountKeys, **kw: Any) -> OrderGate:
    return OrderGate(r, keys, kw.pop("cfg", risk()), **kw)


async def admit(g: OrderGate, intent: Intent, iid: str, **kw: Any) -> Admitted | Denied:
    return await g.admit(
        intent, intent_id=iid, token=kw.pop("token", TOKEN), holder_id=kw.pop("holder", HOLDER),
        **kw,
    )


async def fill_position(r: aioredis.Redis, keys: AccountKeys, intent: Intent, iid: str) -> None:
    """Admit ``intent`` and fill it completely (builds a position through the real path)."""
    d = await admit(gate(r, keys), intent, iid)
    assert isinstance(d, Admitted), d
    outcome = await Ledger(r, keys, risk()).apply_fill(
        Fill(f"f-{iid}", d.client_order_id, intent.symbol, intent.side, intent.qty,
             intent.price, ts_ms=1)
    )
    assert outcome.value == "applied"


async def test_admit_when_fresh_intent_then_reserves_records_and_journals(
    redis_client: aioredis.Redis, acct: AccountKeys
) -> None:
    # Arrange
    g = gate(redis_client, acct)
    # Act
    d = await admit(g, buy("0.0100"), "i1")
    # Assert
    assert isinstance(d, Admitted) and not d.duplicate
    assert d.client_order_id == client_order_id_for("i1") and d.token == TOKEN
    server_ms = int((await redis_client.time())[0]) * 1000
    assert server_ms + 590_000 < d.submit_deadline_ms <= server_ms + 601_000
    res = await redis_client.hgetall(acct.reservations)
    assert res[f"{SYMBOL}:buy"] == "100"  # 0.0100 BTC in lots of 0.0001
    # worst-case loss: 100 lots x k=1 x (0 adverse + ceil(6_000_000 ticks x 5%)) money units
    assert res[f"{SYMBOL}:loss"] == str(100 * 300_000)
    order = await redis_client.hgetall(acct.order(d.client_order_id))
    assert order["state"] == "PENDING_SUBMIT" and order["qty"] == "0.0100"
    assert order["price"] == "60000" and order["open_lots"] == "100"
    assert await redis_client.sismember(acct.open_orders, d.client_order_id)
    entries = await redis_client.xrange(acct.journal)
    assert [e[1]["ev"] for e in entries if e[1]["ev"] == "admit"] == ["admit"]
    assert (await redis_client.hgetall(acct.stats))["admitted"] == "1"


async def test_admit_when_same_intent_twice_then_original_decision_and_nothing_more_reserved(
    redis_client: aioredis.Redis, acct: AccountKeys
) -> None:
    g = gate(redis_client, acct)
    first = await admit(g, buy("0.0100"), "same")
    before = await risk_snapshot(redis_client, acct)
    second = await admit(g, buy("0.0100"), "same")
    assert isinstance(first, Admitted) and isinstance(second, Admitted)
    assert second.duplicate and not first.duplicate
    assert (second.client_order_id, second.token, second.submit_deadline_ms) == (
        first.client_order_id, first.token, first.submit_deadline_ms)
    assert await risk_snapshot(redis_client, acct) == before


@pytest.mark.parametrize("lost", ["qty", "price", "side"])
async def test_admit_when_repeat_meets_a_damaged_order_record_then_admitted_without_an_order(
    redis_client: aioredis.Redis, acct: AccountKeys, lost: str
) -> None:
    g = gate(redis_client, acct)
    first = await admit(g, buy("0.0100"), "damaged")
    assert isinstance(first, Admitted)
    await redis_client.hdel(acct.order(first.client_order_id), lost)
    # Act: the repeat reads the record back; a field of it is gone
    again = await admit(g, buy("0.0100"), "damaged")
    # Assert: the admission stands (nothing new reserved) but there is no order to send
    # from it: the caller reads the record and meets the damage there
    assert isinstance(again, Admitted) and again.duplicate and again.order is None


@pytest.mark.parametrize(("token", "holder"), [(-1, ""), (0, ""), (TOKEN, "")])
async def test_admit_when_first_call_binds_odd_token_or_holder_then_denied_not_hung(
    redis_client: aioredis.Redis, acct: AccountKeys, token: int, holder: str
) -> None:
    # a fresh gate's first call with values its encoding cache might mistake for "bound"
    d = await asyncio.wait_for(admit(gate(redis_client, acct), buy("0.0100"), "odd",
                                     token=token, holder=holder), timeout=10)
    assert isinstance(d, Denied) and d.reason is DenyReason.STALE_TOKEN, d
    assert isinstance(await admit(gate(redis_client, acct), buy("0.0100"), "ok"), Admitted)


@pytest.mark.parametrize("iid", ["", "\ud800", "has space", "x" * 129, "nl\n"])
async def test_admit_when_intent_id_argument_malformed_then_bad_order_before_redis(
    redis_client: aioredis.Redis, acct: AccountKeys, iid: str
) -> None:
    d = await admit(gate(redis_client, acct), buy("0.0100"), iid)
    assert isinstance(d, Denied) and d.reason is DenyReason.BAD_ORDER, d
    assert await redis_client.hlen(acct.intents) == 0


async def test_admit_when_token_is_stale_then_stale_token_and_no_state_change(
    redis_client: aioredis.Redis, acct: AccountKeys
) -> None:
    await redis_client.incr(acct.fence)
    await redis_client.set(acct.lease, f"{TOKEN + 1}:holder-b", px=60_000)
    before = await risk_snapshot(redis_client, acct)
    d = await admit(gate(redis_client, acct), buy("0.0100"), "i1")
    assert isinstance(d, Denied) and d.reason is DenyReason.STALE_TOKEN
    assert f"{TOKEN + 1}:holder-b" in d.detail
    assert await risk_snapshot(redis_client, acct) == before


async def test_admit_when_lease_ran_out_and_nobody_took_over_then_lease_expired(
    redis_client: aioredis.Redis, acct: AccountKeys
) -> None:
    await redis_client.set(acct.lease, f"{TOKEN}:{HOLDER}", px=100)
    await asyncio.sleep(1.0)  # 10x the TTL: the lease has certainly expired in Redis
    before = await risk_snapshot(redis_client, acct)
    d = await admit(gate(redis_client, acct), buy("0.0100"), "i1")
    assert isinstance(d, Denied) and d.reason is DenyReason.LEASE_EXPIRED
    assert await risk_snapshot(redis_client, acct) == before


Setup = Callable[[aioredis.Redis, AccountKeys], Awaitable[None]]


async def _nothing(r: aioredis.Redis, k: AccountKeys) -> None:
    return None


async def _schema(r: aioredis.Redis, k: AccountKeys) -> None:
    await r.set(k.schema, "999")


async def _halted(r: aioredis.Redis, k: AccountKeys) -> None:
    await r.hset(k.state, "state", "HALTED")


async def _reducing(r: aioredis.Redis, k: AccountKeys) -> None:
    await r.hset(k.state, "state", "REDUCING")


async def _no_lease(r: aioredis.Redis, k: AccountKeys) -> None:
    await r.delete(k.lease)


async def _no_mark(r: aioredis.Redis, k: AccountKeys) -> None:
    await r.hdel(k.marks, SYMBOL)


async def _throttle_empty(r: aioredis.Redis, k: AccountKeys) -> None:
    server = await r.time()
    await r.hset(k.throttle, mapping={"tokens": "0", "ts_ms": str(int(server[0]) * 1000 + 60_000)})


async def _position_near_max(r: aioredis.Redis, k: AccountKeys) -> None:
    for i in range(3):  # 3 x 0.03 BTC filled = 0.09 of max 0.1
        await fill_position(r, k, buy("0.0300", tag=str(i)), f"pre{i}")


async def _gross_near_max(r: aioredis.Redis, k: AccountKeys) -> None:
    # 0.1 BTC at 60000 = 6000 and 1.3 ETH at 3000 = 3900: 9900 of 10000 gross
    await _position_near_max(r, k)
    await fill_position(r, k, buy("0.0100"), "btc-last")
    for i, q in enumerate(("0.500", "0.500", "0.300")):
        await fill_position(r, k, buy(q, "3000", ETH, tag=str(i)), f"eth{i}")


async def _loss_used(r: aioredis.Redis, k: AccountKeys) -> None:
    await fill_position(r, k, buy("0.0300"), "pre")
    # mark falls 8% -> unrealized loss 0.03 x 4800 = 144 of the 250 budget
    await Ledger(r, k, risk()).update_marks({SYMBOL: Decimal("55200")})


async def _admitted_as_other_qty(r: aioredis.Redis, k: AccountKeys) -> None:
    d = await admit(gate(r, k), buy("0.0010"), "deny-intent-conflict")
    assert isinstance(d, Admitted), d


async def _pruned(r: aioredis.Redis, k: AccountKeys) -> None:
    """The intent was admitted, canceled and pruned after the retention window."""
    from guardrails.prune import Archive, Pruner
    from guardrails.statedir import state_dir

    d = await admit(gate(r, k), buy("0.0010"), "deny-intent-pruned")
    assert isinstance(d, Admitted), d
    await Ledger(r, k, risk()).mark_canceled(d.client_order_id, "test")
    pruner = Pruner(r, k, Archive(state_dir() / "archive.jsonl"), retention_ms=3_600_000)
    rep = await pruner.sweep(now_ms=int(await r.hget(k.order(d.client_order_id), "updated_ms"))
                             + 3_600_000)
    assert rep.pruned == [d.client_order_id]


async def _bad_type(r: aioredis.Redis, k: AccountKeys) -> None:
    await r.delete(k.positions)
    await r.set(k.positions, "not a hash")


DENIALS: list[tuple[str, Setup, Intent, DenyReason]] = [
    ("schema", _schema, buy("0.01"), DenyReason.SCHEMA_MISMATCH),
    ("halted", _halted, buy("0.01"), DenyReason.HALTED),
    ("reducing", _reducing, buy("0.01"), DenyReason.REDUCE_ONLY),
    ("no lease", _no_lease, buy("0.01"), DenyReason.LEASE_EXPIRED),
    ("overflow", _nothing, buy("99999999999.9999"), DenyReason.BAD_ORDER),
    ("unknown symbol", _nothing, buy("0.01", symbol="DOGE-USD"), DenyReason.UNKNOWN_SYMBOL),
    ("off tick", _nothing, buy("0.01", "60000.005"), DenyReason.OFF_TICK),
    ("off lot", _nothing, buy("0.00015"), DenyReason.OFF_LOT),
    ("max notional", _nothing, buy("0.0417"), DenyReason.MAX_NOTIONAL),
    ("fat finger", _nothing, buy("0.01", "63000.01"), DenyReason.PRICE_BAND),
    ("no mark", _no_mark, buy("0.01"), DenyReason.PRICE_BAND),
    ("throttled", _throttle_empty, buy("0.01"), DenyReason.THROTTLED),
    ("position", _position_near_max, buy("0.0101"), DenyReason.POSITION_LIMIT),
    ("gross", _gross_near_max, buy("0.100", "3000", ETH), DenyReason.GROSS_EXPOSURE),
    ("daily loss", _loss_used, buy("0.0400", "55200"), DenyReason.DAILY_LOSS),
    ("wrong type", _bad_type, buy("0.01"), DenyReason.BAD_STATE),
    ("intent conflict", _admitted_as_other_qty, buy("0.0200"), DenyReason.INTENT_CONFLICT),
    ("intent pruned", _pruned, buy("0.0010"), DenyReason.INTENT_PRUNED),
]


@pytest.mark.parametrize(
    ("name", "setup", "intent", "reason"), DENIALS, ids=[d[0] for d in DENIALS]
)
async def test_admit_when_check_fails_then_denied_with_reason_and_no_state_change(
    redis_client: aioredis.Redis, acct: AccountKeys, name: str, setup: Setup, intent: Intent,
    reason: DenyReason,
) -> None:
    # Arrange
    await setup(redis_client, acct)
    before = await risk_snapshot(redis_client, acct)
    # Act
    d = await admit(gate(redis_client, acct), intent, f"deny-{name}".replace(" ", "-"))
    # Assert
    assert isinstance(d, Denied), d
    assert d.reason is reason, d
    assert d.detail
    assert await risk_snapshot(redis_client, acct) == before
    stats = await redis_client.hgetall(acct.stats)
    assert stats.get(f"denied:{reason.value}") == "1"
    last = (await redis_client.xrevrange(acct.denials, count=1))[0][1]
    assert last["reason"] == reason.value and last["intent_id"] == f"deny-{name}".replace(" ", "-")


def test_deny_codes_when_compared_with_script_then_same_table() -> None:
    src = lua_source("gate_admit.lua")
    table = src.split("local REASON = {", 1)[1].split("}", 1)[0]
    names = [n.strip().strip("'") for n in table.replace("\n", "").split(",") if n.strip()]
    assert {i + 1: n for i, n in enumerate(names)} == {c: r.value for c, r in DENY_CODES.items()}


async def test_admit_when_every_reason_then_each_reachable_in_suite() -> None:
    # (latch_lost needs a gate given a latch floor: tests/test_kill_gate.py)
    reached = {d[3] for d in DENIALS} | {DenyReason.STALE_TOKEN, DenyReason.LATCH_LOST}
    in_script = set(DENY_CODES.values())
    assert in_script <= reached


async def test_admit_when_reducing_then_reducing_order_admitted_and_increasing_denied(
    redis_client: aioredis.Redis, acct: AccountKeys
) -> None:
    await fill_position(redis_client, acct, buy("0.0300"), "long")
    await _reducing(redis_client, acct)
    g = gate(redis_client, acct)
    first = await admit(g, sell("0.0200"), "r1")
    assert isinstance(first, Admitted)
    # Two reducing sells that together would flip the position: the second is denied.
    second = await admit(g, sell("0.0200"), "r2")
    assert isinstance(second, Denied) and second.reason is DenyReason.REDUCE_ONLY
    increase = await admit(g, buy("0.0010"), "r3")
    assert isinstance(increase, Denied) and increase.reason is DenyReason.REDUCE_ONLY


async def test_admit_when_halted_then_reducing_and_increasing_both_denied(
    redis_client: aioredis.Redis, acct: AccountKeys
) -> None:
    await fill_position(redis_client, acct, buy("0.0300"), "long")
    await _halted(redis_client, acct)
    g = gate(redis_client, acct)
    for iid, intent in (("h1", sell("0.0100")), ("h2", buy("0.0100"))):
        d = await admit(g, intent, iid)
        assert isinstance(d, Denied) and d.reason is DenyReason.HALTED


async def test_admit_when_denied_then_later_retry_of_same_intent_can_be_admitted(
    redis_client: aioredis.Redis, acct: AccountKeys
) -> None:
    g = gate(redis_client, acct)
    await _halted(redis_client, acct)
    assert isinstance(await admit(g, buy("0.01"), "retry"), Denied)
    await redis_client.hset(acct.state, "state", "ACTIVE")
    d = await admit(g, buy("0.01"), "retry")
    assert isinstance(d, Admitted) and not d.duplicate


async def test_admit_when_nonce_requested_then_allocated_once_per_intent(
    redis_client: aioredis.Redis, acct: AccountKeys
) -> None:
    g = gate(redis_client, acct)
    missing = await admit(g, buy("0.01"), "n0", allocate_nonce=True)
    assert isinstance(missing, Denied) and missing.reason is DenyReason.BAD_STATE
    await redis_client.set(acct.nonce, 41)
    a = await admit(g, buy("0.01"), "n1", allocate_nonce=True)
    b = await admit(g, buy("0.01"), "n2", allocate_nonce=True)
    again = await admit(g, buy("0.01"), "n1", allocate_nonce=True)
    assert isinstance(a, Admitted) and isinstance(b, Admitted) and isinstance(again, Admitted)
    assert (a.nonce, b.nonce, again.nonce, again.duplicate) == (41, 42, 41, True)
    assert await redis_client.get(acct.nonce) == "43"


async def test_admit_when_redis_unreachable_then_gate_unavailable(acct: AccountKeys) -> None:
    from tests.redis_harness import free_port

    r = aioredis.Redis(port=free_port(), socket_connect_timeout=1, socket_timeout=1)
    try:
        with pytest.raises(GateUnavailable):
            await admit(gate(r, acct), buy("0.01"), "x")
    finally:
        await r.aclose()


MALFORMED: list[tuple[str, Any]] = [
    ("nan qty", buy("NaN")),
    ("inf price", buy("0.01", "Infinity")),
    ("negative qty", buy("-0.01")),
    ("zero qty", buy("0")),
    ("zero price", buy("0.01", "0.00")),
    ("float qty", Intent(SYMBOL, Side.BUY, 0.01, Decimal("60000"))),  # type: ignore[arg-type]
    ("bool price", Intent(SYMBOL, Side.BUY, Decimal("0.01"), True)),  # type: ignore[arg-type]
    ("str side", Intent(SYMBOL, "buy", Decimal("0.01"), Decimal("60000"))),  # type: ignore[arg-type]
    ("16 digits", buy("0.01000000000000001")),
    ("huge exponent", buy("1e10000000")),
    ("long symbol", buy("0.01", symbol="X" * 33)),
    ("symbol with a colon", buy("0.01", symbol="BTC:USD")),
    ("intent id with a space", buy("0.01", intent_id="an id")),
    ("long tag", buy("0.01", tag="t" * 129)),
    ("not an intent", object()),
]


@pytest.mark.parametrize(("name", "intent"), MALFORMED, ids=[m[0] for m in MALFORMED])
async def test_admit_when_intent_malformed_then_bad_order_and_nothing_reaches_redis(
    name: str, intent: Any
) -> None:
    # Arrange: the gate's Redis is a real client of a port nothing listens on, so any
    # command it sent would raise GateUnavailable instead of returning a denial.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = aioredis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)
    try:
        # Act: the gate itself, not the Context, refuses the intent
        d = await admit(gate(dead, account_keys()), intent, f"bad-{name}")
    finally:
        await dead.aclose()
    # Assert
    assert isinstance(d, Denied), d
    assert d.reason is DenyReason.BAD_ORDER and d.detail, d
    assert d.intent_id == f"bad-{name}"


async def test_admit_when_intent_malformed_then_no_stats_denials_or_reservations_written(
    redis_client: aioredis.Redis, acct: AccountKeys
) -> None:
    before = await risk_snapshot(redis_client, acct)
    d = await admit(gate(redis_client, acct), buy("NaN"), "nan")
    assert isinstance(d, Denied) and d.reason is DenyReason.BAD_ORDER, d
    assert await risk_snapshot(redis_client, acct) == before
    assert await redis_client.hgetall(acct.stats) == {}
    assert await redis_client.xlen(acct.denials) == 0
    assert await redis_client.hget(acct.intents, "nan") is None


@pytest.mark.parametrize(
    ("intent", "reason"),
    [
        (buy("NaN"), DenyReason.BAD_ORDER),
        (buy("Infinity"), DenyReason.BAD_ORDER),
        (buy("-1"), DenyReason.BAD_ORDER),
        (buy("0"), DenyReason.BAD_ORDER),
        (buy("0.01", symbol="X"), DenyReason.UNKNOWN_SYMBOL),
        (buy("0.01", "1.001"), DenyReason.OFF_TICK),
        (buy("0.00011"), DenyReason.OFF_LOT),
    ],
)
async def test_check_intent_when_bad_input_then_python_agrees_with_script(
    redis_client: aioredis.Redis, acct: AccountKeys, intent: Intent, reason: DenyReason
) -> None:
    local = check_intent(intent, risk())
    remote = await admit(gate(redis_client, acct), intent, "agree")
    assert local is not None and local.reason is reason
    assert isinstance(remote, Denied) and remote.reason is reason


async def test_check_intent_when_good_input_then_none() -> None:
    assert check_intent(buy("0.0100", "60000.01"), risk()) is None


@pytest.mark.parametrize(
    "qty",
    ["1e-2", "nan", "NaN", "inf", "-Infinity", "-0.01", " 0.01", "0.01 ", "+0.01", "0x10", "1.",
     ".5", "", "0.0", "1" * 16, "0,01"],
)
async def test_script_when_raw_qty_malformed_then_bad_order_and_no_state_change(
    redis_client: aioredis.Redis, acct: AccountKeys, qty: str
) -> None:
    """The script is the authority: strings Python would never send are denied too."""
    from guardrails.keys import SCHEMA_VERSION

    script = redis_client.register_script(lua_source("gate_admit.lua"))
    coid = client_order_id_for("raw")
    k = acct
    keys = [k.schema, k.state, k.lease, k.intents, k.limits, k.positions, k.reservations,
            k.marks, k.throttle, k.open_orders, k.journal, k.stats, k.denials, k.nonce,
            k.aggregates, k.tombstones, k.day("2026-01-01"), k.order(coid)]
    before = await risk_snapshot(redis_client, acct)
    [raw] = await script(keys=keys, args=[SCHEMA_VERSION, 0, TOKEN, HOLDER, "raw", coid, SYMBOL,
                                          "buy", qty, "60000", 0, "2026-01-01"])
    assert raw[0] == 6, raw  # BAD_ORDER
    assert await risk_snapshot(redis_client, acct) == before


async def _malformed_limit(r: aioredis.Redis, k: AccountKeys) -> None:
    await r.hset(k.limits, "band_ppm", "a lot")


async def _bogus_state(r: aioredis.Redis, k: AccountKeys) -> None:
    await r.hset(k.state, "state", "PAUSED")


async def _journal_wrong_type(r: aioredis.Redis, k: AccountKeys) -> None:
    await r.set(k.journal, "oops")


async def _lease_without_expiry(r: aioredis.Redis, k: AccountKeys) -> None:
    await r.set(k.lease, f"{TOKEN}:{HOLDER}")


async def _intents_wrong_type(r: aioredis.Redis, k: AccountKeys) -> None:
    await r.rpush(k.intents, "x")


async def _negative_reservation(r: aioredis.Redis, k: AccountKeys) -> None:
    # a release applied twice left the total below zero: admitting against it would
    # let the account exceed max_position
    await r.hset(k.reservations, f"{SYMBOL}:buy", "-500")


async def _negative_reserved_loss(r: aioredis.Redis, k: AccountKeys) -> None:
    await r.hset(k.reservations, f"{ETH}:loss", "-1")


async def _malformed_reservation(r: aioredis.Redis, k: AccountKeys) -> None:
    await r.hset(k.reservations, f"{SYMBOL}:loss", "garbage")


@pytest.mark.parametrize(
    "setup",
    [_malformed_limit, _bogus_state, _journal_wrong_type, _lease_without_expiry,
     _intents_wrong_type, _negative_reservation, _negative_reserved_loss,
     _malformed_reservation],
)
async def test_admit_when_key_has_unexpected_shape_then_bad_state_and_nothing_written(
    redis_client: aioredis.Redis, acct: AccountKeys, setup: Setup
) -> None:
    await setup(redis_client, acct)
    before = await risk_snapshot(redis_client, acct)
    d = await admit(gate(redis_client, acct), buy("0.01"), "shape")
    assert isinstance(d, Denied) and d.reason is DenyReason.BAD_STATE, d
    assert await risk_snapshot(redis_client, acct) == before


async def test_admit_when_burst_spent_then_throttled_until_bucket_refills(
    redis_client: aioredis.Redis,
) -> None:
    # Arrange: 2 orders of burst, refilling 1 order per 2 s (shared by every instance)
    keys = account_keys("throttle")
    cfg = risk(orders_per_second="0.5", burst=2)
    await seed(redis_client, keys, cfg)
    g1, g2 = OrderGate(redis_client, keys, cfg), OrderGate(redis_client, keys, cfg)
    # Act
    first = await admit(g1, buy("0.0010"), "t1")
    second = await admit(g2, buy("0.0010"), "t2")
    third = await admit(g1, buy("0.0010"), "t3")
    await asyncio.sleep(5.0)  # 2.5 tokens refilled since t2; t1..t3 took far less than 2 s
    fourth = await admit(g2, buy("0.0010"), "t4")
    # Assert
    assert isinstance(first, Admitted) and isinstance(second, Admitted)
    assert isinstance(third, Denied) and third.reason is DenyReason.THROTTLED
    assert isinstance(fourth, Admitted)


# -- a lost reply is not a denial ---------------------------------------------------------


async def test_admit_when_reply_lost_after_script_ran_then_original_admission_returned(
    redis_server: Any, redis_client: aioredis.Redis, acct: AccountKeys
) -> None:
    # Arrange: the gate talks to Redis through a proxy that will lose the replies
    proxy, via = await through_proxy(redis_server.port)
    try:
        g = OrderGate(via, acct, risk(), recover_ms=15_000)
        assert isinstance(await admit(g, buy("0.0010"), "warm-up"), Admitted)  # script loaded
        proxy.lose_replies()
        asyncio.get_running_loop().call_later(2.0, proxy.heal)  # the link comes back
        # Act
        d = await admit(g, buy("0.0100"), "lost")
    finally:
        await via.aclose()
        await proxy.close()
    # Assert: Redis admitted it once; the caller is told so, not "redis_unavailable"
    stored = await redis_client.hget(acct.intents, "lost")
    assert stored is not None and stored.startswith(client_order_id_for("lost") + "|")
    assert isinstance(d, Admitted), d
    assert d.duplicate and d.client_order_id == client_order_id_for("lost")
    assert d.token == TOKEN and str(d.submit_deadline_ms) == stored.split("|")[2]
    order = await redis_client.hgetall(acct.order(d.client_order_id))
    assert order["state"] == "PENDING_SUBMIT"
    assert (await redis_client.hgetall(acct.stats))["admitted"] == "2"
    res = await redis_client.hgetall(acct.reservations)
    assert res[f"{SYMBOL}:buy"] == "110"  # warm-up 10 + lost 100 lots, reserved once


async def test_admit_when_reply_lost_and_redis_stays_unreachable_then_outcome_unknown(
    redis_server: Any, redis_client: aioredis.Redis, acct: AccountKeys
) -> None:
    from guardrails.gate import GateOutcomeUnknown

    proxy, via = await through_proxy(redis_server.port)
    try:
        g = OrderGate(via, acct, risk(), recover_ms=1_000)
        assert isinstance(await admit(g, buy("0.0010"), "warm-up"), Admitted)
        proxy.lose_replies()
        with pytest.raises(GateOutcomeUnknown):
            await admit(g, buy("0.0100"), "unsure")
    finally:
        await via.aclose()
        await proxy.close()
    # the outcome really was unknown to the caller: Redis did admit it, and asking
    # again with the same intent id returns that original decision
    again = await admit(gate(redis_client, acct), buy("0.0100"), "unsure")
    assert isinstance(again, Admitted) and again.duplicate


async def test_admit_when_connection_refused_then_gate_unavailable_not_unknown(
    acct: AccountKeys,
) -> None:
    from guardrails.gate import GateOutcomeUnknown
    from tests.redis_harness import free_port

    r = aioredis.Redis(port=free_port(), socket_connect_timeout=1, socket_timeout=1)
    try:
        with pytest.raises(GateUnavailable) as err:
            await admit(gate(r, acct), buy("0.01"), "x")
        assert not isinstance(err.value, GateOutcomeUnknown)
    finally:
        await r.aclose()


def test_gate_script_when_read_then_every_denial_names_a_reason_at_its_code() -> None:
    """gate_admit.lua denies by reason name (``deny(K, A, o, '<reason>', ...)``) and a
    reason's code is its index in REASON; gate.py's DENY_CODES maps codes back. A
    denial naming a reason missing from REASON would raise inside the script, and a
    REASON out of DENY_CODES' order would map to the wrong reason: all three agree."""
    import re
    from pathlib import Path

    import guardrails
    from guardrails.gate import DENY_CODES

    text = (Path(guardrails.__file__).parent / "lua" / "gate_admit.lua").read_text()
    reasons_block = re.search(r"local REASON = \{(.*?)\}", text, re.S)
    assert reasons_block
    reasons = re.findall(r"'([a-z_]+)'", reasons_block.group(1))
    assert {i: r.value for i, r in DENY_CODES.items()} == dict(enumerate(reasons, start=1))
    named = set(re.findall(r"deny\(K(?:EYS)?, A(?:RGV)?, o, '([a-z_]+)'", text))
    # the sanity and fence outcomes reach deny() as variables: their literals too
    named |= set(re.findall(r"return '([a-z_]+)', ", text))
    lib_fence = (Path(guardrails.__file__).parent / "lua" / "lib" / "fence.lua").read_text()
    named |= set(re.findall(r"return '([a-z_]+)', ", lib_fence)) - {"ok"}
    assert len(named) >= 17, named
    assert named <= set(reasons), named - set(reasons)
