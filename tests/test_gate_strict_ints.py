"""#9.10: one definition of a stored integer ('^-?%d+$', |n| < 2^53, lib/int.lua) applied
to every field the gate and the ledger read, and evm_claim fenced by token AND holder
(lib/fence.lua). Each bad value is written with a raw client into a real redis-server;
the script must answer bad_state and write nothing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from decimal import Decimal

import pytest
import redis.asyncio as aioredis

from guardrails.gate import OrderGate
from guardrails.keys import AccountKeys
from guardrails.ledger import Ledger, LedgerError
from guardrails.model import Admitted, Denied, DenyReason, Fill, Side
from tests.gatekit import ETH, HOLDER, SYMBOL, TOKEN, account_keys, buy, risk, risk_snapshot, seed

# Spellings Lua's tonumber() accepts but a stored integer must not be.
NOT_INTEGERS = ["0x64", " 100", "100 ", "1e3", "+100", "100.0", "1_000", "9007199254740992",
                "-9007199254740992", "inf", "nan", ""]


@pytest.fixture
async def acct(redis_client: aioredis.Redis) -> AccountKeys:
    keys = account_keys("strict")
    await seed(redis_client, keys, risk())
    return keys


async def admit(r: aioredis.Redis, keys: AccountKeys, iid: str, *, nonce: bool = False,
                qty: str = "0.0100") -> Admitted | Denied:
    return await OrderGate(r, keys, risk()).admit(
        buy(qty), intent_id=iid, token=TOKEN, holder_id=HOLDER, allocate_nonce=nonce)


Write = Callable[[aioredis.Redis, AccountKeys, str], Awaitable[object]]


def _field(attr: str, field: str) -> Write:
    async def write(r: aioredis.Redis, k: AccountKeys, v: str) -> object:
        return await r.hset(getattr(k, attr), field, v)
    write.__name__ = f"{attr}.{field}"
    return write


GATE_FIELDS: list[Write] = [
    _field("limits", "max_order_notional"),
    _field("limits", "max_gross_exposure"),
    _field("limits", "daily_loss_limit"),
    _field("limits", "band_ppm"),
    _field("limits", "rate_milli"),
    _field("limits", "burst"),
    _field("positions", f"{SYMBOL}:qty"),
    _field("positions", f"{ETH}:cost"),
    _field("reservations", f"{SYMBOL}:buy"),
    _field("reservations", f"{ETH}:loss"),
    _field("marks", SYMBOL),
    _field("throttle", "tokens"),
]


@pytest.mark.parametrize("write", GATE_FIELDS, ids=lambda w: w.__name__)
@pytest.mark.parametrize("value", ["0x64", " 100", "1e3"])
async def test_admit_when_stored_field_is_not_a_strict_integer_then_bad_state(
    redis_client: aioredis.Redis, acct: AccountKeys, write: Write, value: str
) -> None:
    # Arrange: ETH has a mark (and a position field), so the gross/loss loops read it too
    await redis_client.hset(acct.positions, mapping={f"{ETH}:qty": "0", f"{ETH}:cost": "0"})
    if write.__name__.startswith("throttle"):
        await redis_client.hset(acct.throttle, "ts_ms", "1")
    await write(redis_client, acct, value)
    before = await risk_snapshot(redis_client, acct)
    # Act
    d = await admit(redis_client, acct, "strict")
    # Assert
    assert isinstance(d, Denied) and d.reason is DenyReason.BAD_STATE, (write.__name__, value, d)
    assert value in d.detail or repr(value) in d.detail or "integer" in d.detail
    assert await risk_snapshot(redis_client, acct) == before


@pytest.mark.parametrize("value", NOT_INTEGERS)
async def test_admit_when_daily_limit_spelled_loosely_then_bad_state(
    redis_client: aioredis.Redis, acct: AccountKeys, value: str
) -> None:
    await redis_client.hset(acct.limits, "daily_loss_limit", value)
    d = await admit(redis_client, acct, "loose")
    assert isinstance(d, Denied) and d.reason is DenyReason.BAD_STATE, (value, d)


@pytest.mark.parametrize(
    "spec",
    ["1 2 1 4 1 0x3e8", "1 2 1 4 1e0 1000", " 1 2 1 4 1 1000", "1 2 1 4 1 99999999999999999",
     "0 2 1 4 1 1000", "1 2 1 4 0 1000", "1 -2 1 4 1 1000", "1 2 1 4 1"],
)
async def test_admit_when_instrument_spec_malformed_then_bad_state(
    redis_client: aioredis.Redis, acct: AccountKeys, spec: str
) -> None:
    await redis_client.hset(acct.limits, f"i:{SYMBOL}", spec)
    before = await risk_snapshot(redis_client, acct)
    d = await admit(redis_client, acct, "spec")
    assert isinstance(d, Denied) and d.reason is DenyReason.BAD_STATE, (spec, d)
    assert await risk_snapshot(redis_client, acct) == before


async def test_admit_when_other_symbols_spec_malformed_and_it_has_exposure_then_bad_state(
    redis_client: aioredis.Redis, acct: AccountKeys
) -> None:
    await redis_client.hset(acct.positions, mapping={f"{ETH}:qty": "100", f"{ETH}:cost": "1"})
    await redis_client.hset(acct.limits, f"i:{ETH}", "1 2 1 3 0x10 1500")
    d = await admit(redis_client, acct, "other")
    assert isinstance(d, Denied) and d.reason is DenyReason.BAD_STATE, d


@pytest.mark.parametrize("value", ["-1", "0x10", "1e3", " 5"])
async def test_admit_when_nonce_not_a_natural_number_then_bad_state_and_not_incremented(
    redis_client: aioredis.Redis, acct: AccountKeys, value: str
) -> None:
    await redis_client.set(acct.nonce, value)
    d = await admit(redis_client, acct, "nonce", nonce=True)
    assert isinstance(d, Denied) and d.reason is DenyReason.BAD_STATE, (value, d)
    assert await redis_client.get(acct.nonce) == value


async def test_admit_when_nonce_synced_then_allocated_and_incremented(
    redis_client: aioredis.Redis, acct: AccountKeys
) -> None:
    await redis_client.set(acct.nonce, "5")
    d = await admit(redis_client, acct, "nonce-ok", nonce=True)
    assert isinstance(d, Admitted) and d.nonce == 5
    assert await redis_client.get(acct.nonce) == "6"


async def test_admit_when_mark_not_positive_then_bad_state(
    redis_client: aioredis.Redis, acct: AccountKeys
) -> None:
    await redis_client.hset(acct.marks, SYMBOL, "-6000000")
    d = await admit(redis_client, acct, "mark")
    assert isinstance(d, Denied) and d.reason is DenyReason.BAD_STATE, d


@pytest.mark.parametrize("part", ["token", "deadline", "nonce"])
async def test_admit_when_stored_intent_record_malformed_then_bad_state(
    redis_client: aioredis.Redis, acct: AccountKeys, part: str
) -> None:
    first = await admit(redis_client, acct, "rec")
    assert isinstance(first, Admitted)
    stored = await redis_client.hget(acct.intents, "rec")
    assert stored is not None
    coid, token, deadline, nonce, digest = stored.split("|")
    bad = {"token": f"{coid}|99999999999999999|{deadline}|{nonce}|{digest}",
           "deadline": f"{coid}|{token}|99999999999999999|{nonce}|{digest}",
           "nonce": f"{coid}|{token}|{deadline}|0x1|{digest}"}[part]
    await redis_client.hset(acct.intents, "rec", bad)
    d = await admit(redis_client, acct, "rec")
    assert isinstance(d, Denied) and d.reason is DenyReason.BAD_STATE, (part, d)


# -- the ledger reads the same way ---------------------------------------------------------


async def _order(r: aioredis.Redis, k: AccountKeys) -> str:
    d = await admit(r, k, "ledger")
    assert isinstance(d, Admitted)
    return d.client_order_id


async def _state(r: aioredis.Redis, k: AccountKeys) -> dict[str, object]:
    snap = await risk_snapshot(r, k)
    snap.pop("journal", None)
    return snap


def _fill(coid: str) -> Fill:
    return Fill("f1", coid, SYMBOL, Side.BUY, Decimal("0.0050"), Decimal("60000"), ts_ms=1)


@pytest.mark.parametrize(
    ("key", "field"),
    [("order", "open_lots"), ("order", "wl"), ("order", "filled_lots"),
     ("positions", f"{SYMBOL}:qty"), ("positions", f"{SYMBOL}:cost"),
     ("reservations", f"{SYMBOL}:buy"), ("reservations", f"{SYMBOL}:loss")],
)
@pytest.mark.parametrize("value", ["0x64", " 100", "1e3"])
async def test_apply_fill_when_stored_field_not_strict_integer_then_ledger_error_nothing_written(
    redis_client: aioredis.Redis, acct: AccountKeys, key: str, field: str, value: str
) -> None:
    coid = await _order(redis_client, acct)
    name = acct.order(coid) if key == "order" else getattr(acct, key)
    await redis_client.hset(name, field, value)
    before = await _state(redis_client, acct)
    with pytest.raises(LedgerError, match="integer"):
        await Ledger(redis_client, acct, risk()).apply_fill(_fill(coid))
    # nothing written but the journal's fill_bad_state entry
    assert await _state(redis_client, acct) == before
    last = (await redis_client.xrevrange(acct.journal, count=1))[0][1]
    assert last["ev"] == "fill_bad_state"


@pytest.mark.parametrize("field", ["open_lots", "wl"])
async def test_mark_canceled_when_stored_field_not_strict_integer_then_ledger_error(
    redis_client: aioredis.Redis, acct: AccountKeys, field: str
) -> None:
    coid = await _order(redis_client, acct)
    await redis_client.hset(acct.order(coid), field, "1e3")
    before = await _state(redis_client, acct)
    with pytest.raises(LedgerError, match="integer"):
        await Ledger(redis_client, acct, risk()).mark_canceled(coid, "test")
    assert await _state(redis_client, acct) == before


# -- Python reads the same definition (scripts.stored_int mirrors lib/int.lua) -------------


@pytest.mark.parametrize("value", [*NOT_INTEGERS, "１２", "²", "1 000"])
def test_stored_int_when_loose_spelling_then_value_error(value: str) -> None:
    from guardrails.scripts import stored_int

    with pytest.raises(ValueError, match="not an integer"):
        stored_int(value, "x")


def test_stored_int_when_strict_then_parsed_and_absent_is_zero() -> None:
    from guardrails.scripts import stored_int

    assert [stored_int(v, "x") for v in ("0", "-12", "9007199254740991", None)] == [
        0, -12, 2**53 - 1, 0]


async def test_ledger_reads_when_position_spelled_loosely_then_ledger_error(
    redis_client: aioredis.Redis, acct: AccountKeys
) -> None:
    await redis_client.hset(acct.positions, f"{SYMBOL}:qty", " 100")
    ledger = Ledger(redis_client, acct, risk())
    with pytest.raises(LedgerError, match="not an integer"):
        await ledger.positions()
    with pytest.raises(LedgerError, match="not an integer"):
        await ledger.budget()
