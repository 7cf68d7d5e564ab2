"""Persistence is checked, not assumed: ``guardrails run`` refuses a Redis whose restart
would lose the fencing counter (unless the config says so), and ``doctor`` reports it.
Every test reads a real redis-server started with the setting under test."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
import redis.asyncio as aioredis

from guardrails.infra import persistence
from guardrails.keys import AccountId, AccountKeys
from tests.redis_harness import RedisServer
from tests.run_harness import RunProc, run_cli, write_config

KEYS = AccountKeys(AccountId("paper", "t1"))
ROOT = Path(__file__).resolve().parent.parent
DOCTOR_SCHEMA = json.loads((ROOT / "docs" / "doctor.schema.json").read_text())


@pytest.fixture
def rdb_server() -> Iterator[RedisServer]:
    """AOF off, RDB snapshots on: a restart rolls back to the last snapshot."""
    server = RedisServer()
    server.start()
    server.client().config_set("save", "3600 1")
    try:
        yield server
    finally:
        server.stop()


async def _read(url: str) -> persistence.Persistence:
    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        return await persistence.read(client)
    finally:
        await client.aclose()


async def test_read_when_aof_always_then_durable_and_no_loss(redis_server_aof: RedisServer) -> None:
    found = await _read(redis_server_aof.url)

    assert found.durability is persistence.Durability.DURABLE
    assert (found.aof_enabled, found.appendfsync, found.save) == (True, "always", "")
    assert found.risk() == "every acknowledged write survives a restart and a host crash"


async def test_read_when_aof_everysec_then_durable_with_host_crash_note(
    redis_server: RedisServer,
) -> None:
    found = await _read(redis_server.url)

    assert found.durability is persistence.Durability.DURABLE
    assert found.appendfsync == "everysec"
    assert "last second" in found.risk()


async def test_read_when_no_persistence_then_volatile_counter_starts_again(
    redis_server_volatile: RedisServer,
) -> None:
    found = await _read(redis_server_volatile.url)

    assert found.durability is persistence.Durability.VOLATILE
    assert found.aof_enabled is False
    assert "starts again at 1" in found.risk()


async def test_read_when_rdb_only_then_volatile_rolls_back_to_snapshot(
    rdb_server: RedisServer,
) -> None:
    found = await _read(rdb_server.url)

    assert found.durability is persistence.Durability.VOLATILE
    assert found.save == "3600 1"
    assert "last RDB snapshot" in found.risk()


async def test_read_when_acl_forbids_config_then_fsync_unknown_but_aof_from_info(
    redis_server_volatile: RedisServer,
) -> None:
    admin = redis_server_volatile.client()
    admin.execute_command("ACL", "SETUSER", "nocfg", "on", ">pw", "~*", "&*", "+@all", "-config")
    url = f"redis://nocfg:pw@127.0.0.1:{redis_server_volatile.port}/0"

    found = await _read(url)

    assert found.aof_enabled is False  # INFO persistence still answers
    assert found.appendfsync is None and found.save is None
    assert found.durability is persistence.Durability.VOLATILE
    assert any(e.startswith("CONFIG:") for e in found.errors)
    assert "appendfsync=unknown" in found.summary()


async def test_read_when_acl_forbids_info_and_config_then_unknown(
    redis_server_volatile: RedisServer,
) -> None:
    admin = redis_server_volatile.client()
    admin.execute_command("ACL", "SETUSER", "blind", "on", ">pw", "~*", "&*", "+@all",
                          "-config", "-info")
    url = f"redis://blind:pw@127.0.0.1:{redis_server_volatile.port}/0"

    found = await _read(url)

    assert found.durability is persistence.Durability.UNKNOWN
    assert len(found.errors) == 2
    assert "unknown" in found.risk()


def test_run_when_redis_has_no_aof_then_exit_2_refused_and_no_token_taken(
    redis_server_volatile: RedisServer, tmp_path: Path
) -> None:
    cfg = write_config(tmp_path / "c.toml", redis_url=redis_server_volatile.url)

    result = run_cli("run", "--config", str(cfg), "--instance-id", "a", timeout=60)

    assert result.returncode == 2, result.stderr[-2000:]
    refusal = [ln for ln in result.stderr.splitlines() if ln.startswith("guardrails run: refused")]
    assert len(refusal) == 1, result.stderr[-2000:]
    assert "would lose the fencing counter on restart" in refusal[0]
    assert f"127.0.0.1:{redis_server_volatile.port}" in refusal[0]
    assert "allow_non_durable" in refusal[0]
    assert "Traceback" not in result.stderr
    client = redis_server_volatile.client()
    assert client.get(KEYS.fence) is None  # never reached the lease
    assert client.get(KEYS.lease) is None


def test_run_when_rdb_only_then_refused_naming_snapshot_rollback(
    rdb_server: RedisServer, tmp_path: Path
) -> None:
    cfg = write_config(tmp_path / "c.toml", redis_url=rdb_server.url)

    result = run_cli("run", "--config", str(cfg), "--instance-id", "a", timeout=60)

    assert result.returncode == 2
    assert "last RDB snapshot" in result.stderr


def test_run_when_no_aof_but_config_allows_then_runs_and_logs_warning(
    redis_server_volatile: RedisServer, tmp_path: Path
) -> None:
    cfg = write_config(tmp_path / "c.toml", redis_url=redis_server_volatile.url,
                       allow_non_durable=True)
    proc = RunProc("a", cfg, tmp_path).start()
    try:
        seen = proc.wait_for("runtime.redis_persistence")
        proc.wait_for("lease.acquired")
        assert seen.level == "warning"
        assert seen["durability"] == "volatile"
        assert seen["allow_non_durable"] == "1"
    finally:
        proc.cleanup()


def test_run_when_redis_has_aof_then_runs_and_logs_durable(
    redis_server_aof: RedisServer, tmp_path: Path
) -> None:
    cfg = write_config(tmp_path / "c.toml", redis_url=redis_server_aof.url)
    proc = RunProc("a", cfg, tmp_path).start()
    try:
        seen = proc.wait_for("runtime.redis_persistence")
        proc.wait_for("lease.acquired")
        assert seen.level == "info" and seen["durability"] == "durable"
    finally:
        proc.cleanup()


def _doctor(url: str, manifest: Path | None) -> tuple[int, dict[str, object]]:
    argv = ["doctor", "--json", "--redis-url", url, "--manifest", str(manifest or "")]
    result = run_cli(*argv)
    report = json.loads(result.stdout)
    jsonschema.validate(report, DOCTOR_SCHEMA)
    return result.returncode, report


def test_doctor_when_redis_has_no_aof_then_exit_1_redis_not_durable(
    redis_server_volatile: RedisServer,
) -> None:
    rc, report = _doctor(redis_server_volatile.url, None)

    assert rc == 1
    codes = {f["code"]: f for f in report["findings"]}  # type: ignore[union-attr]
    assert codes["redis_not_durable"]["severity"] == "error"
    assert "fencing counter" in codes["redis_not_durable"]["message"]
    assert report["persistence"]["durability"] == "volatile"  # type: ignore[index]


def test_doctor_when_manifest_allows_non_durable_then_info_and_exit_0(
    redis_server_volatile: RedisServer, tmp_path: Path
) -> None:
    manifest = tmp_path / "m.toml"
    manifest.write_text("allow_non_durable = true\n")

    rc, report = _doctor(redis_server_volatile.url, manifest)

    assert rc == 0, report["findings"]
    (finding,) = report["findings"]  # type: ignore[misc]
    assert (finding["code"], finding["severity"]) == ("redis_not_durable", "info")


def test_doctor_when_redis_has_aof_then_no_persistence_finding(
    redis_server_aof: RedisServer,
) -> None:
    rc, report = _doctor(redis_server_aof.url, None)

    assert rc == 0, report["findings"]
    assert report["persistence"]["durability"] == "durable"  # type: ignore[index]
    assert report["persistence"]["appendfsync"] == "always"  # type: ignore[index]


def test_doctor_when_aof_turned_off_at_runtime_then_reported(
    redis_server_aof: RedisServer,
) -> None:
    # CONFIG SET appendonly no on a live server: what the server does now is what counts.
    redis_server_aof.client().config_set("appendonly", "no")
    time.sleep(0.2)

    rc, report = _doctor(redis_server_aof.url, None)

    assert rc == 1
    assert "redis_not_durable" in {f["code"] for f in report["findings"]}  # type: ignore[union-attr]
