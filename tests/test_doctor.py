"""Doctor: each kind of drift is found, with the right exit code, a stable code and a
message that says what to do; the JSON validates against docs/doctor.schema.json.

Registry rows are written the way the registry writes them (HASH + ZSET member + the
accounts index), which is how a second active is "faked through the registry"."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema
import redis

from guardrails.keys import ACCOUNTS_INDEX, AccountId, AccountKeys
from tests.conftest import ROOT, subprocess_env
from tests.redis_harness import RedisServer, free_port

SCHEMA = json.loads((ROOT / "docs" / "doctor.schema.json").read_text())
KEYS = AccountKeys(AccountId("paper", "demo"))


def register(c: redis.Redis, keys: AccountKeys, iid: str, *, host: str, pid: int = 4242,
             role: str = "standby", token: int | None = None, limits: str = "L1",
             config: str = "C1", standby: bool = False) -> None:
    now = int(time.time() * 1000)
    c.hset(keys.instance(iid), mapping={
        "id": iid, "account": str(keys.account), "host": host, "pid": pid, "version": "0.1.0",
        "role": role, "token": "" if token is None else token, "started_at_ms": now,
        "last_seen_ms": now, "config_digest": config, "limits_digest": limits,
        "standby_flag": int(standby), "health_url": "", "cmdline": "guardrails run",
    })
    c.pexpire(keys.instance(iid), 60_000)
    c.zadd(keys.instances, {iid: now})
    c.sadd(ACCOUNTS_INDEX, str(keys.account))


def write_manifest(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "manifest.toml"
    p.write_text(body)
    return p


def doctor(url: str, manifest: Path | None, *extra: str) -> tuple[int, dict[str, Any]]:
    argv = [sys.executable, "-m", "guardrails", "doctor", "--json", "--redis-url", url]
    argv += ["--manifest", str(manifest)] if manifest else ["--manifest", ""]
    done = subprocess.run(argv + list(extra), env=subprocess_env(), capture_output=True,
                          text=True, timeout=60)
    report = json.loads(done.stdout)
    jsonschema.validate(report, SCHEMA)
    assert report["exit_code"] == done.returncode
    return done.returncode, report


def codes(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["code"]: f for f in report["findings"]}


TWO_HOSTS = """
[[accounts]]
account = "paper:demo"
instances = 2
hosts = ["host-a", "host-b"]
"""


def test_doctor_when_one_active_one_standby_as_manifest_says_then_exit_0(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # Arrange
    c = redis_server.client()
    c.set(KEYS.fence, 3)
    c.set(KEYS.lease, "3:a1", px=30_000)
    register(c, KEYS, "a1", host="host-a", role="active", token=3)
    register(c, KEYS, "b1", host="host-b", role="standby")

    # Act
    rc, report = doctor(redis_server.url, write_manifest(tmp_path, TWO_HOSTS))

    # Assert
    assert rc == 0, report["findings"]
    assert report["healthy"] is True
    assert report["leases"]["paper:demo"]["token"] == 3
    holder = next(i for i in report["instances"] if i["id"] == "a1")
    assert set(holder["sources"]) == {"registry", "lease"}


def test_doctor_when_second_active_faked_in_registry_then_exit_1_multiple_active(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # Arrange
    c = redis_server.client()
    c.set(KEYS.fence, 4)
    c.set(KEYS.lease, "4:a1", px=30_000)
    register(c, KEYS, "a1", host="host-a", role="active", token=4)
    register(c, KEYS, "b1", host="host-b", role="active", token=3)

    # Act
    rc, report = doctor(redis_server.url, write_manifest(tmp_path, TWO_HOSTS))

    # Assert
    assert rc == 1
    found = codes(report)["multiple_active"]
    assert "a1@host-a" in found["message"] and "b1@host-b" in found["message"]
    assert "restart" in found["action"]


def test_doctor_when_manifest_entry_has_no_process_then_exit_1_missing_instances(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # Arrange: nothing runs at all
    manifest = write_manifest(tmp_path, '[[accounts]]\naccount = "paper:ghost"\ninstances = 1\n')

    # Act
    rc, report = doctor(redis_server.url, manifest)

    # Assert
    assert rc == 1
    found = codes(report)["missing_instances"]
    assert found["account"] == "paper:ghost"
    assert "0 of 1" in found["message"]
    assert "start" in found["action"]


def test_doctor_when_instances_run_different_limits_then_exit_1_limits_mismatch(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # Arrange
    c = redis_server.client()
    c.set(KEYS.fence, 1)
    c.set(KEYS.lease, "1:a1", px=30_000)
    register(c, KEYS, "a1", host="host-a", role="active", token=1, limits="aaaa")
    register(c, KEYS, "b1", host="host-b", role="standby", limits="bbbb")

    # Act
    rc, report = doctor(redis_server.url, write_manifest(tmp_path, TWO_HOSTS))

    # Assert
    assert rc == 1
    found = codes(report)["limits_mismatch"]
    assert "a1@host-a=aaaa" in found["message"] and "b1@host-b=bbbb" in found["message"]
    assert "deploy one config" in found["action"]


def test_doctor_when_key_has_wrong_type_then_exit_1_wrong_key_type(
    redis_server: RedisServer,
) -> None:
    # Arrange
    c = redis_server.client()
    c.sadd(ACCOUNTS_INDEX, "paper:demo")
    c.set(KEYS.positions, "oops")
    c.set(KEYS.lease, "9:x")  # no TTL: a lease that would never expire

    # Act
    rc, report = doctor(redis_server.url, None)

    # Assert
    assert rc == 1
    found = codes(report)
    assert "string (expected hash)" in found["wrong_key_type"]["message"]
    assert "--revoke" in found["lease_without_ttl"]["action"]
    assert "fence_behind_lease" in found and "lease_holder_unregistered" in found


def test_doctor_when_two_copies_on_one_host_without_standby_then_duplicate_on_host(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # Arrange
    c = redis_server.client()
    register(c, KEYS, "a1", host="host-a", role="standby", pid=11)
    register(c, KEYS, "a2", host="host-a", role="standby", pid=12)

    # Act
    rc, report = doctor(redis_server.url, write_manifest(tmp_path, TWO_HOSTS))

    # Assert
    assert rc == 1
    found = codes(report)
    assert "without --standby" in found["duplicate_on_host"]["message"]
    assert "--standby" in found["duplicate_on_host"]["action"]
    assert "missing_on_host" in found  # nothing on host-b


def test_doctor_when_redis_unreachable_then_exit_2(tmp_path: Path) -> None:
    # Act
    rc, report = doctor(f"redis://127.0.0.1:{free_port()}/0", write_manifest(tmp_path, TWO_HOSTS))

    # Assert
    assert rc == 2
    assert "error" in report


def test_doctor_when_manifest_invalid_then_exit_2(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # Arrange
    manifest = write_manifest(tmp_path, '[[accounts]]\naccount = "nocolon"\ninstances = -1\n')

    # Act
    rc, report = doctor(redis_server.url, manifest)

    # Assert
    assert rc == 2
    assert "accounts[0].account" in report["error"]
    assert "accounts[0].instances" in report["error"]


def test_doctor_when_heartbeat_key_has_wrong_type_then_reports_it_instead_of_failing(
    redis_server: RedisServer,
) -> None:
    # Arrange
    c = redis_server.client()
    register(c, KEYS, "a1", host="host-a")
    c.delete(KEYS.instance("a1"))
    c.set(KEYS.instance("a1"), "garbage")

    # Act
    rc, report = doctor(redis_server.url, None)

    # Assert
    assert rc == 1
    assert "instance:a1" in codes(report)["wrong_key_type"]["message"]


def test_manifest_when_example_loaded_then_valid() -> None:
    # Act
    from guardrails.ops.doctor.manifest import load_manifest

    manifest = load_manifest(ROOT / "config" / "manifest.toml")

    # Assert
    (entry,) = manifest.accounts
    # The shipped manifest describes the demo exactly as `make run` starts it (#14): one
    # copy of paper:demo on any host, so `doctor` beside a fresh `make run` exits 0.
    assert (entry.account, entry.instances, entry.max_per_host) == ("paper:demo", 1, 1)
    assert not entry.hosts
    assert manifest.stale_after_ms == 10_000


def test_is_guardrails_run_when_command_lines_vary_then_only_run_matches() -> None:
    # Arrange
    from guardrails.ops.doctor.snapshot import is_guardrails_run

    # Act / Assert
    assert is_guardrails_run(["/usr/bin/python3", "-m", "guardrails", "run", "--config", "x"])
    assert is_guardrails_run(["/opt/gr/.venv/bin/guardrails", "run"])
    assert is_guardrails_run(["/opt/gr/.venv/bin/python", "/opt/gr/.venv/bin/guardrails", "run"])
    assert not is_guardrails_run(["/usr/bin/python3", "-m", "guardrails", "doctor"])
    assert not is_guardrails_run(["vim", "guardrails/run.py"])
    assert not is_guardrails_run(["python", "-c", "pass", "guardrails", "run"])
    # interpreter options before the script, or folded into -m
    assert is_guardrails_run(["python", "-u", "/opt/gr/.venv/bin/guardrails", "run"])
    assert is_guardrails_run(["python", "-X", "dev", "-W", "ignore", "/x/guardrails", "run"])
    assert is_guardrails_run(["python", "-Im", "guardrails", "run"])
    assert is_guardrails_run(["python3", "-um", "guardrails.cli", "run"])
    assert not is_guardrails_run(["python", "tool.py", "/x/guardrails", "run"])
