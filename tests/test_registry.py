"""The instance registry against a real redis-server: records, expiry, census."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time

import pytest
import redis.asyncio as aioredis

from guardrails.config import RuntimeConfig
from guardrails.keys import ACCOUNTS_INDEX, AccountId, AccountKeys
from guardrails.registry import InstanceInfo, Registry, Role, new_instance_id

KEYS = AccountKeys(AccountId("paper", "registry-test"))


def info(instance_id: str, *, standby: bool = False) -> InstanceInfo:
    return InstanceInfo(
        id=instance_id,
        account="paper:registry-test",
        host="host-1",
        pid=4242,
        config_digest="cfg123",
        limits_digest="lim456",
        standby_flag=standby,
        health_url="http://127.0.0.1:9999/health",
        cmdline="guardrails run --config x.toml",
        started_at_ms=1_700_000_000_000,
    )


def runtime_cfg(ttl: str = "5s") -> RuntimeConfig:
    return RuntimeConfig.model_validate({"heartbeat_interval": "100ms", "heartbeat_ttl": ttl})


async def test_heartbeat_when_called_then_record_zset_row_and_account_index_written(
    redis_client: aioredis.Redis,
) -> None:
    registry = Registry(redis_client, KEYS, info("i-1"), runtime_cfg())

    now_ms = await registry.heartbeat(Role.ACTIVE, 7)

    record = await redis_client.hgetall(KEYS.instance("i-1"))
    assert record == {
        "id": "i-1", "account": "paper:registry-test", "host": "host-1", "pid": "4242",
        "version": registry.info.version, "role": "active", "token": "7",
        "started_at_ms": "1700000000000", "last_seen_ms": str(now_ms),
        "config_digest": "cfg123", "limits_digest": "lim456", "standby_flag": "0",
        "health_url": "http://127.0.0.1:9999/health", "cmdline": "guardrails run --config x.toml",
    }
    assert 0 < await redis_client.pttl(KEYS.instance("i-1")) <= 5000
    assert await redis_client.zscore(KEYS.instances, "i-1") == now_ms
    assert abs(now_ms - time.time() * 1000) < 60_000, "stamped with Redis server time (ms)"
    assert await redis_client.smembers(ACCOUNTS_INDEX) == {"paper:registry-test"}


async def test_heartbeat_when_role_changes_then_record_follows_and_token_cleared(
    redis_client: aioredis.Redis,
) -> None:
    registry = Registry(redis_client, KEYS, info("i-1", standby=True), runtime_cfg())
    await registry.heartbeat(Role.ACTIVE, 3)

    await registry.heartbeat("standby", None)

    record = await redis_client.hgetall(KEYS.instance("i-1"))
    assert (record["role"], record["token"], record["standby_flag"]) == ("standby", "", "1")


async def test_list_instances_when_one_stops_heartbeating_then_it_expires_but_row_stays(
    redis_client: aioredis.Redis,
) -> None:
    alive = Registry(redis_client, KEYS, info("alive"), runtime_cfg("30s"))
    silent = Registry(redis_client, KEYS, info("silent"), runtime_cfg("200ms"))
    await silent.heartbeat(Role.STANDBY, None)
    await alive.heartbeat(Role.ACTIVE, 2)

    for _ in range(200):  # up to 10 s for the 200 ms record to expire
        if not await redis_client.exists(KEYS.instance("silent")):
            break
        await asyncio.sleep(0.05)
    live = await Registry.list_instances(redis_client, KEYS)
    everything = await Registry.list_instances(redis_client, KEYS, include_expired=True)

    assert [r["id"] for r in live] == ["alive"]
    assert live[0]["token"] == 2 and live[0]["pid"] == 4242 and live[0]["expired"] is False
    assert {r["id"]: r["expired"] for r in everything} == {"alive": False, "silent": True}


async def test_remove_when_called_then_record_and_row_gone(redis_client: aioredis.Redis) -> None:
    registry = Registry(redis_client, KEYS, info("i-1"), runtime_cfg())
    await registry.heartbeat(Role.STOPPING, None)

    await registry.remove()

    assert not await redis_client.exists(KEYS.instance("i-1"))
    assert await redis_client.zscore(KEYS.instances, "i-1") is None
    assert await Registry.list_instances(redis_client, KEYS, include_expired=True) == []


def test_new_instance_id_when_called_twice_then_unique_and_without_whitespace() -> None:
    a, b = new_instance_id("my host", 12), new_instance_id("my host", 12)

    assert a != b and a.startswith("my_host-12-") and not any(c.isspace() for c in a)


async def test_heartbeat_when_first_then_rows_silent_for_a_day_pruned(
    redis_client: aioredis.Redis,
) -> None:
    day_ago_ms = int(time.time() * 1000) - 25 * 3600 * 1000
    await redis_client.zadd(KEYS.instances, {"ancient": day_ago_ms, "recent": day_ago_ms + 2 * 3600_000})

    await Registry(redis_client, KEYS, info("i-1"), runtime_cfg()).heartbeat(Role.STANDBY, None)

    assert await redis_client.zrange(KEYS.instances, 0, -1) == ["recent", "i-1"]


async def test_heartbeat_when_argv_has_redis_password_then_cmdline_stored_masked(
    redis_client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Arrange: every credential form an operator might type
    argv = ["/venv/bin/guardrails", "run", "--redis-url", "redis://bot:s3cret-one@h:6379/0",
            "--x=rediss://:s3cret-two@h:6380", "unix:///r.sock?password=s3cret-three"]
    monkeypatch.setattr(sys, "argv", argv)
    me = InstanceInfo.for_this_process("paper:registry-test", config_digest="c",
                                       limits_digest="l", standby_flag=False)

    # Act
    await Registry(redis_client, KEYS, me, runtime_cfg()).heartbeat(Role.ACTIVE, 1)
    stored = await redis_client.hget(KEYS.instance(me.id), "cmdline")

    # Assert
    assert stored == ("/venv/bin/guardrails run --redis-url redis://bot:***@h:6379/0 "
                      "--x=rediss://:***@h:6380 unix:///r.sock?password=***")
    assert "s3cret" not in stored


async def test_heartbeat_when_account_index_deleted_then_next_beat_of_each_re_adds_it(
    redis_client: aioredis.Redis,
) -> None:
    # Arrange: two accounts registered, then the index deleted (a restore, an operator).
    other_keys = AccountKeys(AccountId("paper", "registry-other"))
    other_info = dataclasses.replace(info("i-2"), account="paper:registry-other")
    one = Registry(redis_client, KEYS, info("i-1"), runtime_cfg())
    two = Registry(redis_client, other_keys, other_info, runtime_cfg())
    await one.heartbeat(Role.ACTIVE, 1)
    await two.heartbeat(Role.ACTIVE, 1)
    await redis_client.delete(ACCOUNTS_INDEX)
    # Act: one more heartbeat round of each
    await one.heartbeat(Role.ACTIVE, 1)
    await two.heartbeat(Role.ACTIVE, 1)
    # Assert
    assert await redis_client.smembers(ACCOUNTS_INDEX) == {
        "paper:registry-test", "paper:registry-other"}
