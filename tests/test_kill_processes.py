"""The kill switch against real `guardrails run` processes whose Looper strategy submits a
stream of resting orders. Claims are proven from what Redis and the paper venue
recorded (the account journal, whose stream ids are Redis's execution order, and the
venue's append-only record), never from the processes' opinion of themselves."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from guardrails.keys import AccountId, AccountKeys
from guardrails.venues.paper import read_record
from tests.redis_harness import RedisServer
from tests.run_harness import RunProc, run_cli, write_config

pytestmark = pytest.mark.slow

WAIT_S = 60.0


def _sid(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


def _journal(c: redis.Redis, keys: AccountKeys) -> list[tuple[tuple[int, int], dict[str, str]]]:
    return [(_sid(i), f) for i, f in c.xrange(keys.journal)]


def _admits(c: redis.Redis, keys: AccountKeys) -> list[tuple[tuple[int, int], dict[str, str]]]:
    return [(i, f) for i, f in _journal(c, keys) if f.get("ev") == "admit"]


def _wait(predicate: Any, what: str, within_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + within_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _venue_orders(url: str, venue: str, account: str) -> list[dict[str, str]]:
    async def read() -> list[dict[str, str]]:
        r = aioredis.Redis.from_url(url, decode_responses=True)
        try:
            return await read_record(r, venue)
        finally:
            await r.aclose()

    rows = asyncio.run(read())
    return [row for row in rows if row.get("account") == account]


def _setup(tmp_path: Path, url: str, account: str) -> tuple[Path, AccountKeys, str]:
    venue = f"paper-{account}"
    cfg = write_config(tmp_path / f"{account}.toml", redis_url=url, account=account,
                       looper={"interval": "50ms", "offset": "-0.01"}, venue_name=venue)
    return cfg, AccountKeys(AccountId("paper", account)), venue


def test_kill_when_run_loops_then_no_admission_after_kill_and_open_orders_cancelled(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # Arrange: an active instance submitting resting orders every 50 ms
    cfg, keys, venue = _setup(tmp_path, redis_server.url, "k1")
    c = redis_server.client()
    proc = RunProc("k1-a", cfg, tmp_path).start()
    try:
        proc.wait_for("runtime.active", WAIT_S)
        _wait(lambda: len(_admits(c, keys)) >= 5, "5 admissions")

        # Act: kill from a separate process while the loop runs
        done = run_cli("kill", "--account", "paper:k1", "--reason", "process test",
                       "--redis-url", redis_server.url)
        returned_ms = int(time.time() * 1000)  # same host clock as the Redis server's TIME
        halted = proc.wait_for("kill.halted", 30, where=lambda e: e.get("trigger") ==
                               "control message")
        _wait(lambda: int(c.hget(keys.stats, "denied:halted") or 0) >= 5,
              "the loop to keep trying after the kill")
        _wait(lambda: c.scard(keys.open_orders) == 0, "open orders to be cancelled", 30)
    finally:
        proc.cleanup()

    # Assert: the command confirmed the kill
    assert done.returncode == 0, done.stderr
    assert "paper:k1: ACTIVE -> HALTED" in done.stdout
    # Redis's order: every admission precedes the kill's journal entry
    journal = _journal(c, keys)
    kills = [i for i, f in journal if f.get("ev") == "trading_state"]
    admits = [(i, f) for i, f in journal if f.get("ev") == "admit"]
    assert len(kills) == 1
    assert admits and max(i for i, _ in admits) < kills[0]
    assert max(i for i, _ in admits)[0] <= returned_ms  # admission times vs completion
    admitted = {f["coid"] for _, f in admits}
    # The venue received only orders the gate admitted, all of them before the kill
    orders = [r for r in _venue_orders(redis_server.url, venue, "k1")
              if r.get("type") == "order"]
    assert orders and all(r["coid"] in admitted for r in orders)
    # Open orders were cancelled (the instance reacted to the control message)
    assert int(halted["open_orders"]) >= 1 and int(halted["canceled"]) >= 1
    cancels = [r for r in _venue_orders(redis_server.url, venue, "k1")
               if r.get("type") == "cancel" and r.get("result") == "canceled"]
    assert cancels


def test_latch_when_bot_restarts_then_still_halted_until_resume(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # Arrange: the account is halted before any instance starts
    cfg, keys, _ = _setup(tmp_path, redis_server.url, "k2")
    c = redis_server.client()
    # Never run before and nothing running: the kill needs --force, and is unconfirmed (3).
    done = run_cli("kill", "--account", "paper:k2", "--reason", "before start",
                   "--redis-url", redis_server.url, "--force", "--confirm-timeout", "0.2")
    assert done.returncode == 3, done.stderr
    first = RunProc("k2-a", cfg, tmp_path).start()
    second: RunProc | None = None
    try:
        first.wait_for("runtime.active", WAIT_S)
        _wait(lambda: int(c.hget(keys.stats, "denied:halted") or 0) >= 5, "denials")
        first.send(signal.SIGTERM)
        assert first.wait_exit(30) == 0

        # Act: restart the bot
        before = int(c.hget(keys.stats, "denied:halted") or 0)
        second = RunProc("k2-b", cfg, tmp_path).start()
        second.wait_for("runtime.active", WAIT_S)
        _wait(lambda: int(c.hget(keys.stats, "denied:halted") or 0) >= before + 5,
              "denials after the restart")

        # Assert: nothing admitted while halted
        assert _admits(c, keys) == []

        # Act: resume; the same bot starts trading (it was really trying)
        resumed = run_cli("resume", "--account", "paper:k2", "--redis-url", redis_server.url)
        assert resumed.returncode == 0, resumed.stderr
        _wait(lambda: len(_admits(c, keys)) >= 3, "admissions after resume")
    finally:
        first.cleanup()
        if second is not None:
            second.cleanup()


def test_latch_when_redis_restarts_then_still_halted(
    redis_server_aof: RedisServer, tmp_path: Path
) -> None:
    # Arrange
    cfg, keys, _ = _setup(tmp_path, redis_server_aof.url, "k3")
    proc = RunProc("k3-a", cfg, tmp_path).start()
    try:
        proc.wait_for("runtime.active", WAIT_S)
        c = redis_server_aof.client()
        _wait(lambda: len(_admits(c, keys)) >= 3, "admissions")
        done = run_cli("kill", "--account", "paper:k3", "--reason", "persist",
                       "--redis-url", redis_server_aof.url)
        assert done.returncode == 0, done.stderr
        c.close()

        # Act: Redis dies (SIGKILL) and comes back from its AOF
        redis_server_aof.restart()
        c = redis_server_aof.client()
        before = int(c.hget(keys.stats, "denied:halted") or 0)
        _wait(lambda: int(c.hget(keys.stats, "denied:halted") or 0) >= before + 5,
              "the bot to reconnect and keep being denied")

        # Assert
        assert c.hget(keys.state, "state") == "HALTED"
        journal = _journal(c, keys)
        kill_id = next(i for i, f in journal if f.get("ev") == "trading_state")
        assert all(i < kill_id for i, f in journal if f.get("ev") == "admit")
    finally:
        proc.cleanup()


def test_kill_revoke_when_run_active_then_holder_fenced_out_at_once(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # Arrange
    cfg, keys, _ = _setup(tmp_path, redis_server.url, "k4")
    c = redis_server.client()
    proc = RunProc("k4-a", cfg, tmp_path).start()
    try:
        active = proc.wait_for("runtime.active", WAIT_S)
        token = active.int("token")
        _wait(lambda: len(_admits(c, keys)) >= 3, "admissions")

        # Act: revoke (HALTED + fence bump + lease deleted in one step)
        done = run_cli("kill", "--account", "paper:k4", "--reason", "rogue", "--revoke",
                       "--redis-url", redis_server.url)
        lost = proc.wait_for("lease.lost", 30)
    finally:
        proc.cleanup()

    # Assert: the CLI says whom it fenced out; the holder learnt it from Redis's refusal
    assert done.returncode == 0, done.stderr
    assert f"revoked token {token} (fence now {token + 1})" in done.stdout
    assert lost.int("token") == token
    assert int(c.get(keys.fence)) >= token + 1
    # Nothing was admitted under the revoked token after the revoke (journal order)
    journal = _journal(c, keys)
    kill_id = next(i for i, f in journal if f.get("ev") == "trading_state")
    assert not [f for i, f in journal
                if f.get("ev") == "admit" and i > kill_id and int(f["token"]) <= token]


def test_kill_revoke_then_resume_when_run_active_then_it_trades_again_only_under_new_token(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # Arrange
    cfg, keys, _ = _setup(tmp_path, redis_server.url, "k5")
    c = redis_server.client()
    proc = RunProc("k5-a", cfg, tmp_path).start()
    try:
        active = proc.wait_for("runtime.active", WAIT_S)
        token = active.int("token")
        _wait(lambda: len(_admits(c, keys)) >= 3, "admissions")

        # Act: revoke and resume at once: the fenced-out holder must step down, take the
        # lease again with a new token, and only then trade
        done = run_cli("kill", "--account", "paper:k5", "--reason", "rogue", "--revoke",
                       "--redis-url", redis_server.url)
        resumed = run_cli("resume", "--account", "paper:k5", "--redis-url", redis_server.url)
        again = proc.wait_for("runtime.active", WAIT_S, where=lambda e: e.int("token") > token)
        _wait(lambda: any(f.get("token") == str(again.int("token"))
                          for _, f in _admits(c, keys)), "admissions under the new token")
    finally:
        proc.cleanup()

    # Assert
    assert done.returncode == 0 and resumed.returncode == 0
    journal = _journal(c, keys)
    kill_id = next(i for i, f in journal if f.get("ev") == "trading_state")
    after = [f for i, f in journal if f.get("ev") == "admit" and i > kill_id]
    assert after and all(int(f["token"]) > token for f in after)
