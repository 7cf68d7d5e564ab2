"""The local single-instance guard: a second copy is refused by name, whatever its HOME."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from guardrails import localguard
from guardrails.keys import AccountId
from tests.conftest import ROOT, subprocess_env

ACCOUNT = AccountId("paper", "guard-test")
TARGET = "redis://127.0.0.1:7777/0"

PROBE = """
import sys
from guardrails import localguard
from guardrails.keys import AccountId
try:
    lock = localguard.acquire(AccountId("paper", "guard-test"), sys.argv[1], standby=False)
except localguard.AlreadyRunning as e:
    print(e)
    sys.exit(2)
print("acquired", lock.path)
"""


def test_acquire_when_already_held_then_refused_naming_pid_and_start(tmp_path: Path) -> None:
    first = localguard.acquire(ACCOUNT, TARGET, standby=False)
    assert first is not None
    try:
        with pytest.raises(localguard.AlreadyRunning) as info:
            localguard.acquire(ACCOUNT, TARGET, standby=False)
    finally:
        first.release()

    refused = info.value
    assert refused.pid == os.getpid()
    assert refused.path == first.path
    assert f"pid {os.getpid()}" in str(refused)
    assert "started 20" in str(refused) and str(first.path) in str(refused)


def test_acquire_when_held_and_standby_then_returns_none() -> None:
    first = localguard.acquire(ACCOUNT, TARGET, standby=False)
    try:
        second = localguard.acquire(ACCOUNT, TARGET, standby=True)
    finally:
        assert first is not None
        first.release()

    assert second is None


def test_acquire_when_released_then_next_copy_acquires() -> None:
    first = localguard.acquire(ACCOUNT, TARGET, standby=False)
    assert first is not None
    first.release()

    again = localguard.acquire(ACCOUNT, TARGET, standby=False)

    assert again is not None
    again.release()


def test_acquire_when_other_account_or_other_redis_then_independent() -> None:
    first = localguard.acquire(ACCOUNT, TARGET, standby=False)
    try:
        other_account = localguard.acquire(AccountId("paper", "other"), TARGET, standby=False)
        other_redis = localguard.acquire(ACCOUNT, "redis://10.0.0.2:6380/0", standby=False)
    finally:
        assert first is not None
        first.release()

    assert other_account is not None and other_redis is not None
    other_account.release()
    other_redis.release()


def test_acquire_when_second_copy_has_other_home_then_still_refused(tmp_path: Path) -> None:
    first = localguard.acquire(ACCOUNT, TARGET, standby=False)
    assert first is not None
    other_home = tmp_path / "other-home"
    other_home.mkdir()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", PROBE, TARGET],
            env=subprocess_env(HOME=str(other_home)),
            cwd=str(other_home),
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        first.release()

    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"pid {os.getpid()}" in proc.stdout
    assert str(ROOT) not in str(first.path) and str(Path.home()) not in str(first.path)


def test_acquire_when_holder_process_killed_then_lock_free_again(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", PROBE + "import time; time.sleep(60)\n", TARGET],
        env=subprocess_env(), stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().startswith("acquired")
        with pytest.raises(localguard.AlreadyRunning) as info:
            localguard.acquire(ACCOUNT, TARGET, standby=False)
        assert info.value.pid == holder.pid
        holder.kill()
        holder.wait(timeout=10)

        after = localguard.acquire(ACCOUNT, TARGET, standby=False)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=10)
        if holder.stdout is not None:
            holder.stdout.close()

    assert after is not None
    after.release()


def test_lock_dir_when_no_env_then_never_under_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(localguard.LOCK_DIR_ENV, raising=False)

    directory = localguard.lock_dir()

    assert directory in (localguard.RUN_DIR, localguard.TMP_DIR)
    assert not str(directory).startswith(str(Path.home()))
