"""One stored-integer rule in Python too: every Python reader of an integer field from
Redis applies lib/int.lua's definition (``scripts.stored_int`` / ``stored_nat``), so a
malformed field is a clear error naming its key and field, never a different number.
Each value is planted with a raw client into a real redis-server; where a script reads
the same field, the same value makes the script fail closed too (Lua and Python agree)."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as aioredis

from guardrails import fencing, limits, scripts
from guardrails.gate import OrderGate
from guardrails.keys import AccountKeys
from guardrails.killswitch import KillSwitchError, read_latch
from guardrails.lease import parse_lease_value
from guardrails.ledger import Ledger, LedgerError
from guardrails.model import Admitted, Denied, DenyReason
from guardrails.ops import status
from guardrails.ops.doctor.snapshot import as_int
from guardrails.prune import Archive, PruneError, Pruner
from guardrails.reconcile import _rebuild, sweep
from guardrails.registry import Registry
from tests.fakevenue import FakeVenue
from tests.gatekit import HOLDER, SYMBOL, TOKEN, account_keys, buy, risk, seed
from tests.redis_harness import RedisServer

# What int() (or Lua's tonumber) reads as a number but a stored integer is not.
MALFORMED = [" 100", "+1", "1_000", "0x64", "1e3", "9007199254740993"]


@pytest.fixture
async def acct(redis_client: aioredis.Redis) -> AccountKeys:
    keys = account_keys("strictpy")
    await seed(redis_client, keys, risk())
    return keys


async def place(r: aioredis.Redis, keys: AccountKeys, iid: str) -> str:
    d = await OrderGate(r, keys, risk()).admit(
        buy("0.0100"), intent_id=iid, token=TOKEN, holder_id=HOLDER)
    assert isinstance(d, Admitted), d
    return d.client_order_id


@pytest.mark.parametrize("bad", MALFORMED)
def test_stored_int_when_malformed_then_refused_naming_what(bad: str) -> None:
    with pytest.raises(ValueError, match=r"k f is not an integer"):
        scripts.stored_int(bad, "k f")
    with pytest.raises(ValueError, match=r"k f is not an integer"):
        scripts.stored_nat(bad, "k f")


def test_stored_nat_when_negative_then_refused_and_absent_is_zero() -> None:
    with pytest.raises(ValueError, match="k f is negative: -3"):
        scripts.stored_nat("-3", "k f")
    assert scripts.stored_nat(None, "k f") == 0 and scripts.stored_nat(b"42", "k f") == 42


# -- the sweep (reconcile.py) and ledger_rebuild.lua ----------------------------------


@pytest.mark.parametrize("bad", MALFORMED)
async def test_sweep_when_order_wl_malformed_then_error_names_key_and_rebuild_refuses_too(
    redis_client: aioredis.Redis, acct: AccountKeys, bad: str
) -> None:
    # Arrange: one open order whose worst-loss field is not a stored integer
    r = redis_client
    coid = await place(r, acct, "wl")
    await r.hset(acct.order(coid), "wl", bad)
    ledger = Ledger(r, acct, risk())
    # Act / Assert: the sweep refuses, naming the order's key and the field
    with pytest.raises(LedgerError, match=rf"order {coid} \({acct.order(coid)}\) wl is not an"):
        await sweep(ledger, FakeVenue(), fix=False)
    # and the script that rebuilds from the same field refuses the same value
    before = await r.hgetall(acct.reservations)
    with pytest.raises(LedgerError, match=r"rebuild refused.*wl is not an integer"):
        await _rebuild(ledger)
    assert await r.hgetall(acct.reservations) == before


async def test_sweep_when_order_open_lots_negative_then_error_like_rebuild(
    redis_client: aioredis.Redis, acct: AccountKeys
) -> None:
    r = redis_client
    coid = await place(r, acct, "neg")
    await r.hset(acct.order(coid), "open_lots", "-5")
    ledger = Ledger(r, acct, risk())
    with pytest.raises(LedgerError, match=rf"order {coid} .* open_lots is negative"):
        await sweep(ledger, FakeVenue(), fix=False)
    with pytest.raises(LedgerError, match=r"rebuild refused.*open_lots is negative"):
        await _rebuild(ledger)


@pytest.mark.parametrize("bad", MALFORMED)
async def test_order_record_when_field_malformed_then_error_names_the_order_key(
    redis_client: aioredis.Redis, acct: AccountKeys, bad: str
) -> None:
    coid = await place(redis_client, acct, "rec")
    await redis_client.hset(acct.order(coid), "open_lots", bad)
    with pytest.raises(LedgerError, match=rf"{acct.order(coid)}\) open_lots is not an integer"):
        await Ledger(redis_client, acct, risk()).order(coid)


@pytest.mark.parametrize("bad", MALFORMED)
async def test_sweep_when_stored_reservation_malformed_then_mismatch_gate_refuses_fix_repairs(
    redis_client: aioredis.Redis, acct: AccountKeys, bad: str
) -> None:
    # Arrange: one open order (100 lots reserved), then the reservation field replaced
    r = redis_client
    await place(r, acct, "res")
    field = f"{SYMBOL}:buy"
    await r.hset(acct.reservations, field, bad)
    ledger = Ledger(r, acct, risk())
    # Act
    report = await sweep(ledger, FakeVenue(), fix=False)
    # Assert: named as malformed (not read as some number, not a 'stored 0' line)
    assert report.reservation_mismatches == [
        f"{field}: {acct.reservations} field {field} is not an integer: {bad!r}"]
    assert not report.clean
    # the gate reads the same field and fails closed on the same value
    d = await OrderGate(r, acct, risk()).admit(
        buy("0.0100"), intent_id="after", token=TOKEN, holder_id=HOLDER)
    assert isinstance(d, Denied) and d.reason is DenyReason.BAD_STATE, d
    # --fix rebuilds the hash from the order records
    fixed = await sweep(ledger, FakeVenue(), fix=True)
    assert fixed.fixed and await r.hget(acct.reservations, field) == "100"


# -- fencing.py (fence status / recover) ------------------------------------------------


@pytest.mark.parametrize("bad", MALFORMED)
async def test_recover_when_order_token_malformed_then_refused_naming_key_nothing_written(
    redis_client: aioredis.Redis, acct: AccountKeys, bad: str
) -> None:
    # Arrange: an order record whose token is not a stored integer (read as 0 it could
    # put the floor below a token already handed out)
    r = redis_client
    coid = await place(r, acct, "tok")
    await r.hset(acct.order(coid), "token", bad)
    fence_before, epoch_before = await r.get(acct.fence), await r.get(acct.epoch)
    # Act / Assert
    with pytest.raises(fencing.FenceRecordError, match=rf"{acct.order(coid)} token is not an"):
        await fencing.recover(r, acct)
    assert (await r.get(acct.fence), await r.get(acct.epoch)) == (fence_before, epoch_before)


@pytest.mark.parametrize("bad", MALFORMED)
async def test_fence_status_when_fence_malformed_then_refused_naming_the_key(
    redis_client: aioredis.Redis, acct: AccountKeys, bad: str
) -> None:
    await redis_client.set(acct.fence, bad)
    with pytest.raises(fencing.FenceRecordError, match=rf"{acct.fence} is not an integer"):
        await fencing.fence_status(redis_client, acct)
    # status reports it instead of showing another number (or nothing)
    errors: list[str] = []
    doc = await status._lease(redis_client, acct, errors)
    assert doc["fence"] is None and errors == [f"{acct.fence} value {bad!r} is not an integer"]


@pytest.mark.parametrize("bad", MALFORMED)
async def test_lease_acquire_when_fence_malformed_then_script_fails_closed_too(
    redis_client: aioredis.Redis, bad: str
) -> None:
    # Lua's side of the fence: lease_acquire.lua reads the fence with lib/int's rule
    # before any write (a fence from before epochs would otherwise get its epoch set
    # first, and INCR would take 2^53 + 1)
    from redis.exceptions import ResponseError

    from guardrails.config import LeaseConfig
    from guardrails.lease import Lease

    keys = account_keys("fencebad")
    await redis_client.set(keys.fence, bad)
    lease = Lease(redis_client, keys, "h", LeaseConfig.model_validate({"ttl": "10s"}))
    with pytest.raises(ResponseError, match=f"lease_acquire: fence {keys.fence} is not an integer"):
        await lease.try_acquire()
    assert await redis_client.get(keys.lease) is None
    assert await redis_client.get(keys.fence) == bad
    assert await redis_client.get(keys.epoch) is None


@pytest.mark.parametrize("bad", MALFORMED)
async def test_lease_acquire_when_alarm_seen_token_malformed_then_refused_naming_it(
    redis_client: aioredis.Redis, bad: str
) -> None:
    from redis.exceptions import ResponseError

    from guardrails.config import LeaseConfig
    from guardrails.lease import Lease

    keys = account_keys("alarmbad")
    await redis_client.hset(keys.fence_alarm, mapping={"reason": "history_lost", "seen_token": bad})
    lease = Lease(redis_client, keys, "h", LeaseConfig.model_validate({"ttl": "10s"}))
    with pytest.raises(ResponseError, match=f"alarm {keys.fence_alarm} seen_token is not an integer"):
        await lease.try_acquire()
    assert await redis_client.get(keys.lease) is None
    assert await redis_client.hget(keys.fence_alarm, "seen_token") == bad


# -- prune.py and prune_orders.lua ------------------------------------------------------


@pytest.mark.parametrize("bad", [" 100", "+1", "1_000", "9007199254740993", "١٠٠"])
async def test_prune_when_updated_ms_malformed_then_refused_and_script_refuses_too(
    redis_client: aioredis.Redis, acct: AccountKeys, tmp_path: Path, bad: str
) -> None:
    # Arrange: a terminal order whose updated_ms is not a stored integer
    r = redis_client
    coid = await place(r, acct, "old")
    await Ledger(r, acct, risk()).mark_canceled(coid, "by test")
    await r.hset(acct.order(coid), "updated_ms", bad)
    pruner = Pruner(r, acct, Archive(tmp_path / "a.jsonl"), retention_ms=1, pause_s=0)
    # Act / Assert: the sweep names the key; nothing removed
    with pytest.raises(PruneError, match=rf"{acct.order(coid)} updated_ms is not an integer"):
        await pruner.sweep(now_ms=10**15)
    assert await r.exists(acct.order(coid))
    # the script given the same record refuses it as well
    k = acct
    raw = await scripts.register(r, "prune_orders")(
        keys=[k.open_orders, k.intents, k.tombstones, k.prune_state, k.clob_orders,
              k.clob_hashes, k.order(coid)],
        args=[str(10**15), coid, bad])
    assert raw[0] == 4 and "updated_ms is not an integer" in raw[1]
    assert await r.exists(acct.order(coid))


# -- killswitch, limits, lease value, registry, status/doctor -------------------------


@pytest.mark.parametrize("bad", MALFORMED)
async def test_read_latch_when_at_ms_malformed_then_fails_closed_naming_key(
    redis_client: aioredis.Redis, bad: str
) -> None:
    keys = account_keys("latch")
    await redis_client.hset(keys.state, mapping={"state": "HALTED", "at_ms": bad})
    with pytest.raises(KillSwitchError, match=rf"{keys.state} at_ms is not an integer"):
        await read_latch(redis_client, keys)


@pytest.mark.parametrize("bad", MALFORMED)
async def test_limits_mismatch_when_set_at_ms_malformed_then_named_not_read(
    redis_client: aioredis.Redis, acct: AccountKeys, bad: str
) -> None:
    await redis_client.hset(acct.limits, "set_at_ms", bad)
    mismatch = await limits.check_or_init(redis_client, acct, risk(burst=999), "test")
    assert mismatch is not None and mismatch.stored_at_ms == 0
    assert f"{acct.limits} set_at_ms is not an integer: {bad!r}" in mismatch.differences


@pytest.mark.parametrize("bad", [*MALFORMED, "١٠٠", "²"])
def test_parse_lease_value_when_token_malformed_then_malformed(bad: str) -> None:
    assert parse_lease_value(f"{bad}:holder") == (-1, f"{bad}:holder")
    assert parse_lease_value("12:holder") == (12, "holder")


@pytest.mark.parametrize("bad", MALFORMED)
async def test_list_instances_when_int_fields_malformed_then_kept_as_text_token_none(
    redis_client: aioredis.Redis, bad: str
) -> None:
    keys = account_keys("reg")
    await redis_client.zadd(keys.instances, {"i-1": 10**12})
    await redis_client.hset(keys.instance("i-1"), mapping={
        "id": "i-1", "pid": bad, "last_seen_ms": "1000", "token": bad})
    [row] = await Registry.list_instances(redis_client, keys)
    assert row["pid"] == bad and row["last_seen_ms"] == 1000 and row["token"] is None


@pytest.mark.parametrize("bad", MALFORMED)
def test_status_and_doctor_readers_when_malformed_then_none(bad: str) -> None:
    assert status._int_or_none(bad) is None and as_int(bad) is None
    assert status._int_or_none("-12") == -12 and as_int("7") == 7
    assert status._int_or_none(None) is None and as_int(None) is None


# -- the chaos checker (parses the keys itself: its own strict reader) -----------------


@pytest.mark.parametrize("bad", MALFORMED)
async def test_checker_when_stored_fields_malformed_then_error_names_key_and_field(
    redis_server: RedisServer, redis_client: aioredis.Redis, acct: AccountKeys, bad: str
) -> None:
    from guardrails.chaos.checker import Units, parse_journal, read_aggregates, read_ledger

    units = {s: Units(i.tick, i.lot) for s, i in risk().instruments.items()}
    sync = redis_server.client()
    coid = await place(redis_client, acct, "ck")
    field = f"{SYMBOL}:buy"
    await redis_client.hset(acct.reservations, field, bad)
    with pytest.raises(ValueError, match=rf"{acct.reservations} field {field} is not an integer"):
        read_ledger(sync, acct, units)
    with pytest.raises(ValueError, match=rf"{acct.reservations} field {field} is not an integer"):
        read_aggregates(sync, acct, risk())
    await redis_client.hset(acct.reservations, field, "100")
    await redis_client.hset(acct.order(coid), "filled_lots", bad)
    with pytest.raises(ValueError, match=rf"order {coid} filled_lots is not an integer"):
        read_ledger(sync, acct, units)
    [(entry_id, admit)] = [e for e in await redis_client.xrange(acct.journal)
                           if e[1].get("ev") == "admit"]
    with pytest.raises(ValueError, match=rf"journal {entry_id} token is not an integer"):
        parse_journal([(entry_id, {**admit, "token": bad})], units)


@pytest.mark.parametrize("bad", MALFORMED)
async def test_chaos_harness_counters_when_stats_malformed_then_error_names_field(
    redis_client: aioredis.Redis, acct: AccountKeys, bad: str
) -> None:
    from guardrails.chaos.harness import _admitted, _decisions

    await redis_client.hset(acct.stats, mapping={"admitted": "3", "denied:price_band": bad})
    with pytest.raises(ValueError, match=rf"{acct.stats} denied:price_band is not an integer"):
        await _decisions(redis_client, acct)
    await redis_client.hset(acct.stats, "admitted", bad)
    with pytest.raises(ValueError, match=rf"{acct.stats} admitted is not an integer"):
        await _admitted(redis_client, acct)
