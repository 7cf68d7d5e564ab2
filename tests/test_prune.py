"""The prune sweep (guardrails/prune.py) against a real redis-server: only terminal and
old orders go, the archive holds exactly what went, a pruned intent is never admitted
again, reconcile still agrees, and ``guardrails migrate`` moves a version-1 account."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from guardrails.gate import OrderGate
from guardrails.keys import SCHEMA_VERSION, AccountKeys
from guardrails.ledger import Ledger
from guardrails.model import Admitted, Denied, DenyReason, Fill, Side
from guardrails.ops import migrate
from guardrails.prune import MAX_BATCH, Archive, Pruner, read_archive
from guardrails.reconcile import reconcile, sweep
from tests.conftest import subprocess_env
from tests.fakevenue import FakeVenue
from tests.gatekit import HOLDER, SYMBOL, TOKEN, account_keys, buy, risk, seed
from tests.redis_harness import RedisServer

HOUR = 3_600_000


@pytest.fixture
async def acct(redis_client: aioredis.Redis) -> AccountKeys:
    keys = account_keys()
    await seed(redis_client, keys, risk())
    return keys


def gate(r: aioredis.Redis, keys: AccountKeys) -> OrderGate:
    return OrderGate(r, keys, risk())


async def place(r: aioredis.Redis, keys: AccountKeys, iid: str, qty: str = "0.0010") -> str:
    d = await gate(r, keys).admit(buy(qty), intent_id=iid, token=TOKEN, holder_id=HOLDER)
    assert isinstance(d, Admitted) and not d.duplicate, d
    return d.client_order_id


async def fill(ledger: Ledger, coid: str, fid: str, qty: str = "0.0010") -> None:
    f = Fill(fid, coid, SYMBOL, Side.BUY, Decimal(qty), Decimal("60000"), ts_ms=1_700_000_000_000)
    assert (await ledger.apply_fill(f)).value == "applied"


async def updated(r: aioredis.Redis, keys: AccountKeys, coid: str) -> int:
    return int(await r.hget(keys.order(coid), "updated_ms") or 0)


def pruner(r: aioredis.Redis, keys: AccountKeys, tmp: Path, **kw: object) -> Pruner:
    return Pruner(r, keys, Archive(tmp / "archive" / "a.jsonl"), retention_ms=HOUR,
                  pause_s=0, **kw)  # type: ignore[arg-type]


async def test_sweep_when_terminal_and_old_then_only_those_removed_with_intent_and_fills(
    redis_client: aioredis.Redis, acct: AccountKeys, tmp_path: Path
) -> None:
    # Arrange: two old terminal orders (filled, canceled), one open, one terminal but recent
    r, ledger = redis_client, Ledger(redis_client, acct, risk())
    filled = await place(r, acct, "filled")
    await fill(ledger, filled, "f1")
    canceled = await place(r, acct, "canceled")
    await ledger.mark_canceled(canceled, "by strategy")
    open_ = await place(r, acct, "open")
    await ledger.mark_submitted(open_, "v-open")
    old_until = max(await updated(r, acct, filled), await updated(r, acct, canceled))
    while (await r.time())[1] // 1000 == old_until % 1000:  # next ms
        pass
    recent = await place(r, acct, "recent")
    await ledger.mark_canceled(recent, "by strategy")
    assert await updated(r, acct, recent) > old_until
    # Act: the cutoff falls between the old ones and the recent one
    rep = await pruner(r, acct, tmp_path).sweep(now_ms=old_until + HOUR)
    # Assert
    assert sorted(rep.pruned) == sorted([filled, canceled])
    assert rep.pruned_orders == 2 and rep.pruned_intents == 2 and rep.pruned_fills == 1
    for gone in (filled, canceled):
        assert not await r.exists(acct.order(gone))
    assert sorted(await r.hkeys(acct.intents)) == ["open", "recent"]
    assert await r.hgetall(acct.fills) == {}
    for kept in (open_, recent):
        assert await r.hget(acct.order(kept), "state") is not None
    state = await r.hgetall(acct.prune_state)
    assert {k: state[k] for k in ("orders", "intents", "fills")} == {
        "orders": "2", "intents": "2", "fills": "1"}
    assert state["last_outcome"] == "ok" and state["last_orders"] == "2"
    assert state["last_fills"] == "1" and state["last_error"] == ""


@pytest.mark.parametrize("state", ["PENDING_SUBMIT", "SUBMITTED", "UNKNOWN", "PARTIALLY_FILLED"])
async def test_sweep_when_order_not_terminal_then_never_removed_however_old(
    redis_client: aioredis.Redis, acct: AccountKeys, tmp_path: Path, state: str
) -> None:
    r, ledger = redis_client, Ledger(redis_client, acct, risk())
    coid = await place(r, acct, "live", qty="0.0020")
    if state == "SUBMITTED":
        await ledger.mark_submitted(coid, "v1")
    elif state == "UNKNOWN":
        await ledger.mark_unknown(coid, "timeout")
    elif state == "PARTIALLY_FILLED":
        await fill(ledger, coid, "half", qty="0.0010")
    assert await r.hget(acct.order(coid), "state") == state
    before = await r.hgetall(acct.order(coid))
    rep = await pruner(r, acct, tmp_path).sweep(now_ms=await updated(r, acct, coid) + 1000 * HOUR)
    assert rep.pruned_orders == 0 and rep.pruned_fills == 0
    assert await r.hgetall(acct.order(coid)) == before
    assert await r.hexists(acct.intents, "live")
    assert read_archive(tmp_path / "archive" / "a.jsonl").orders == {}


async def test_script_when_record_looks_terminal_but_is_open_then_kept(
    redis_client: aioredis.Redis, acct: AccountKeys, tmp_path: Path
) -> None:
    """The script's own re-check: a record in the open set is never removed, even if the
    caller (or a corrupted record) says it is terminal."""
    r, ledger = redis_client, Ledger(redis_client, acct, risk())
    coid = await place(r, acct, "odd")
    await ledger.mark_canceled(coid, "x")
    await r.sadd(acct.open_orders, coid)
    rep = await pruner(r, acct, tmp_path).sweep(now_ms=await updated(r, acct, coid) + 2 * HOUR)
    assert rep.pruned_orders == 0 and rep.kept == 1
    assert await r.exists(acct.order(coid))
    assert read_archive(tmp_path / "archive" / "a.jsonl").orders == {}


async def test_admit_when_intent_was_pruned_then_refused_and_nothing_reserved(
    redis_client: aioredis.Redis, acct: AccountKeys, tmp_path: Path
) -> None:
    # Arrange: an intent admitted, filled, and pruned
    r, ledger = redis_client, Ledger(redis_client, acct, risk())
    coid = await place(r, acct, "late-retry")
    await fill(ledger, coid, "lf1")
    rep = await pruner(r, acct, tmp_path).sweep(now_ms=await updated(r, acct, coid) + 2 * HOUR)
    assert rep.pruned == [coid]
    reservations = await r.hgetall(acct.reservations)
    # Act: a late retry of the very same intent (same id and fields)
    d = await gate(r, acct).admit(buy("0.0010"), intent_id="late-retry", token=TOKEN,
                                  holder_id=HOLDER)
    # Assert: refused, nothing recreated or reserved; a new id is still admitted
    assert isinstance(d, Denied) and d.reason is DenyReason.INTENT_PRUNED, d
    assert not await r.exists(acct.order(coid))
    assert not await r.hexists(acct.intents, "late-retry")
    assert await r.hgetall(acct.reservations) == reservations
    assert await r.hget(acct.stats, "denied:intent_pruned") == "1"
    assert isinstance(await gate(r, acct).admit(buy("0.0010"), intent_id="fresh", token=TOKEN,
                                                holder_id=HOLDER), Admitted)


async def test_tombstones_when_many_pruned_then_each_refused_and_others_admitted(
    redis_server: RedisServer, redis_client: aioredis.Redis, acct: AccountKeys, tmp_path: Path
) -> None:
    """Several batches, shared buckets: every pruned id is refused, 6 bytes each."""
    r, ledger = redis_client, Ledger(redis_client, acct, risk())
    ids = [f"bulk-{i}" for i in range(120)]
    last = 0
    for iid in ids:
        c = await place(r, acct, iid, qty="0.0001")
        await ledger.mark_canceled(c, "x")
        last = await updated(r, acct, c)
    rep = await pruner(r, acct, tmp_path, batch=17).sweep(now_ms=last + 2 * HOUR)
    assert rep.pruned_orders == 120 and rep.batches >= 120 // 17
    raw = __import__("redis").Redis(port=redis_server.port)  # bytes: 6 per pruned id
    tomb = raw.hgetall(acct.tombstones)
    assert sum(len(v) for f, v in tomb.items() if len(f) == 3) == 6 * 120  # intent ids
    assert sum(len(v) for f, v in tomb.items() if len(f) == 4) == 6 * 120  # coids: "c" + 3 hex
    raw.close()
    g = gate(r, acct)
    for iid in ids[::7]:
        d = await g.admit(buy("0.0001"), intent_id=iid, token=TOKEN, holder_id=HOLDER)
        assert isinstance(d, Denied) and d.reason is DenyReason.INTENT_PRUNED, (iid, d)
    for i in range(20):
        d = await g.admit(buy("0.0001"), intent_id=f"new-{i}", token=TOKEN, holder_id=HOLDER)
        assert isinstance(d, Admitted), d


async def test_archive_when_pruned_then_holds_exactly_the_removed_records_0600(
    redis_client: aioredis.Redis, acct: AccountKeys, tmp_path: Path
) -> None:
    r, ledger = redis_client, Ledger(redis_client, acct, risk())
    coids = []
    for i in range(5):
        c = await place(r, acct, f"arch-{i}")
        await fill(ledger, c, f"af-{i}")
        coids.append(c)
    keep = await place(r, acct, "arch-open")
    records = {c: await r.hgetall(acct.order(c)) for c in coids}
    intents = {c: await r.hget(acct.intents, f"arch-{i}") for i, c in enumerate(coids)}
    p = pruner(r, acct, tmp_path, batch=2)
    rep = await p.sweep(now_ms=max([await updated(r, acct, c) for c in coids]) + 2 * HOUR)
    view = read_archive(p.archive.path)
    assert set(view.orders) == set(rep.pruned) == set(coids)
    for i, c in enumerate(coids):
        line = view.orders[c]
        assert line["order"] == records[c] and line["intent"] == intents[c]
        assert line["intent_id"] == f"arch-{i}" and line["account"] == str(acct.account)
    assert view.fills == {f"af-{i}": c for i, c in enumerate(coids)}
    assert keep not in view.orders
    assert stat.S_IMODE(os.stat(p.archive.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(p.archive.path.parent).st_mode) == 0o700
    assert not p.archive.pending.exists()
    # a second sweep removes nothing more and writes nothing more
    size = p.archive.path.stat().st_size
    rep2 = await p.sweep(now_ms=rep.cutoff_ms + HOUR + 10 * HOUR)
    assert rep2.pruned_orders == 0 and p.archive.path.stat().st_size == size


async def test_recover_when_crash_after_script_then_pending_lines_archived_once(
    redis_client: aioredis.Redis, acct: AccountKeys, tmp_path: Path
) -> None:
    """A crash between the script and the archive append: the next sweep archives what
    the script removed (its key is gone) and drops what it kept."""
    r, ledger = redis_client, Ledger(redis_client, acct, risk())
    gone, kept = await place(r, acct, "crash-a"), await place(r, acct, "crash-b")
    await ledger.mark_canceled(gone, "x")
    p = pruner(r, acct, tmp_path)
    p.archive.stage([{"v": 1, "kind": "order", "coid": gone, "order": {}},
                     {"v": 1, "kind": "order", "coid": kept, "order": {}}])
    await r.delete(acct.order(gone))  # what the script did before the "crash"
    assert await p.recover() == 1
    assert set(read_archive(p.archive.path).orders) == {gone}
    assert not p.archive.pending.exists()


async def test_archive_when_file_is_not_0600_then_refused_and_nothing_removed(
    redis_client: aioredis.Redis, acct: AccountKeys, tmp_path: Path
) -> None:
    from guardrails.prune import PruneError

    r, ledger = redis_client, Ledger(redis_client, acct, risk())
    c = await place(r, acct, "perm")
    await ledger.mark_canceled(c, "x")
    p = pruner(r, acct, tmp_path)
    p.archive.path.parent.mkdir(mode=0o700)
    p.archive.path.write_text("")
    os.chmod(p.archive.path, 0o644)
    with pytest.raises(PruneError, match="0600"):
        await p.sweep(now_ms=await updated(r, acct, c) + 2 * HOUR)
    assert await r.exists(acct.order(c))


def test_pruner_when_batch_above_bound_then_refused() -> None:
    with pytest.raises(ValueError, match="batch"):
        Pruner(None, account_keys(), Archive(Path("/nonexistent")),  # type: ignore[arg-type]
               retention_ms=HOUR, batch=MAX_BATCH + 1)


async def test_reconcile_when_after_prune_then_ok_and_sweep_clean(
    redis_client: aioredis.Redis, acct: AccountKeys, tmp_path: Path
) -> None:
    # Arrange: filled and canceled orders pruned; one order still UNKNOWN
    r, ledger = redis_client, Ledger(redis_client, acct, risk())
    for i in range(3):
        c = await place(r, acct, f"rc-{i}")
        await fill(ledger, c, f"rcf-{i}")
    c = await place(r, acct, "rc-cancel")
    await ledger.mark_canceled(c, "x")
    last = await updated(r, acct, c)
    unknown = await place(r, acct, "rc-unknown")
    await ledger.mark_unknown(unknown, "timeout")
    positions = await ledger.positions()
    rep = await pruner(r, acct, tmp_path).sweep(now_ms=last + HOUR)
    assert rep.pruned_orders == 4
    # Act: the venue says the UNKNOWN one filled
    venue = FakeVenue()
    from guardrails.venues.base import VenueOrderState, VenueOrderStatus

    f = Fill("rcf-u", unknown, SYMBOL, Side.BUY, Decimal("0.0010"), Decimal("60000"), ts_ms=5)
    venue.status[unknown] = VenueOrderStatus(unknown, VenueOrderState.FILLED, fills=(f,))
    report = await reconcile(ledger, venue, now_ms=0)
    sw = await sweep(ledger, venue, fix=False)
    # Assert: reconciled, the totals agree with the remaining records, positions intact
    assert report.ok and report.checked == 1 and report.fills_applied == 1
    assert sw.clean, sw
    after = await ledger.positions()
    assert after[SYMBOL].qty == positions[SYMBOL].qty + Decimal("0.0010")
    assert await r.hgetall(acct.reservations) == {f"{SYMBOL}:buy": "0", f"{SYMBOL}:loss": "0"}


async def test_checker_when_after_prune_then_archive_restores_orders_and_fills(
    redis_server: RedisServer, acct: AccountKeys, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    from guardrails.chaos.checker import Units as U
    from guardrails.chaos.checker import read_ledger

    r, ledger = redis_client, Ledger(redis_client, acct, risk())
    c = await place(r, acct, "ck")
    await fill(ledger, c, "ckf")
    units = {s: U(i.tick, i.lot) for s, i in risk().instruments.items()}
    sync = redis_server.client()
    before = read_ledger(sync, acct, units)
    p = pruner(r, acct, tmp_path)
    await p.sweep(now_ms=await updated(r, acct, c) + 2 * HOUR)
    assert c not in read_ledger(sync, acct, units).orders
    merged = read_ledger(sync, acct, units, archive=p.archive.path)
    assert merged.orders[c] == before.orders[c] and merged.fills == before.fills


# -- migration -------------------------------------------------------------------------------


async def _v1_dataset(r: aioredis.Redis, keys: AccountKeys) -> list[str]:
    """A version-1 account: its records, schema key '1'."""
    ledger = Ledger(r, keys, risk())
    coids = []
    for i in range(3):
        c = await place(r, keys, f"v1-{i}")
        await ledger.mark_canceled(c, "x")
        coids.append(c)
    await r.set(keys.schema, "1")
    return coids


async def test_migrate_when_v1_then_dry_run_changes_nothing_and_apply_moves_version(
    redis_client: aioredis.Redis, acct: AccountKeys
) -> None:
    r = redis_client
    await _v1_dataset(r, acct)
    await r.delete(acct.lease)
    d = await gate(r, acct).admit(buy("0.001"), intent_id="x", token=TOKEN, holder_id=HOLDER)
    assert isinstance(d, Denied) and d.reason is DenyReason.SCHEMA_MISMATCH
    p = await migrate.plan(r, acct)
    assert p.action == "migrate" and p.terminal_orders == 3 and await r.get(acct.schema) == "1"
    done = await migrate.apply(r, acct)
    assert done.applied and await r.get(acct.schema) == str(SCHEMA_VERSION)
    assert (await migrate.apply(r, acct)).action == "current"


async def test_migrate_when_instance_live_then_refused_and_version_kept(
    redis_client: aioredis.Redis, acct: AccountKeys
) -> None:
    r = redis_client
    await _v1_dataset(r, acct)  # seed() holds the lease
    p = await migrate.apply(r, acct)
    assert p.action == "refused" and not p.applied and any("lease:" in x for x in p.live)
    await r.delete(acct.lease)
    await r.zadd(acct.instances, {"host-1-99": 1})
    await r.hset(acct.instance("host-1-99"), mapping={"id": "host-1-99", "role": "standby"})
    p = await migrate.apply(r, acct)
    assert p.action == "refused" and p.live == ["host-1-99"]
    assert await r.get(acct.schema) == "1"


def test_migrate_cli_when_v1_then_dry_run_by_default_then_apply(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    import asyncio

    keys = account_keys("cli")

    async def arrange() -> None:
        r = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        try:
            await seed(r, keys, risk())
            await _v1_dataset(r, keys)
            await r.delete(keys.lease)
        finally:
            await r.aclose()

    asyncio.run(arrange())
    base = [sys.executable, "-m", "guardrails", "migrate", "--redis-url", redis_server.url,
            "--account", str(keys.account)]
    env = subprocess_env()
    dry = subprocess.run([*base, "--json"], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    doc = json.loads(dry.stdout)
    assert doc["dry_run"] and doc["action"] == "migrate" and not doc["applied"]
    sync = redis_server.client()
    assert sync.get(keys.schema) == "1"
    done = subprocess.run([*base, "--apply"], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "migrated" in done.stdout and sync.get(keys.schema) == str(SCHEMA_VERSION)


async def test_was_pruned_when_order_pruned_then_true_else_false(
    redis_client: aioredis.Redis, acct: AccountKeys, tmp_path: Path
) -> None:
    """How the runtime tells a late fill of a pruned order from foreign activity."""
    from guardrails.prune import was_pruned

    r, ledger = redis_client, Ledger(redis_client, acct, risk())
    old, live = await place(r, acct, "wp-old"), await place(r, acct, "wp-live")
    await ledger.mark_canceled(old, "x")
    assert not await was_pruned(r, acct, old)
    await pruner(r, acct, tmp_path).sweep(now_ms=await updated(r, acct, old) + 2 * HOUR)
    assert await was_pruned(r, acct, old)
    assert not await was_pruned(r, acct, live)
    assert not await was_pruned(r, acct, "c" + "0" * 31)
    # a late fill of it is unknown to the ledger (nothing written), never applied
    f = Fill("late", old, SYMBOL, Side.BUY, Decimal("0.0010"), Decimal("60000"), ts_ms=5)
    assert (await ledger.apply_fill(f)).value == "unknown_order"
    assert not await r.exists(acct.order(old))


# -- the active instance runs the sweep ------------------------------------------------------


@pytest.mark.slow
def test_run_when_active_then_sweep_archives_and_removes_aged_terminal_orders(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A real ``guardrails run``: its orders fill at the paper venue; once their records are
    aged past the retention window (rewritten two hours back, as time would), the active
    instance's sweep archives and removes them, and the archive holds exactly those."""
    import time

    from guardrails.keys import AccountId
    from tests.run_harness import RunProc, write_config

    cfg = write_config(tmp_path / "run.toml", redis_url=redis_server.url,
                       looper={"offset": "0.01", "count": 3, "interval": "100ms"})
    cfg.write_text(cfg.read_text() + '\n[prune]\nretention = "1h"\ninterval = "300ms"\n')
    keys = AccountKeys(AccountId("paper", "t1"))
    proc = RunProc("pruner", cfg, tmp_path).start()
    try:
        proc.wait_for("lease.acquired")
        r = redis_server.client()
        filled: list[str] = []
        deadline = time.monotonic() + 60
        while len(filled) < 3:
            assert time.monotonic() < deadline, proc.text()[-3000:]
            names = r.keys(keys.order("*").replace("{", "[{]"))
            filled = [n.rsplit(":", 1)[1] for n in names if r.hget(n, "state") == "FILLED"]
            time.sleep(0.1)
        before = {c: r.hgetall(keys.order(c)) for c in filled}
        for c in filled:
            r.hset(keys.order(c), "updated_ms", int(before[c]["updated_ms"]) - 2 * HOUR)
            before[c]["updated_ms"] = str(int(before[c]["updated_ms"]) - 2 * HOUR)
        swept = proc.wait_for("prune.swept", timeout=30)
        assert int(swept["orders"]) == 3 and int(swept["fills"]) >= 0
        assert not any(r.exists(keys.order(c)) for c in filled)
        view = read_archive(swept["archive"])
        assert {c: view.orders[c]["order"] for c in filled} == before
        assert set(view.orders) == set(filled)
        assert r.get(keys.schema) == str(SCHEMA_VERSION)
        state = r.hgetall(keys.prune_state)  # the sweep's record, for status and doctor
        assert state["interval_ms"] == "300" and int(state["scheduled_ms"]) > 0
        assert state["last_by"] in r.zrange(keys.instances, 0, -1)
        assert state["archive"].endswith(swept["archive"])
        r.close()
    finally:
        proc.cleanup()


async def test_fence_recover_when_orders_pruned_then_archive_tokens_count(
    redis_client: aioredis.Redis, acct: AccountKeys, tmp_path: Path
) -> None:
    """A pruned order's token is no longer in Redis, but ``fence recover`` still sees it
    in the archive, so the re-seeded fence stays above every token handed out."""
    from guardrails.fencing import highest_tokens, recover

    r, ledger = redis_client, Ledger(redis_client, acct, risk())
    c = await place(r, acct, "tok")
    await ledger.mark_canceled(c, "x")
    await r.hset(acct.order(c), "token", "41")  # as if admitted under a later token
    p = pruner(r, acct, tmp_path)
    await p.sweep(now_ms=await updated(r, acct, c) + 2 * HOUR)
    await r.delete(acct.journal)  # the other records of that token are gone too
    assert (await highest_tokens(r, acct))["orders"] == 0
    seen = await highest_tokens(r, acct, archive=p.archive.path)
    assert seen["archive"] == 41
    rec = await recover(r, acct, archive=p.archive.path)
    assert rec.floor >= 41 and int(await r.get(acct.fence)) >= 41


async def test_limits_when_account_is_v1_then_refused_naming_the_migration(
    redis_client: aioredis.Redis, acct: AccountKeys
) -> None:
    """A new-version instance never leads (so never prunes) a version-1 account."""
    from guardrails import limits

    await redis_client.set(acct.schema, "1")
    diff = await limits.check_or_init(redis_client, acct, risk(), "test")
    assert diff is not None and "guardrails migrate" in str(diff)
    await redis_client.delete(acct.lease)
    assert (await migrate.apply(redis_client, acct)).applied
    assert await limits.check_or_init(redis_client, acct, risk(), "test") is None
