"""Fencing epochs: a fence history that Redis lost (FLUSHALL, empty restart) or replaced
(an older snapshot) is refused, by every instance, until ``guardrails fence recover``
re-seeds it above every token seen; a fence rolled back within its history (failover to
a replica that missed INCRs) still hands out a token above what the caller saw."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from decimal import Decimal
from pathlib import Path

import jsonschema
import redis.asyncio as aioredis

from guardrails import fencing
from guardrails.config import LeaseConfig, load_config
from guardrails.infra import connect
from guardrails.keys import ACCOUNTS_INDEX, AccountId, AccountKeys, PaperVenueKeys
from guardrails.lease import Acquired, Held, Lease, Refused
from guardrails.ledger import Ledger
from guardrails.venues import make_venue
from tests.redis_harness import RedisServer
from tests.run_harness import RunProc, run_cli, write_config

KEYS = AccountKeys(AccountId("paper", "t1"))
STATUS_SCHEMA = json.loads(
    (Path(__file__).resolve().parent.parent / "docs" / "status.schema.json").read_text())
CFG = LeaseConfig(ttl="3s", renew_deadline="2s", renew_interval="500ms")


async def test_acquire_when_flushall_then_refused_by_holder_and_by_a_new_instance(
    redis_client: aioredis.Redis,
) -> None:
    a = Lease(redis_client, KEYS, "a", CFG)
    first = await a.try_acquire()
    assert isinstance(first, Acquired) and first.token == 1
    await a.release()
    assert isinstance(await a.try_acquire(), Acquired)  # token 2
    await a.release()

    await redis_client.flushall()

    refused = await a.try_acquire()
    assert isinstance(refused, Refused) and refused.reason == "history_lost"
    assert refused.seen.endswith(":2")
    # A new instance remembers nothing, but the alarm the refusal left stops it too.
    fresh = await Lease(redis_client, KEYS, "fresh", CFG).try_acquire()
    assert isinstance(fresh, Refused) and fresh.reason == "alarm"
    assert await redis_client.get(KEYS.fence) is None  # nothing was INCR'd
    alarm = await fencing.read_alarm(redis_client, KEYS)
    assert alarm is not None and alarm["seen_token"] == "2" and alarm["reason"] == "history_lost"


async def test_acquire_when_recovered_then_token_above_every_seen_and_old_memory_adopts(
    redis_client: aioredis.Redis,
) -> None:
    a = Lease(redis_client, KEYS, "a", CFG)
    for _ in range(3):
        assert isinstance(await a.try_acquire(), Acquired)
        await a.release()
    await redis_client.flushall()
    assert isinstance(await a.try_acquire(), Refused)

    result = await fencing.recover(redis_client, KEYS, above=7)

    assert result.floor == 7 and result.sources["alarm_seen"] == 3
    assert await redis_client.sismember(ACCOUNTS_INDEX, "paper:t1")  # index rebuilt too
    b = Lease(redis_client, KEYS, "b", CFG)
    got = await b.try_acquire()
    assert isinstance(got, Acquired) and got.token == 8
    held = await a.try_acquire()  # a's memory (old epoch, 3) is below the new floor
    assert isinstance(held, Held) and held.token == 8
    assert a.seen_epoch == result.epoch and a.seen_token == 8
    assert await fencing.read_alarm(redis_client, KEYS) is None


async def test_acquire_when_epoch_replaced_by_older_snapshot_then_epoch_changed(
    redis_client: aioredis.Redis,
) -> None:
    a = Lease(redis_client, KEYS, "a", CFG)
    assert isinstance(await a.try_acquire(), Acquired)
    await a.release()
    # A restore of another history: its own epoch id, no re-seed floor.
    await redis_client.set(KEYS.epoch, "0ldsnapsh0t")

    refused = await a.try_acquire()

    assert isinstance(refused, Refused) and refused.reason == "epoch_changed"
    assert (await fencing.read_alarm(redis_client, KEYS) or {}).get("epoch") == "0ldsnapsh0t"


async def test_acquire_when_fence_rolled_back_in_same_epoch_then_next_token_above_seen(
    redis_client: aioredis.Redis,
) -> None:
    a = Lease(redis_client, KEYS, "a", CFG)
    for _ in range(5):
        assert isinstance(await a.try_acquire(), Acquired)
        await a.release()
    # A replica promoted without the last two INCRs: same epoch, fence 3.
    await redis_client.set(KEYS.fence, "3")

    got = await a.try_acquire()

    assert isinstance(got, Acquired) and got.token == 6
    assert await fencing.read_alarm(redis_client, KEYS) is None


def test_run_when_flushall_under_two_instances_then_both_refuse_doctor_names_it_recover_trades(
    redis_server: RedisServer, tmp_path: Path, artifacts_dir: Path
) -> None:
    cfg = write_config(tmp_path / "c.toml", redis_url=redis_server.url)
    a = RunProc("a", cfg, tmp_path).start()
    b = RunProc("b", cfg, tmp_path, standby=True)
    try:
        a.wait_for("order.admitted", timeout=60)
        b.start()
        b.wait_for("lease.standby", timeout=60)
        time.sleep(1.0)
        seen_before = max(e.int("token") for p in (a, b) for e in p.events("lease.acquired"))

        # Act: the Redis loses everything under both.
        flushed_at = time.time()
        redis_server.client().flushall()

        # Assert: both refuse, and say why.
        for p in (a, b):
            refusal = p.wait_for("lease.fence_refused", after=flushed_at, timeout=60)
            assert refusal["reason"] in ("history_lost", "alarm")
        time.sleep(2.0)
        for p in (a, b):
            late = [e for e in p.events("order.admitted") if e.ts > flushed_at + 1.0]
            assert late == [], late
            assert [e for e in p.events("lease.acquired") if e.ts > flushed_at] == []

        manifest = tmp_path / "m.toml"
        manifest.write_text('[[accounts]]\naccount = "paper:t1"\ninstances = 2\nmax_per_host = 2\n')
        doctor = run_cli("doctor", "--json", "--redis-url", redis_server.url,
                         "--manifest", str(manifest))
        assert doctor.returncode == 1, doctor.stdout
        codes = {f["code"]: f for f in json.loads(doctor.stdout)["findings"]}
        assert "fence_history_lost" in codes, codes
        assert "fence counter and its epoch are gone" in codes["fence_history_lost"]["message"]
        status = run_cli("fence", "status", "--config", str(cfg), "--redis-url", redis_server.url)
        assert status.returncode == 1 and "ALARM history_lost" in status.stdout
        shown = run_cli("status", "--json", "--config", str(cfg), "--redis-url", redis_server.url)
        doc = json.loads(shown.stdout)
        jsonschema.validate(doc, STATUS_SCHEMA)
        (acct,) = doc["accounts"]
        assert acct["fence_history"]["alarm"]["reason"] == "history_lost"
        table = run_cli("status", "--config", str(cfg), "--redis-url", redis_server.url)
        assert "FENCE     history lost (history_lost)" in table.stdout

        # Act: recover.
        recovered_at = time.time()
        rec = run_cli("fence", "recover", "--config", str(cfg), "--redis-url", redis_server.url,
                      "--json")
        assert rec.returncode == 0, rec.stderr
        floor = json.loads(rec.stdout)["floor"]
        assert floor >= seen_before

        # Assert: exactly one holder, token above every one seen, and it trades.
        winner = None
        deadline = time.monotonic() + 60
        while winner is None and time.monotonic() < deadline:
            for p in (a, b):
                if any(e.ts > recovered_at for e in p.events("lease.acquired")):
                    winner = p
            time.sleep(0.1)
        assert winner is not None, a.text()[-3000:] + b.text()[-3000:]
        took = winner.wait_for("lease.acquired", after=recovered_at)
        assert took.int("token") > seen_before
        winner.wait_for("order.admitted", after=took.ts, timeout=60)
        other = b if winner is a else a
        assert [e for e in other.events("lease.acquired") if e.ts > recovered_at] == []
    finally:
        for p in (a, b):
            p.cleanup()
            (artifacts_dir / f"epochs-{p.name}.log").write_text(p.text())


def test_run_when_redis_restarted_empty_with_no_instance_running_then_cold_start_refused(
    redis_server_volatile: RedisServer, tmp_path: Path, artifacts_dir: Path
) -> None:
    # Arrange: a Redis without AOF (allowed explicitly); one instance trades, then stops.
    cfg = write_config(tmp_path / "c.toml", redis_url=redis_server_volatile.url,
                       allow_non_durable=True)
    a = RunProc("a", cfg, tmp_path).start()
    b = RunProc("b", cfg, tmp_path)
    try:
        a.wait_for("order.admitted", timeout=60)
        token = a.events("lease.acquired")[-1].int("token")
        a.send(signal.SIGTERM)
        assert a.wait_exit() == 0

        # Act: the Redis restarts empty; a new process starts with nothing running.
        redis_server_volatile.restart()
        assert redis_server_volatile.client().get(KEYS.fence) is None
        b.start()

        # Assert: the host's durable fence memory refuses the lost history.
        refusal = b.wait_for("lease.fence_refused", timeout=60)
        assert refusal["reason"] == "history_lost"
        assert refusal["seen"].endswith(f":{token}")
        time.sleep(1.0)
        assert b.events("lease.acquired") == [] and b.events("order.admitted") == []
    finally:
        for p in (a, b):
            p.cleanup()
            (artifacts_dir / f"epochs-cold-{p.name}.log").write_text(p.text())


async def test_memory_when_saved_then_new_lease_starts_from_it(tmp_path: Path,
                                                               redis_client: aioredis.Redis
                                                               ) -> None:
    memory = fencing.FileFenceMemory("paper:t1", "redis://x", root=tmp_path)
    a = Lease(redis_client, KEYS, "a", CFG, memory=memory)
    got = await a.try_acquire()
    assert isinstance(got, Acquired)

    again = Lease(redis_client, KEYS, "b", CFG,
                  memory=fencing.FileFenceMemory("paper:t1", "redis://x", root=tmp_path))

    assert (again.seen_epoch, again.seen_token) == (a.seen_epoch, got.token)
    other = fencing.FileFenceMemory("paper:t1", "redis://other", root=tmp_path)
    assert other.load() == ("", 0)  # another Redis is another history
    (tmp_path / other.path.name).write_text("{not json")
    assert other.load() == ("", 0)  # unreadable memory is none, not a crash


async def _ledger_and_venue(cfg_path: Path, url: str) -> tuple[dict[str, Decimal], dict[str, Decimal],
                                                                  int]:
    """(ledger positions, positions summed from the venue's own fills, venue fill count)."""
    cfg = load_config(cfg_path, url)
    client = await connect.connect(cfg.redis)
    venue = make_venue(cfg, client)
    try:
        await venue.start()
        ledger = Ledger(client, KEYS, cfg.risk)
        held = {s: p.qty for s, p in (await ledger.positions()).items() if p.qty}
        fills = list((await venue.fills_since(None)).fills)
        at_venue: dict[str, Decimal] = {}
        for f in fills:
            at_venue[f.symbol] = at_venue.get(f.symbol, Decimal(0)) + f.qty * f.side.sign
        return held, {s: q for s, q in at_venue.items() if q}, len(fills)
    finally:
        await venue.close()
        await client.aclose()


def test_recover_when_account_keys_deleted_under_trading_then_ledger_rebuilt_from_venue(
    redis_server: RedisServer, tmp_path: Path, artifacts_dir: Path
) -> None:
    # Arrange: crossing orders (every one fills at the paper venue, whose own record lives
    # under its own hash tag and survives the account's keys being deleted)
    cfg = write_config(tmp_path / "c.toml", redis_url=redis_server.url,
                       looper={"offset": "0.01", "interval": "150ms", "side": "buy"})
    a = RunProc("a", cfg, tmp_path).start()
    b = RunProc("b", cfg, tmp_path, standby=True)
    try:
        a.wait_for("fill", timeout=60)
        b.start()
        b.wait_for("lease.standby", timeout=60)
        time.sleep(1.0)
        client = redis_server.client()

        # Act: every key of the account vanishes at once (the venue's keys stay)
        lost_at = time.time()
        names = list(client.scan_iter(match="gr:{paper:t1}:*", count=1000))
        assert names
        client.delete(*names)
        for p in (a, b):
            p.wait_for("lease.fence_refused", after=lost_at, timeout=60)
        rec = run_cli("fence", "recover", "--config", str(cfg), "--redis-url", redis_server.url,
                      "--json")

        # Assert: the venue's fills were adopted; trading resumes with no foreign activity
        assert rec.returncode == 0, rec.stderr
        doc = json.loads(rec.stdout)
        venue_doc = doc["venue"]
        assert venue_doc["adopted_orders"] > 0 and venue_doc["fills_applied"] > 0, venue_doc
        recovered_at = time.time()
        if doc["trading_state"] != "ACTIVE":
            # the active's pump may have seen a fill of a lost order before it refused:
            # foreign activity, halted (fail closed); the operator resumes after recovery
            assert doc["trading_reason"].startswith("foreign_activity"), doc
            resumed = run_cli("resume", "--config", str(cfg), "--redis-url", redis_server.url,
                              "--reason", "history recovered")
            assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        winner = None
        deadline = time.monotonic() + 60
        while winner is None and time.monotonic() < deadline:
            winner = next((p for p in (a, b)
                           if any(e.ts > recovered_at for e in p.events("fill"))), None)
            time.sleep(0.2)
        assert winner is not None, a.text()[-3000:] + b.text()[-3000:]
        for p in (a, b):
            p.send(signal.SIGTERM)
            assert p.wait_exit() == 0
        assert [e for p in (a, b) for e in p.events("foreign_activity")
                if e.ts > recovered_at] == []
        # the last orders may have filled after the stop: catch up as after any stop
        caught_up = run_cli("reconcile", "--config", str(cfg), "--redis-url", redis_server.url)
        assert caught_up.returncode == 0, caught_up.stdout + caught_up.stderr
        held, at_venue, n_fills = asyncio.run(_ledger_and_venue(cfg, redis_server.url))
        assert n_fills > venue_doc["fills_applied"]  # it kept trading after the recovery
        assert held == at_venue
    finally:
        for p in (a, b):
            p.cleanup()
            (artifacts_dir / f"epochs-adopt-{p.name}.log").write_text(p.text())


def test_recover_when_venue_orders_listed_then_resting_orders_get_records_and_reservations(
    redis_server: RedisServer, tmp_path: Path, artifacts_dir: Path
) -> None:
    # Arrange: three buys resting 5 % below the mark at the paper venue
    cfg = write_config(tmp_path / "c.toml", redis_url=redis_server.url,
                       looper={"offset": "-0.05", "interval": "4s", "side": "buy"})
    a = RunProc("a", cfg, tmp_path).start()
    try:
        client = redis_server.client()
        deadline = time.monotonic() + 60
        resting: list[str] = []
        while len(resting) < 2 and time.monotonic() < deadline:
            resting = sorted(c for c in client.smembers(KEYS.open_orders)
                             if client.hget(KEYS.order(c), "state") == "SUBMITTED")
            time.sleep(0.1)
        assert len(resting) == 2, a.text()[-3000:]

        # Act: the account's keys vanish; the operator lists the venue's orders and recovers
        lost_at = time.time()
        client.delete(*client.scan_iter(match="gr:{paper:t1}:*", count=1000))
        a.wait_for("lease.fence_refused", after=lost_at, timeout=60)
        listing = tmp_path / "orders.jsonl"
        rows = [f for _, f in client.xrange(PaperVenueKeys("paper-t1").record)]
        listing.write_text("".join(json.dumps(r) + "\n" for r in rows))
        rec = run_cli("fence", "recover", "--config", str(cfg), "--redis-url", redis_server.url,
                      "--venue-orders", str(listing), "--json")

        # Assert: each resting order has a live record again, its quantity reserved
        assert rec.returncode == 0, rec.stderr
        assert json.loads(rec.stdout)["venue"]["reconciled"] >= 2
        assert set(resting) <= set(client.smembers(KEYS.open_orders))
        for coid in resting:
            assert client.hget(KEYS.order(coid), "state") == "SUBMITTED"
            assert client.hget(KEYS.order(coid), "adopted") == "1"
        live = client.smembers(KEYS.open_orders)  # 1 lot each (the looper's default qty)
        assert client.hget(KEYS.reservations, "BTC-USD:buy") == str(len(live))
    finally:
        a.cleanup()
        (artifacts_dir / "epochs-listing-a.log").write_text(a.text())
