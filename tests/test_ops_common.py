"""The operator plumbing every command shares (``guardrails/ops/common.py``): where to look,
which config, and one identity recorded by every operator write."""

from __future__ import annotations

import argparse
import getpass
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from guardrails.config import EMBEDDED, REDIS_URL_ENV, ConfigError
from guardrails.keys import AccountId, AccountKeys
from guardrails.ops.common import DEFAULT_CONFIG, load_target, operator_identity, target_account
from tests.conftest import ROOT, subprocess_env
from tests.redis_harness import RedisServer

CONFIG = """
[account]
venue = "paper"
id = "opscommon"
[redis]
url = "redis://127.0.0.1:1/0"
[risk]
max_order_notional = "2500"
max_gross_exposure = "10000"
daily_loss_limit = "250"
[risk.instruments.BTC-USD]
tick = "0.01"
lot = "0.0001"
max_position = "0.1"
[venue]
kind = "paper"
start_prices = { BTC-USD = "60000.00" }
"""


def _args(**kw: object) -> argparse.Namespace:
    return argparse.Namespace(**{"config": DEFAULT_CONFIG, "redis_url": None, **kw})


def _config(tmp_path: Path) -> Path:
    p = tmp_path / "bot.toml"
    p.write_text(CONFIG)
    return p


def test_load_target_when_flag_env_and_config_all_set_then_flag_wins_then_env_then_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Arrange
    cfg = str(_config(tmp_path))
    monkeypatch.setenv(REDIS_URL_ENV, "redis://127.0.0.1:2/0")

    # Act / Assert: --redis-url over $GUARDRAILS_REDIS_URL over [redis] url
    url, loaded = load_target(_args(config=cfg, redis_url="redis://127.0.0.1:3/0"))
    assert url == "redis://127.0.0.1:3/0" and loaded is not None
    assert load_target(_args(config=cfg))[0] == "redis://127.0.0.1:2/0"
    monkeypatch.delenv(REDIS_URL_ENV)
    assert load_target(_args(config=cfg))[0] == "redis://127.0.0.1:1/0"


def test_load_target_when_default_config_absent_then_embedded_without_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Arrange: an operator machine: no config/paper.toml below the working directory
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(REDIS_URL_ENV, raising=False)

    # Act
    url, cfg = load_target(_args())

    # Assert
    assert (url, cfg) == (EMBEDDED, None)


def test_load_target_when_named_config_missing_then_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_target(_args(config=str(tmp_path / "nope.toml")))


def test_target_account_when_flag_or_config_or_neither_then_that_account_or_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Arrange
    monkeypatch.chdir(tmp_path)
    cfg = str(_config(tmp_path))

    # Act / Assert
    assert target_account(_args(account="paper:x"), "kill") == AccountId("paper", "x")
    assert target_account(_args(config=cfg, account=None), "kill") == AccountId("paper", "opscommon")
    assert target_account(_args(account=None), "kill") is None
    assert target_account(_args(account="no-colon"), "kill") is None
    err = capsys.readouterr().err
    assert "guardrails kill: name the account" in err


def test_operator_identity_when_via_given_then_same_user_at_host_with_the_channel() -> None:
    me = f"{getpass.getuser()}@{socket.gethostname()}"
    assert operator_identity() == me
    assert operator_identity("dashboard from 10.0.0.7") == f"{me} (dashboard from 10.0.0.7)"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "guardrails", *args], cwd=ROOT,
                          env=subprocess_env(), capture_output=True, text=True, timeout=60)


def test_operator_writes_when_limits_applied_and_account_killed_then_one_identity_in_redis(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # Arrange
    cfg = str(_config(tmp_path))
    keys = AccountKeys(AccountId("paper", "opscommon"))
    me = f"{getpass.getuser()}@{socket.gethostname()}"

    # Act: two operator writes through the real CLI
    applied = _cli("limits", "--config", cfg, "--redis-url", redis_server.url, "apply", "--yes")
    killed = _cli("kill", "--config", cfg, "--redis-url", redis_server.url, "--reason", "t",
                  "--confirm-timeout", "0.1")

    # Assert: the limits' set_by, the latch's by and both journal entries name the same
    # operator in the same format
    assert applied.returncode == 0, applied.stderr
    assert killed.returncode == 3, killed.stderr  # written and verified; no bot listens
    c = redis_server.client()
    try:
        journal = [fields for _, fields in c.xrange(keys.journal)]
        assert c.hget(keys.limits, "set_by") == me
        assert c.hget(keys.state, "by") == me
        assert sorted(f["ev"] for f in journal) == ["limits", "trading_state"]
        assert {f["by"] for f in journal} == {me}
    finally:
        c.close()


@pytest.mark.parametrize("url", ["redis://127.0.0.1:7/1/2", "redis://127.0.0.1:7/1?db=2"])
def test_load_target_when_no_config_and_bad_url_then_config_error_naming_its_origin(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no config file at all
    with pytest.raises(ConfigError, match=r"^--redis-url: "):
        load_target(_args(redis_url=url))
    monkeypatch.setenv(REDIS_URL_ENV, url)
    with pytest.raises(ConfigError, match=rf"^\${REDIS_URL_ENV}: "):
        load_target(_args())


def test_kill_when_no_config_and_url_names_db_twice_then_refused_exit_2_nothing_written(
    redis_server_volatile: RedisServer, tmp_path: Path
) -> None:
    base = f"redis://127.0.0.1:{redis_server_volatile.port}"
    for url in (f"{base}/1/2", f"{base}/1?db=2"):
        done = subprocess.run(
            [sys.executable, "-m", "guardrails", "kill", "--force", "--account", "paper:x",
             "--reason", "r", "--redis-url", url],
            capture_output=True, text=True, env=subprocess_env(), cwd=tmp_path, timeout=60)
        assert done.returncode == 2, (url, done.stdout, done.stderr)
        assert "--redis-url" in done.stderr and "Traceback" not in done.stderr
    for db in (0, 1, 2, 12):
        assert redis_server_volatile.client(db).dbsize() == 0


def test_kill_when_reason_is_not_utf8_then_refused_exit_2_without_traceback(
    redis_server_volatile: RedisServer, tmp_path: Path
) -> None:
    done = subprocess.run(
        [sys.executable.encode(), b"-m", b"guardrails", b"kill", b"--force", b"--account",
         b"paper:x", b"--reason", b"bad\xff", b"--redis-url",
         redis_server_volatile.url.encode()],
        capture_output=True, env=subprocess_env(), cwd=tmp_path, timeout=60)
    err = done.stderr.decode(errors="replace")
    assert done.returncode == 2, err
    assert "--reason is not valid UTF-8" in err and "Traceback" not in err
    assert redis_server_volatile.client().dbsize() == 0
