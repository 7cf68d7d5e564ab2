"""`kill --all` reaches every trading account even after the account index was deleted
(each bot re-adds itself on every heartbeat), and a member of the index that is not an
account id (not UTF-8: a bot's ACL role can write the set) is reported, never a crash.
Two real `guardrails run` bots on one real redis-server."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from guardrails.keys import ACCOUNTS_INDEX, AccountId, AccountKeys
from tests.redis_harness import RedisServer
from tests.run_harness import RunProc, run_cli, subprocess_env, write_config

pytestmark = pytest.mark.slow
ACCOUNTS = ("t1", "t2")


@pytest.fixture
def two_bots(redis_server: RedisServer, tmp_path: Path) -> Iterator[RedisServer]:
    bots = []
    try:
        for name in ACCOUNTS:
            (tmp_path / name).mkdir()
            cfg = write_config(tmp_path / name / "c.toml", redis_url=redis_server.url,
                               account=name)
            bots.append(RunProc(name, cfg, tmp_path / name).start())
        for bot in bots:
            bot.wait_for("runtime.active")
        yield redis_server
    finally:
        for bot in bots:
            bot.send(signal.SIGTERM)
        for bot in bots:
            bot.wait_exit()
            bot.cleanup()


def _states(server: RedisServer) -> dict[str, str | None]:
    c = server.client()
    return {a: c.hget(AccountKeys(AccountId("paper", a)).state, "state") for a in ACCOUNTS}


def test_kill_all_when_index_deleted_then_heartbeats_rebuild_it_and_both_halted(
    two_bots: RedisServer,
) -> None:
    c = two_bots.client()
    # Arrange: the index deleted while both bots run
    c.delete(ACCOUNTS_INDEX)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and len(c.smembers(ACCOUNTS_INDEX)) < 2:
        time.sleep(0.1)
    # Act
    done = run_cli("kill", "--all", "--reason", "drill", "--redis-url", two_bots.url)
    # Assert
    assert c.smembers(ACCOUNTS_INDEX) == {"paper:t1", "paper:t2"}
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert _states(two_bots) == {"t1": "HALTED", "t2": "HALTED"}
    assert done.stdout.count("1 instance(s) confirmed") == 2


def test_status_and_kill_all_when_index_has_non_utf8_member_then_good_accounts_served_bad_named(
    two_bots: RedisServer, tmp_path: Path,
) -> None:
    # Arrange
    two_bots.client(decode_responses=False).sadd(ACCOUNTS_INDEX, b"paper:bad\xff")
    # Act
    # `status` with no config file: run where there is none (the repo has config/paper.toml)
    status = subprocess.run(
        [sys.executable, "-m", "guardrails", "status", "--redis-url", two_bots.url],
        capture_output=True, text=True, env=subprocess_env(), timeout=60, cwd=tmp_path)
    killed = run_cli("kill", "--all", "--reason", "drill", "--redis-url", two_bots.url)
    # Assert
    assert status.returncode == 0, (status.stdout, status.stderr)
    assert "paper:t1" in status.stdout and "paper:t2" in status.stdout
    assert "paper:bad\\xff" in status.stderr, status.stderr
    assert killed.returncode == 0, (killed.stdout, killed.stderr)
    assert _states(two_bots) == {"t1": "HALTED", "t2": "HALTED"}
    assert "paper:bad\\xff" in killed.stderr and "Traceback" not in killed.stderr
