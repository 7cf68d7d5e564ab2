"""The prune for the operator (guardrails/ops/prune.py, the archive lock and the sweep's
record in guardrails/prune.py, status and doctor) against a real redis-server, the real
prune scripts and a real archive file: a dry run changes nothing, ``--apply`` removes
what it said, a sweep never writes an archive another sweep holds, and what the sweeps
did is visible in ``status`` and judged by ``doctor``."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import redis
import redis.asyncio as aioredis

from guardrails.keys import AccountKeys
from guardrails.ledger import Ledger
from guardrails.ops.doctor.checks import PRUNE_OVERDUE_FACTOR, Census, check_prune, judge
from guardrails.ops.doctor.snapshot import AccountSnapshot, RegistryRow, Snapshot, read_account
from guardrails.prune import (
    Archive,
    PruneError,
    Pruner,
    PruneTotals,
    parse_totals,
    read_archive,
    read_totals,
)
from tests.conftest import ROOT, subprocess_env
from tests.gatekit import account_keys, risk, seed
from tests.redis_harness import RedisServer
from tests.run_harness import write_config
from tests.test_prune import HOUR, fill, place, updated

STATUS_SCHEMA = json.loads((ROOT / "docs" / "status.schema.json").read_text())
DOCTOR_SCHEMA = json.loads((ROOT / "docs" / "doctor.schema.json").read_text())


@pytest.fixture
async def acct(redis_client: aioredis.Redis) -> AccountKeys:
    keys = account_keys("t1")  # write_config's account
    await seed(redis_client, keys, risk())
    return keys


def config(tmp: Path, url: str) -> Path:
    cfg = write_config(tmp / "bot.toml", redis_url=url)
    archive = tmp / "arch" / "paper+t1.jsonl"
    cfg.write_text(cfg.read_text() + f'\n[prune]\nretention = "1h"\nbatch = 2\n'
                   f'archive = "{archive}"\n')
    return cfg


def archive_of(tmp: Path) -> Archive:
    return Archive(tmp / "arch" / "paper+t1.jsonl")


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "guardrails", *args], env=subprocess_env(),
                          cwd=cwd, capture_output=True, text=True, timeout=60)


async def aged_orders(r: aioredis.Redis, keys: AccountKeys) -> tuple[list[str], list[str]]:
    """Five terminal orders aged 2-3 h (one filled, with its fill entry), one open and one
    recent terminal order: (the aged ones, the kept ones)."""
    ledger = Ledger(r, keys, risk())
    old: list[str] = []
    for n in range(5):
        c = await place(r, keys, f"old-{n}")
        if n == 0:
            await fill(ledger, c, "fill-0")
        else:
            await ledger.mark_canceled(c, "by strategy")
        await r.hset(keys.order(c), "updated_ms", await updated(r, keys, c) - 2 * HOUR - n * 60_000)
        old.append(c)
    open_ = await place(r, keys, "open")
    await ledger.mark_submitted(open_, "v-open")
    recent = await place(r, keys, "recent")
    await ledger.mark_canceled(recent, "by strategy")
    return old, [open_, recent]


def dump_all(url: str) -> dict[bytes, tuple[bytes | None, bool]]:
    """Every key's DUMP and whether it has an expiry (its remaining TTL ticks on)."""
    raw = redis.Redis.from_url(url)
    try:
        return {k: (raw.dump(k), int(raw.pttl(k)) >= 0)  # type: ignore[misc]
                for k in raw.keys("*")}
    finally:
        raw.close()


async def test_prune_cli_when_dry_run_then_nothing_changes_and_counts_match_apply(
    redis_server: RedisServer, redis_client: aioredis.Redis, acct: AccountKeys, tmp_path: Path
) -> None:
    # Arrange
    r = redis_client
    old, kept = await aged_orders(r, acct)
    oldest = min([await updated(r, acct, c) for c in old])
    newest = max([await updated(r, acct, c) for c in old])
    cfg = config(tmp_path, redis_server.url)
    before = dump_all(redis_server.url)
    # Act: a dry run (JSON, then the human form)
    dry = cli("prune", "--config", str(cfg), "--json", cwd=tmp_path)
    human = cli("prune", "--config", str(cfg), cwd=tmp_path)
    # Assert: what it would do, and nothing changed in Redis or on disk
    assert dry.returncode == 0 and human.returncode == 0, dry.stderr + human.stderr
    plan = json.loads(dry.stdout)
    assert plan["dry_run"] and plan["orders"] == 5 and plan["intents"] == 5
    assert plan["fills"] == 1 and plan["scanned_orders"] == 7
    assert (plan["oldest_ms"], plan["newest_ms"]) == (oldest, newest)
    assert "would archive and remove 5 terminal orders" in human.stdout
    assert "dry run: nothing changed" in human.stdout
    assert dump_all(redis_server.url) == before
    assert not (tmp_path / "arch").exists()
    # Act: apply
    done = cli("prune", "--config", str(cfg), "--apply", cwd=tmp_path)
    # Assert: exactly what the dry run said went, archived; progress on stderr
    assert done.returncode == 0, done.stderr
    assert "archived and removed 5 orders, 5 intents, 1 fill entries" in done.stdout
    assert "guardrails prune: " in done.stderr and "batch(es)" in done.stderr
    assert not any([await r.exists(acct.order(c)) for c in old])
    assert all([await r.exists(acct.order(c)) for c in kept])
    view = read_archive(archive_of(tmp_path).path)
    assert set(view.orders) == set(old) and set(view.fills) == {"fill-0"}
    totals = await read_totals(r, acct)
    assert (totals.orders, totals.intents, totals.fills) == (5, 5, 1)
    assert totals.last_outcome == "ok" and totals.last_orders == 5 and totals.last_fills == 1
    assert totals.last_by is not None and "(guardrails prune)" in totals.last_by
    assert totals.archive is not None and totals.archive.endswith(str(archive_of(tmp_path).path))
    assert (totals.tombstones, totals.tombstone_bytes) == (10, 60)


async def test_prune_cli_when_updated_ms_malformed_then_dry_run_and_apply_refuse_alike(
    redis_server: RedisServer, redis_client: aioredis.Redis, acct: AccountKeys, tmp_path: Path
) -> None:
    # the dry run and the sweep share one pre-filter (prune.candidate_since): a malformed
    # updated_ms is named by both, never silently left out of the plan
    old, _ = await aged_orders(redis_client, acct)
    await redis_client.hset(acct.order(old[1]), "updated_ms", " 100")
    cfg = config(tmp_path, redis_server.url)
    before = dump_all(redis_server.url)
    dry = cli("prune", "--config", str(cfg), cwd=tmp_path)
    done = cli("prune", "--config", str(cfg), "--apply", cwd=tmp_path)
    # the dry run cannot start (2); the sweep stops on the record before removing it (1)
    assert (dry.returncode, done.returncode) == (2, 1), (dry, done)
    for out in (dry, done):
        assert f"{acct.order(old[1])} updated_ms" in out.stderr, out
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert dump_all(redis_server.url).keys() >= before.keys()
    assert all([await redis_client.exists(acct.order(c)) for c in old])


async def test_sweep_when_another_task_holds_archive_lock_then_skipped_and_nothing_written(
    redis_client: aioredis.Redis, acct: AccountKeys, tmp_path: Path
) -> None:
    # Arrange: one task (this one) holds the archive's lock, as the other sweep would
    r = redis_client
    old, _ = await aged_orders(r, acct)
    archive = archive_of(tmp_path)
    pruner = Pruner(r, acct, archive, retention_ms=HOUR, batch=2, pause_s=0)
    held = archive.try_lock()
    assert held is not None
    assert archive.try_lock() is None  # a second open file description is refused too
    try:
        # Act
        rep = await pruner.sweep()
        # Assert: skipped, nothing removed, nothing archived, the skip recorded
        assert rep.skipped and rep.batches == 0
        assert all([await r.exists(acct.order(c)) for c in old])
        assert not archive.path.exists() and not archive.pending.exists()
        totals = await read_totals(r, acct)
        assert totals.last_skipped_ms is not None and totals.last_run_ms is None
    finally:
        held.release()
    # Act: the lock is free again
    rep = await pruner.sweep()
    # Assert
    assert not rep.skipped and rep.pruned_orders == 5
    assert set(read_archive(archive.path).orders) == set(old)


_HOLDER = """
import sys, time
from pathlib import Path
from guardrails.prune import Archive
lock = Archive(Path(sys.argv[1])).try_lock()
print("held" if lock else "busy", flush=True)
time.sleep(60)
"""


def start_holder(path: Path) -> subprocess.Popen[str]:
    """Another process holding ``path``'s archive lock until killed."""
    return subprocess.Popen([sys.executable, "-c", _HOLDER, str(path)], env=subprocess_env(),
                            stdout=subprocess.PIPE, text=True)


async def test_prune_cli_when_other_process_holds_archive_lock_then_exit_1_and_instance_skips(
    redis_server: RedisServer, redis_client: aioredis.Redis, acct: AccountKeys, tmp_path: Path
) -> None:
    # Arrange: another process holds the lock (as a running instance's sweep would)
    r = redis_client
    old, _ = await aged_orders(r, acct)
    cfg = config(tmp_path, redis_server.url)
    archive = archive_of(tmp_path)
    holder = start_holder(archive.path)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        # Act: the command, and this process's sweep, meet the held lock
        done = cli("prune", "--config", str(cfg), "--apply", cwd=tmp_path)
        rep = await Pruner(r, acct, archive, retention_ms=HOUR, pause_s=0).sweep()
        # Assert: neither waited, neither wrote
        assert done.returncode == 1, done.stderr
        assert "another sweep holds" in done.stderr and str(archive.lock_path) in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
        assert rep.skipped
        assert all([await r.exists(acct.order(c)) for c in old])
        assert not archive.path.exists()
    finally:
        holder.kill()
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()
    # Act: the holder died (the kernel dropped its flock)
    done = cli("prune", "--config", str(cfg), "--apply", cwd=tmp_path)
    # Assert
    assert done.returncode == 0, done.stderr
    assert set(read_archive(archive.path).orders) == set(old)


async def test_sweeps_when_two_tasks_run_at_once_then_one_writes_and_archive_is_exact(
    redis_client: aioredis.Redis, acct: AccountKeys, tmp_path: Path
) -> None:
    """Two sweeps of one archive started together: exactly one runs (the other skips),
    and the archive holds each removed order once."""
    r = redis_client
    old, _ = await aged_orders(r, acct)
    archive = archive_of(tmp_path)
    a = Pruner(r, acct, archive, retention_ms=HOUR, batch=1, pause_s=0.01)
    b = Pruner(r, acct, Archive(archive.path), retention_ms=HOUR, batch=1, pause_s=0.01)
    reps = await asyncio.gather(a.sweep(), b.sweep())
    assert sorted(rep.skipped for rep in reps) == [False, True]
    assert sum(rep.pruned_orders for rep in reps) == 5
    lines = [json.loads(x) for x in archive.path.read_text().splitlines()]
    assert sorted(x["coid"] for x in lines if x["kind"] == "order") == sorted(old)


async def test_sweep_when_archive_unwritable_then_failure_recorded_and_nothing_removed(
    redis_client: aioredis.Redis, acct: AccountKeys, tmp_path: Path
) -> None:
    r = redis_client
    old, _ = await aged_orders(r, acct)
    archive = archive_of(tmp_path)
    archive.path.parent.mkdir(mode=0o700)
    archive.path.write_text("")
    os.chmod(archive.path, 0o644)
    with pytest.raises(PruneError, match="0600"):
        await Pruner(r, acct, archive, retention_ms=HOUR, pause_s=0, by="inst-1").sweep()
    totals = await read_totals(r, acct)
    assert totals.last_outcome == "failed" and totals.last_by == "inst-1"
    assert totals.last_error is not None and "0600" in totals.last_error
    assert all([await r.exists(acct.order(c)) for c in old])
    # the doctor reads it from Redis and warns
    c = Census()
    check_prune(c, await read_account(r, str(acct.account)), [], 0)
    assert [f.code for f in c.findings] == ["prune_failed"]
    assert c.findings[0].severity == "warning"


def test_archive_lock_when_symlink_then_refused_and_cli_exit_2_one_line(tmp_path: Path) -> None:
    archive = archive_of(tmp_path)
    archive.path.parent.mkdir(mode=0o700)
    target = tmp_path / "elsewhere"
    target.write_text("keep")
    archive.lock_path.symlink_to(target)
    with pytest.raises(PruneError, match="symlink"):
        archive.try_lock()
    assert target.read_text() == "keep"


def test_archive_when_hard_linked_or_lock_planted_then_refused_and_target_untouched(
    tmp_path: Path
) -> None:
    # a file of this user hard-linked as the archive (or its lock) is refused, never
    # appended to or locked: one safe open (Archive._open) serves both
    archive = archive_of(tmp_path)
    archive.path.parent.mkdir(mode=0o700)
    target = tmp_path / "ledger-of-record"
    target.write_text("keep")
    os.chmod(target, 0o600)
    os.link(target, archive.path)
    with pytest.raises(PruneError, match="one link"):
        archive.stage([{"kind": "fill", "fill_id": "f", "coid": "c", "pruned_at_ms": 1}])
        archive.commit([{"kind": "fill", "fill_id": "f", "coid": "c", "pruned_at_ms": 1}])
    os.link(target, archive.lock_path)
    with pytest.raises(PruneError, match=r"archive lock .* one link"):
        archive.try_lock()
    assert target.read_text() == "keep"


def test_parse_totals_when_fields_malformed_then_read_as_absent_never_raised() -> None:
    # the stored-integer rule, not str.isdigit(): '١٠٠' is not 100, '²' does not raise
    raw = {"orders": "١٠٠", "intents": "²", "fills": " 7", "last_run_ms": "+5",
           "interval_ms": "1e3", "last_orders": "3"}
    t = parse_totals(raw)
    assert (t.orders, t.intents, t.fills, t.last_run_ms, t.interval_ms, t.last_orders) == (
        0, 0, 0, None, None, 3)


def test_prune_cli_when_bad_input_then_one_line_and_exit_2(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    missing = cli("prune", "--config", str(tmp_path / "nope.toml"), cwd=tmp_path)
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    cfg = config(tmp_path, redis_server.url)
    sync = redis_server.client()
    sync.set(account_keys("t1").schema, "1")
    old = cli("prune", "--config", str(cfg), "--apply", cwd=tmp_path)
    assert old.returncode == 2 and "guardrails migrate" in old.stderr
    assert len(old.stderr.strip().splitlines()) == 1
    sync.delete(account_keys("t1").schema)
    unsafe = tmp_path / "arch"
    unsafe.mkdir(mode=0o755)
    os.chmod(unsafe, 0o755)
    bad = cli("prune", "--config", str(cfg), "--apply", cwd=tmp_path)
    assert bad.returncode == 2 and "0700" in bad.stderr, bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    embedded = cli("prune", "--config", str(cfg), "--redis-url", "embedded", cwd=tmp_path)
    assert embedded.returncode == 2 and "no embedded Redis" in embedded.stderr
    sync.close()


async def test_status_when_pruned_then_totals_last_sweep_and_archive_shown(
    redis_server: RedisServer, redis_client: aioredis.Redis, acct: AccountKeys, tmp_path: Path
) -> None:
    # Arrange: a sweep by "inst-1"
    r = redis_client
    await aged_orders(r, acct)
    archive = archive_of(tmp_path)
    await Pruner(r, acct, archive, retention_ms=HOUR, pause_s=0, by="inst-1").sweep()
    base = ("status", "--redis-url", redis_server.url, "--account", str(acct.account))
    # Act
    as_json = cli(*base, "--json", cwd=tmp_path)
    table = cli(*base, cwd=tmp_path)
    # Assert
    assert as_json.returncode == 0 and table.returncode == 0, as_json.stderr + table.stderr
    doc = json.loads(as_json.stdout)
    jsonschema.validate(doc, STATUS_SCHEMA)
    pr = doc["accounts"][0]["prune"]
    assert (pr["orders"], pr["intents"], pr["fills"]) == (5, 5, 1)
    assert (pr["tombstones"], pr["tombstone_bytes"]) == (10, 60)
    assert pr["last_outcome"] == "ok" and pr["last_by"] == "inst-1" and pr["last_error"] is None
    assert pr["archive"].endswith(str(archive.path)) and isinstance(pr["last_run_ms"], int)
    assert "prune     removed orders=5 intents=5 fills=1 tombstones=10 (60 B)" in table.stdout
    assert " ok (orders=5 fills=1) by=inst-1" in table.stdout
    assert str(archive.path) in table.stdout


# -- the doctor's check, on snapshots built by hand ------------------------------------

ACCOUNT = "paper:t1"
NOW = 10_000_000
INTERVAL = 300_000


def active_snapshot(prune: PruneTotals) -> Snapshot:
    row = RegistryRow({"id": "inst-1", "host": "h", "pid": "1", "role": "active", "token": "3",
                       "last_seen_ms": str(NOW), "config_digest": "c", "limits_digest": "l"},
                      10_000)
    a = AccountSnapshot(ACCOUNT, lease_value="3:inst-1", lease_pttl_ms=1000, fence=3,
                        rows=(row,), prune=prune)
    return Snapshot(host="h", now_ms=NOW, redis_target="redis://x", accounts={ACCOUNT: a})


def prune_codes(s: Snapshot) -> list[str]:
    return [f.code for f in judge(s, None).findings if f.code.startswith("prune")]


@pytest.mark.parametrize(("last_run", "scheduled", "expected"), [
    (NOW - INTERVAL, NOW - 10 * INTERVAL, []),
    (NOW - PRUNE_OVERDUE_FACTOR * INTERVAL - 1, NOW - 10 * INTERVAL, ["prune_overdue"]),
    (None, NOW - INTERVAL, []),  # just scheduled: the first sweep is one interval later
    (None, NOW - PRUNE_OVERDUE_FACTOR * INTERVAL - 1, ["prune_overdue"]),
    (NOW - 10 * INTERVAL, NOW - INTERVAL, []),  # a new term's schedule just started
])
def test_check_prune_when_active_then_overdue_only_after_factor_intervals(
    last_run: int | None, scheduled: int, expected: list[str]
) -> None:
    p = PruneTotals(last_run_ms=last_run, last_outcome="ok" if last_run else None,
                    scheduled_ms=scheduled, interval_ms=INTERVAL)
    assert prune_codes(active_snapshot(p)) == expected


def test_check_prune_when_no_active_instance_or_no_schedule_then_never_overdue() -> None:
    stale = PruneTotals(last_run_ms=1, last_outcome="ok", scheduled_ms=1, interval_ms=INTERVAL)
    s = active_snapshot(stale)
    a = s.accounts[ACCOUNT]
    idle = AccountSnapshot(ACCOUNT, prune=stale)
    assert prune_codes(Snapshot(host="h", now_ms=NOW, redis_target="x",
                                accounts={ACCOUNT: idle})) == []
    unscheduled = AccountSnapshot(ACCOUNT, lease_value=a.lease_value, lease_pttl_ms=1000,
                                  fence=3, rows=a.rows,
                                  prune=PruneTotals(last_run_ms=1, last_outcome="ok"))
    assert prune_codes(Snapshot(host="h", now_ms=NOW, redis_target="x",
                                accounts={ACCOUNT: unscheduled})) == []


def test_check_prune_when_skipped_rounds_then_overdue_names_the_lock() -> None:
    p = PruneTotals(last_run_ms=NOW - 10 * INTERVAL, last_outcome="ok",
                    last_skipped_ms=NOW - 1000, scheduled_ms=1, interval_ms=INTERVAL)
    (f,) = [f for f in judge(active_snapshot(p), None).findings if f.code == "prune_overdue"]
    assert "archive's lock" in f.message and f.severity == "warning"
    assert json.loads(json.dumps(f.to_json()))["code"] in DOCTOR_SCHEMA["properties"][
        "findings"]["items"]["properties"]["code"]["enum"]


def test_check_prune_when_last_failed_then_warning_with_error_and_action() -> None:
    p = PruneTotals(last_run_ms=NOW, last_outcome="failed", last_error="PruneError: disk full",
                    scheduled_ms=NOW, interval_ms=INTERVAL)
    (f,) = [f for f in judge(active_snapshot(p), None).findings if f.code.startswith("prune")]
    assert f.code == "prune_failed" and "disk full" in f.message
    assert "guardrails prune --apply" in f.action
