"""A kill is success only when a running instance confirmed it; operator commands never start
an embedded Redis; `kill` takes the account from the config; a never-seen account is refused.
Real `guardrails run` processes and real redis-servers."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from guardrails.keys import ACCOUNTS_INDEX, AccountId, AccountKeys
from tests.redis_harness import RedisServer
from tests.run_harness import RunProc, run_cli, write_config

pytestmark = pytest.mark.slow
KEYS = AccountKeys(AccountId("paper", "t1"))


def test_kill_when_a_bot_runs_then_taken_from_config_confirmed_exit_0(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    cfg = write_config(tmp_path / "c.toml", redis_url=redis_server.url)
    bot = RunProc("bot", cfg, tmp_path).start()
    try:
        bot.wait_for("runtime.active")
        # Act: only the config — the account is the config's.
        killed = run_cli("kill", "--config", str(cfg), "--reason", "drill")
        resumed = run_cli("resume", "--config", str(cfg))
    finally:
        bot.send(signal.SIGTERM)
        bot.wait_exit()
        bot.cleanup()
    assert killed.returncode == 0, killed.stderr
    assert "paper:t1: ACTIVE -> HALTED" in killed.stdout and "1 instance(s) confirmed" in killed.stdout
    assert resumed.returncode == 0, resumed.stderr
    assert "1 instance(s) confirmed" in resumed.stdout


def test_kill_when_it_reaches_a_redis_no_bot_listens_on_then_exit_3_says_where(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # Arrange: the bot trades on redis_server; the operator's shell points at another Redis,
    # where the account ran once (so it is known there) but no instance listens now.
    other = RedisServer().start()
    try:
        other.client().sadd(ACCOUNTS_INDEX, "paper:t1")
        cfg = write_config(tmp_path / "c.toml", redis_url=redis_server.url)
        bot = RunProc("bot", cfg, tmp_path).start()
        try:
            bot.wait_for("runtime.active")
            # Act
            done = run_cli("kill", "--account", "paper:t1", "--reason", "wrong redis",
                           "--redis-url", other.url, "--confirm-timeout", "2")
            bot_latch = redis_server.client().hget(KEYS.state, "state")
        finally:
            bot.send(signal.SIGTERM)
            bot.wait_exit()
            bot.cleanup()
    finally:
        other.stop()
    # Assert: not success; says the latch is written where no instance listens, and where.
    assert done.returncode == 3, (done.returncode, done.stdout, done.stderr)
    assert "NOT CONFIRMED" in done.stderr and f"127.0.0.1:{other.port}" in done.stderr
    assert "0 instance(s) confirmed" in done.stdout
    assert bot_latch is None  # the bot's own Redis was never touched: it kept trading


def test_kill_when_account_never_seen_then_refused_exit_2_nothing_written(
    redis_server: RedisServer,
) -> None:
    c = redis_server.client()
    c.sadd(ACCOUNTS_INDEX, "paper:demo")
    done = run_cli("kill", "--account", "paper:dem0", "--reason", "typo",
                   "--redis-url", redis_server.url)
    typo = AccountKeys(AccountId("paper", "dem0"))
    assert done.returncode == 2, done.stderr
    assert "never seen" in done.stderr and "paper:demo" in done.stderr  # the known ones listed
    assert "Traceback" not in done.stderr
    assert not c.exists(typo.state) and not c.sismember(ACCOUNTS_INDEX, "paper:dem0")
    forced = run_cli("kill", "--account", "paper:dem0", "--reason", "typo", "--force",
                     "--redis-url", redis_server.url, "--confirm-timeout", "0.2")
    assert forced.returncode == 3 and c.hget(typo.state, "state") == "HALTED"


@pytest.mark.parametrize("command", [
    ["kill", "--account", "paper:demo", "--reason", "x"],
    ["resume", "--account", "paper:demo"],
    ["status", "--account", "paper:demo"],
    ["doctor", "--manifest", ""],
    ["limits", "--redis-url", "embedded", "show"],
])
def test_operator_command_when_no_embedded_redis_then_none_started_exit_2(
    command: list[str], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    args = command if "--redis-url" in command else [*command, "--redis-url", "embedded"]
    done = run_cli(*args, env={"GUARDRAILS_STATE_DIR": str(state)})
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "no embedded Redis is running" in done.stderr and "Traceback" not in done.stderr
    assert not (state / "redis" / "redis.sock").exists()
    assert not any(state.rglob("*.sock"))
