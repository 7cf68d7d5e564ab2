"""Kill switch: the latch is written atomically with its journal entry and announcement,
verified by reading it back, survives a Redis restart, and the CLI never claims a kill
it did not make."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from guardrails.keys import ACCOUNTS_INDEX, AccountId, AccountKeys
from guardrails.killswitch import (
    FileLatchMemory,
    KillSwitch,
    KillSwitchError,
    Latch,
    LatchSeen,
    follow,
    read_latch,
)
from guardrails.model import TradingState
from tests.conftest import subprocess_env
from tests.redis_harness import RedisServer, free_port

ACCOUNT = AccountId("paper", "demo")
KEYS = AccountKeys(ACCOUNT)


def _cli(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "guardrails", *argv],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


async def test_kill_when_no_latch_then_halted_journaled_and_published(
    redis_client: aioredis.Redis,
) -> None:
    # Arrange
    pubsub = redis_client.pubsub()
    await pubsub.subscribe(KEYS.control_channel)
    await pubsub.get_message(timeout=1.0)  # subscribe confirmation
    ks = KillSwitch(redis_client, KEYS)

    # Act
    change = await ks.set_state(TradingState.HALTED, reason="test halt", by="op@host")

    # Assert
    assert change.prev_state is TradingState.ACTIVE
    assert change.state is TradingState.HALTED
    assert change.subscribers == 1
    latch = await read_latch(redis_client, KEYS)
    assert latch.state is TradingState.HALTED
    assert (latch.reason, latch.by, latch.at_ms) == ("test halt", "op@host", change.at_ms)
    journal = await redis_client.xrange(KEYS.journal)
    assert journal[-1][1]["ev"] == "trading_state"
    assert journal[-1][1]["state"] == "HALTED"
    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
    assert msg is not None
    payload = json.loads(msg["data"])
    assert payload["state"] == "HALTED" and payload["account"] == "paper:demo"
    assert payload["at_ms"] == change.at_ms
    await pubsub.aclose()


async def test_resume_when_halted_then_active_with_who_and_why(
    redis_client: aioredis.Redis,
) -> None:
    # Arrange
    ks = KillSwitch(redis_client, KEYS)
    await ks.set_state(TradingState.HALTED, reason="halt", by="a@h")

    # Act
    change = await ks.set_state(TradingState.ACTIVE, reason="all clear", by="b@h")

    # Assert
    assert (change.prev_state, change.state) == (TradingState.HALTED, TradingState.ACTIVE)
    latch = await read_latch(redis_client, KEYS)
    assert (latch.state, latch.by, latch.reason) == (TradingState.ACTIVE, "b@h", "all clear")


async def test_kill_when_revoke_then_fence_bumped_and_lease_deleted(
    redis_client: aioredis.Redis,
) -> None:
    # Arrange
    await redis_client.set(KEYS.fence, 5)
    await redis_client.set(KEYS.lease, "5:host-a:123", px=30_000)
    ks = KillSwitch(redis_client, KEYS)

    # Act
    change = await ks.set_state(TradingState.HALTED, reason="r", by="o@h", revoke=True)

    # Assert
    assert change.revoked_token == "5"
    assert change.fence_after == "6"
    assert await redis_client.get(KEYS.fence) == "6"
    assert await redis_client.exists(KEYS.lease) == 0
    assert (await read_latch(redis_client, KEYS)).revoked_token == "5"


async def test_kill_when_state_key_has_wrong_type_then_raises_and_writes_nothing(
    redis_client: aioredis.Redis,
) -> None:
    # Arrange
    await redis_client.set(KEYS.state, "HALTED")
    await redis_client.set(KEYS.fence, 3)
    ks = KillSwitch(redis_client, KEYS)

    # Act / Assert
    with pytest.raises(KillSwitchError, match="state has type string"):
        await ks.set_state(TradingState.HALTED, reason="r", by="o@h", revoke=True)
    assert await redis_client.get(KEYS.fence) == "3"
    assert await redis_client.exists(KEYS.journal) == 0


async def test_latch_when_redis_restarts_with_aof_then_still_halted(
    redis_server_aof: RedisServer,
) -> None:
    # Arrange
    client = aioredis.Redis.from_url(redis_server_aof.url, decode_responses=True)
    await KillSwitch(client, KEYS).set_state(TradingState.HALTED, reason="persist", by="o@h")
    await client.aclose()

    # Act
    await asyncio.to_thread(redis_server_aof.restart)

    # Assert
    client = aioredis.Redis.from_url(redis_server_aof.url, decode_responses=True)
    try:
        latch = await read_latch(client, KEYS)
        assert (latch.state, latch.reason) == (TradingState.HALTED, "persist")
    finally:
        await client.aclose()


def test_cli_kill_when_redis_reachable_but_no_bot_runs_then_prints_change_and_exits_3(
    redis_server: RedisServer,
) -> None:
    # Arrange: the account is known here (it ran once); no instance of it runs now.
    redis_server.client().sadd(ACCOUNTS_INDEX, "paper:demo")
    # Act
    done = _cli("kill", "--account", "paper:demo", "--reason", "cli test",
                "--revoke", "--redis-url", redis_server.url, "--confirm-timeout", "0.2")

    # Assert: written and verified, but nobody confirmed it: not success (exit 3).
    assert done.returncode == 3, done.stderr
    assert "NOT CONFIRMED" in done.stderr and "0 instance(s) confirmed" in done.stdout
    assert "paper:demo: ACTIVE -> HALTED" in done.stdout
    assert "reason='cli test'" in done.stdout
    c = redis_server.client()
    try:
        assert c.hget(KEYS.state, "state") == "HALTED"
        assert c.sismember(ACCOUNTS_INDEX, "paper:demo")
    finally:
        c.close()

    # Act: resume
    done = _cli("resume", "--account", "paper:demo", "--redis-url", redis_server.url,
                "--confirm-timeout", "0.2")

    # Assert
    assert done.returncode == 3, done.stderr
    assert "paper:demo: HALTED -> ACTIVE" in done.stdout


def test_cli_kill_when_redis_unreachable_then_exits_nonzero_and_claims_nothing() -> None:
    # Arrange: a port where nothing listens
    url = f"redis://127.0.0.1:{free_port()}/0"

    # Act
    done = _cli("kill", "--account", "paper:demo", "--reason", "x", "--redis-url", url)

    # Assert
    assert done.returncode != 0
    assert "HALTED" not in done.stdout
    assert "NOT confirmed" in done.stderr


def test_cli_kill_all_when_two_accounts_known_then_both_halted(
    redis_server: RedisServer,
) -> None:
    # Arrange
    c = redis_server.client()
    c.sadd(ACCOUNTS_INDEX, "paper:one", "paper:two")

    # Act
    done = _cli("kill", "--all", "--reason", "everything", "--reduce-only",
                "--redis-url", redis_server.url, "--confirm-timeout", "0.2")

    # Assert: both written; no instance runs, so unconfirmed (exit 3), named on stderr
    try:
        assert done.returncode == 3, done.stderr
        assert "paper:one, paper:two" in done.stderr
        for name in ("one", "two"):
            k = AccountKeys(AccountId("paper", name))
            assert c.hget(k.state, "state") == "REDUCING"
            assert f"paper:{name}: ACTIVE -> REDUCING" in done.stdout
    finally:
        c.close()


def test_cli_kill_all_when_no_known_accounts_then_exits_1(redis_server: RedisServer) -> None:
    # Act
    done = _cli("kill", "--all", "--reason", "x", "--redis-url", redis_server.url)

    # Assert
    assert done.returncode == 1
    assert "nothing was changed" in done.stderr


# -- versions: what a lost latch is judged by ----------------------------------------------


async def test_kill_when_latches_written_then_each_version_above_the_last_and_journaled(
    redis_client: aioredis.Redis,
) -> None:
    ks = KillSwitch(redis_client, KEYS)

    first = await ks.set_state(TradingState.HALTED, reason="a", by="o@h")
    second = await ks.set_state(TradingState.ACTIVE, reason="b", by="o@h")

    # the server time when it is above the last one, else one more than it
    assert first.version == first.at_ms
    assert second.version == max(first.version + 1, second.at_ms)
    assert (await read_latch(redis_client, KEYS)).version == second.version
    journal = await redis_client.xrange(KEYS.journal)
    assert [f["version"] for _, f in journal] == [str(first.version), str(second.version)]


async def test_kill_when_redis_lost_latches_then_the_next_is_above_every_lost_one(
    redis_client: aioredis.Redis,
) -> None:
    # Arrange: two latches an instance saw, then Redis loses them (the key gone)
    ks = KillSwitch(redis_client, KEYS)
    await ks.set_state(TradingState.HALTED, reason="a", by="o@h")
    seen = await ks.set_state(TradingState.ACTIVE, reason="b", by="o@h")
    await redis_client.delete(KEYS.state)
    await asyncio.sleep(0.01)  # the alarm, then the operator: not within the same ms

    # Act: the operator writes a new latch, as the latch_lost alarm tells them to
    after = await ks.set_state(TradingState.ACTIVE, reason="c", by="o@h")

    # Assert: numbered above the lost one, so no instance that saw it refuses it as lost
    assert after.version > seen.version
    now, went_back = follow(LatchSeen(seen.version, seen.state),
                            await read_latch(redis_client, KEYS))
    assert not went_back and now.version == after.version and not now.lost


AHEAD = 2 ** 50
"""A latch version above the clock (written on a server whose clock was far ahead)."""


@pytest.mark.parametrize("stored", [None, AHEAD], ids=["before-versions", "ahead-of-clock"])
async def test_kill_when_latch_has_no_version_or_one_ahead_then_next_is_above_it(
    redis_client: aioredis.Redis, stored: int | None,
) -> None:
    fields = {"state": "HALTED", "at_ms": "5", "by": "old"}
    if stored is not None:
        fields["version"] = str(stored)
    await redis_client.hset(KEYS.state, mapping=fields)
    assert (await read_latch(redis_client, KEYS)).version == (stored or 0)

    change = await KillSwitch(redis_client, KEYS).set_state(TradingState.ACTIVE, reason="r",
                                                            by="o@h")

    # the server time, or one more than a version that is not below it
    assert change.version == (change.at_ms if stored is None else AHEAD + 1)
    assert change.prev_state is TradingState.HALTED


async def test_kill_when_version_field_malformed_then_raises_and_writes_nothing(
    redis_client: aioredis.Redis,
) -> None:
    await redis_client.hset(KEYS.state, mapping={"state": "HALTED", "version": "1e3"})
    await redis_client.set(KEYS.fence, 3)

    with pytest.raises(KillSwitchError, match="version"):
        await KillSwitch(redis_client, KEYS).set_state(TradingState.ACTIVE, reason="r",
                                                       by="o@h", revoke=True)
    with pytest.raises(KillSwitchError, match="version"):
        await read_latch(redis_client, KEYS)
    assert await redis_client.get(KEYS.fence) == "3"
    assert await redis_client.hget(KEYS.state, "state") == "HALTED"
    assert await redis_client.exists(KEYS.journal) == 0


def _latch(state: TradingState, version: int) -> Latch:
    return Latch(state, by="o@h", at_ms=1000 + version, version=version)


def test_follow_when_nothing_seen_or_newer_then_followed_floor_is_its_version() -> None:
    seen, back = follow(None, _latch(TradingState.HALTED, 3))
    assert not back and seen == LatchSeen(3, TradingState.HALTED, 1003, "o@h")
    assert seen.floor == 3
    newer, back = follow(seen, _latch(TradingState.ACTIVE, 4))
    assert not back and newer.version == 4 and newer.floor == 4
    same, back = follow(newer, _latch(TradingState.ACTIVE, 4))
    assert not back and same is newer


@pytest.mark.parametrize("to", [
    pytest.param(Latch(TradingState.ACTIVE), id="absent"),
    pytest.param(_latch(TradingState.ACTIVE, 2), id="older-active"),
    pytest.param(_latch(TradingState.HALTED, 2), id="older-halted"),
])
def test_follow_when_latch_goes_back_then_lost_until_a_newer_one(to: Latch) -> None:
    seen, _ = follow(None, _latch(TradingState.REDUCING, 3))

    lost, back = follow(seen, to)

    assert back and lost.lost == "REDUCING version 3 by o@h at_ms 1003"
    assert lost.version == to.version and lost.floor == to.version + 1
    again, back = follow(lost, to)  # the same latch Redis fell back to: still lost, said once
    assert not back and again is lost
    # a new kill or resume writes the version above what Redis showed: it ends the loss
    renewed, back = follow(lost, _latch(TradingState.ACTIVE, to.version + 1))
    assert not back and not renewed.lost and renewed.floor == to.version + 1


def test_follow_when_lost_latch_goes_further_back_then_lost_again_keeping_the_first() -> None:
    seen, _ = follow(None, _latch(TradingState.HALTED, 5))
    lost, _ = follow(seen, _latch(TradingState.ACTIVE, 3))

    further, back = follow(lost, _latch(TradingState.ACTIVE, 1))

    assert back and further.lost == lost.lost and further.floor == 2


def test_latch_memory_when_saved_then_loaded_by_the_next_instance_lost_included(
    tmp_path: Path,
) -> None:
    memory = FileLatchMemory("paper:demo", "redis://x", root=tmp_path)
    assert memory.load() is None
    seen, _ = follow(None, _latch(TradingState.HALTED, 2))
    lost, _ = follow(seen, Latch(TradingState.ACTIVE))

    memory.save(lost)

    assert FileLatchMemory("paper:demo", "redis://x", root=tmp_path).load() == lost
    assert FileLatchMemory("paper:demo", "redis://other", root=tmp_path).load() is None
    memory.path.write_text('{"version": "two"}')
    assert memory.load() is None  # our own file, unreadable: logged, read as none
